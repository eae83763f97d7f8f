"""2D MedMNIST ``.npz`` archives (any flag, any size) read without pickle.

The medmnist package is not needed: its files are plain ``{split}_images`` / ``{split}_labels``
arrays, so ``np.load(..., allow_pickle=False)`` reads them safely.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from fedleak.data._text import brief
from fedleak.data.dataset import ImageDataset
from fedleak.data.splits import check_split
from fedleak.data.transforms import check_channels, check_size, resize, to_channels
from fedleak.errors import DataError

SPLITS = ("train", "val", "test", "all")
_PARTS = ("train", "val", "test")
_LOW_LEVEL = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError, KeyError)


def _labels(path: Path, arr: np.ndarray, key: str, n: int) -> np.ndarray:
    if arr.ndim == 2 and arr.shape[1] > 1:
        raise DataError(
            f"{path}: {key} has {arr.shape[1]} labels per image (multi-label, e.g. ChestMNIST); "
            "only single-label MedMNIST files are supported."
        )
    if arr.ndim not in (1, 2) or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(
            f"{path}: {key} must be integer labels of shape (N, 1); got {arr.shape} {arr.dtype}."
        )
    labels = arr.reshape(-1).astype(np.int64)
    if len(labels) != n:
        raise DataError(f"{path}: {n} images but {len(labels)} labels in {key}.")
    if n and labels.min() < 0:
        raise DataError(f"{path}: {key} holds negative labels; expected 0, 1, ...")
    return labels


def _images(path: Path, arr: np.ndarray, key: str) -> np.ndarray:
    """(N, H, W) or (N, H, W, 1|3) uint8 -> (N, C, H, W) uint8/float."""
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[3] in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    else:
        hint = " (a 3D MedMNIST volume?)" if arr.ndim == 4 else ""
        raise DataError(
            f"{path}: {key} has shape {arr.shape}{hint}; expected 2D images (N, H, W[, 3])."
        )
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating) and arr.size and arr.min() >= 0 and arr.max() <= 1:
        return arr
    raise DataError(f"{path}: {key} must be uint8 (or float in [0, 1]); got {arr.dtype}.")


def load_medmnist(
    path: str | Path,
    *,
    split: str = "train",
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
) -> ImageDataset:
    """Load one split (``train``, ``val``, ``test`` or ``all``) of a 2D MedMNIST ``.npz`` file.

    Class names are not stored in the file, so they are ``"0"``, ``"1"``, ... up to the largest
    label found in any split (so every split of a file has the same classes).
    """
    path = Path(path)
    check_split(split, SPLITS, f"MedMNIST file {path}")
    hw, ch = check_size(size), check_channels(channels)
    if not path.is_file():
        raise DataError(f"{path}: file not found; expected a MedMNIST .npz file.")
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({brief(exc)}).") from exc
    if magic != b"PK\x03\x04":
        raise DataError(f"{path}: not an .npz archive; expected a MedMNIST .npz file.")
    wanted = _PARTS if split == "all" else (split,)
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            present = [p for p in wanted if f"{p}_images" in keys and f"{p}_labels" in keys]
            if not present or (split != "all" and present != [split]):
                need = f"{split}_images and {split}_labels" if split != "all" else "any split"
                raise DataError(
                    f"{path}: lacks {need}; expected a MedMNIST .npz with train/val/test_images "
                    f"and _labels (found keys: {', '.join(sorted(keys)) or 'none'})."
                )
            all_labels = [npz[f"{p}_labels"] for p in _PARTS if f"{p}_labels" in keys]
            parts = []
            for p in present:
                imgs = _images(path, npz[f"{p}_images"], f"{p}_images")
                parts.append((imgs, _labels(path, npz[f"{p}_labels"], f"{p}_labels", len(imgs))))
    except DataError:
        raise
    except _LOW_LEVEL as exc:
        raise DataError(f"{path}: truncated or corrupt .npz archive ({brief(exc)}).") from exc
    if len({imgs.shape[1:] for imgs, _ in parts}) > 1:
        raise DataError(f"{path}: splits hold images of different shapes; cannot use split='all'.")
    if not sum(len(lab) for _, lab in parts):
        raise DataError(f"{path}: the {split} split holds no images.")
    max_label = max((int(lab.max()) for lab in all_labels if lab.size), default=0)
    images = torch.from_numpy(np.concatenate([imgs for imgs, _ in parts]))
    images = images.to(torch.float32).div_(255.0) if images.dtype == torch.uint8 else images.float()
    if ch is not None:
        images = to_channels(images, ch)
    if hw is not None:
        images = resize(images, hw)
    return ImageDataset(
        name=path.stem,
        images=images,
        labels=torch.from_numpy(np.concatenate([lab for _, lab in parts])),
        classes=tuple(str(i) for i in range(max_label + 1)),
        description=f"MedMNIST {path.stem} {split} split from {path}",
    )
