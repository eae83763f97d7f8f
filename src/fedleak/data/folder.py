"""Image folders laid out as ``root/<class>/*.png|jpg|jpeg`` (torchvision's ImageFolder layout)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedleak.data.dataset import ImageDataset
from fedleak.data.transforms import array_to_chw, check_channels, check_size, stack_images
from fedleak.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class FileIndex:
    """Files and their labels, found without decoding any pixels (so splits can skip files)."""

    root: Path
    files: tuple[Path, ...]
    labels: np.ndarray  # (N,) int64
    classes: tuple[str, ...]


def sort_class_names(names: Sequence[str]) -> tuple[str, ...]:
    """Sort numerically when every name is an integer ("2" before "10"), else alphabetically."""
    unique = set(names)
    if all(n.strip().lstrip("-").isdigit() for n in unique):
        return tuple(sorted(unique, key=lambda n: (int(n), n)))
    return tuple(sorted(unique))


def scan_image_folder(root: str | Path) -> FileIndex:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found; expected root/<class>/*.png|jpg|jpeg.")
    per_class: dict[str, list[Path]] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            p for p in sub.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if files:
            per_class[sub.name] = files
    if not per_class:
        loose = any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in root.iterdir())
        hint = " (images found directly in it: move them into class subfolders)" if loose else ""
        raise DataError(
            f"{root}: no .png/.jpg/.jpeg images in class subfolders{hint}; "
            "expected root/<class>/*.png|jpg|jpeg."
        )
    classes = sort_class_names(list(per_class))
    files = [f for c in classes for f in per_class[c]]
    labels = np.concatenate([np.full(len(per_class[c]), i) for i, c in enumerate(classes)])
    return FileIndex(root, tuple(files), labels.astype(np.int64), classes)


def read_image(path: Path) -> np.ndarray:
    from skimage import io as skio  # heavy import, only when reading images

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = skio.imread(path)
    except Exception as exc:  # decoders raise many types (OSError, ValueError, SyntaxError, ...)
        raise DataError(f"{path}: not a readable PNG or JPEG image.") from exc
    return array_to_chw(arr, path)


def read_files(
    index: FileIndex,
    indices: np.ndarray | None = None,
    *,
    reader: Callable[[Path], np.ndarray],
    size: tuple[int, int] | None,
    channels: int | None,
    name: str,
    description: str,
) -> ImageDataset:
    """Decode the chosen files (all if ``indices`` is None) with ``reader``, resizing each first."""
    chosen = np.arange(len(index.files)) if indices is None else np.asarray(indices, dtype=np.int64)

    def gen() -> Iterator[tuple[str, np.ndarray]]:
        for i in chosen:
            yield str(index.files[i]), reader(index.files[i])

    images = stack_images(gen(), size=size, channels=channels, where=str(index.root))
    return ImageDataset(
        name=name,
        images=images,
        labels=torch.from_numpy(index.labels[chosen].copy()),
        classes=index.classes,
        description=description,
    )


def load_image_folder(
    root: str | Path,
    *,
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
) -> ImageDataset:
    """Load every image of ``root/<class>/*.png|jpg|jpeg``; classes are the sorted subfolder names.

    Images of different sizes need ``size`` (each is resized before stacking); grey and colour
    images mixed without ``channels`` become RGB.
    """
    hw, ch = check_size(size), check_channels(channels)
    index = scan_image_folder(root)
    return read_files(
        index,
        reader=read_image,
        size=hw,
        channels=ch,
        name=index.root.resolve().name,
        description=f"image folder {index.root}",
    )
