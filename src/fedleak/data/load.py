"""One entry point, :func:`load_dataset`, for built-in names and ``FORMAT:PATH`` specs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fedleak.data.builtin import BUILTINS
from fedleak.data.cifar10 import load_cifar10
from fedleak.data.dataset import ImageDataset
from fedleak.data.dicom import read_dicom_pixels, scan_dicom_folder
from fedleak.data.folder import FileIndex, read_files, read_image, scan_image_folder
from fedleak.data.medmnist import load_medmnist
from fedleak.data.splits import check_limit, check_split, limit_indices, stratified_split
from fedleak.data.transforms import check_channels, check_size, resize, to_channels
from fedleak.errors import DataError
from fedleak.registry import Registry

# A format loader gets (path, options, split, size, channels, limit, seed), all checked.
FormatLoader = Callable[..., ImageDataset]
Size = tuple[int, int] | None
FORMATS: Registry[FormatLoader] = Registry("data format")

_SPLIT_SPLITS = ("train", "test", "all")  # data sets split by stratified_split


def _no_options(fmt: str, path: Path, options: dict[str, str]) -> None:
    if options:
        raise DataError(f"{fmt}:{path}: takes no ?options; got {', '.join(sorted(options))}.")


def _finish(ds: ImageDataset, size: tuple[int, int] | None, channels: int | None) -> ImageDataset:
    images = ds.images
    if channels is not None and channels < images.shape[1]:  # fewer planes to resize
        images = to_channels(images, channels)
    if size is not None:
        images = resize(images, size)
    if channels is not None:
        images = to_channels(images, channels)
    if images is ds.images:
        return ds
    return ImageDataset(ds.name, images, ds.labels, ds.classes, ds.description)


def _from_file_splits(
    ds: ImageDataset, limit: int | None, seed: int, size: tuple[int, int] | None, ch: int | None
) -> ImageDataset:
    if limit is not None and limit < len(ds):
        ds = ds.subset(limit_indices(np.arange(len(ds)), limit, seed))
    return _finish(ds, size, ch)


def _file_format(fmt: str, load: Callable[..., ImageDataset]) -> FormatLoader:
    """The loader of a format with its own train/test files (``load(path, split=...)``)."""

    def loader(
        path: Path,
        options: dict[str, str],
        split: str,
        size: Size,
        channels: int | None,
        limit: int | None,
        seed: int,
    ) -> ImageDataset:
        _no_options(fmt, path, options)
        return _from_file_splits(load(path, split=split), limit, seed, size, channels)

    return loader


FORMATS.add("cifar10", _file_format("cifar10", load_cifar10))
FORMATS.add("medmnist", _file_format("medmnist", load_medmnist))


def _from_index(
    index: FileIndex,
    reader: Callable[[Path], np.ndarray],
    kind: str,
    split: str,
    size: tuple[int, int] | None,
    channels: int | None,
    limit: int | None,
    seed: int,
) -> ImageDataset:
    check_split(split, _SPLIT_SPLITS, f"{kind} {index.root}")
    chosen = limit_indices(stratified_split(index.labels, split), limit, seed)
    if len(chosen) == 0:
        raise DataError(
            f"{index.root}: the {split} split is empty ({len(index.files)} images, 20% of each "
            "class go to test); use split='all'."
        )
    return read_files(
        index,
        chosen,
        reader=reader,
        size=size,
        channels=channels,
        name=index.root.resolve().name,
        description=f"{kind} {index.root} ({split} split)",
    )


def _index_format(
    kind: str,
    scan: Callable[[Path, dict[str, str]], FileIndex],
    reader: Callable[[Path], np.ndarray],
) -> FormatLoader:
    """The loader of a folder format: ``scan(path, options)`` indexes it, split 80/20 here."""

    def loader(
        path: Path,
        options: dict[str, str],
        split: str,
        size: Size,
        channels: int | None,
        limit: int | None,
        seed: int,
    ) -> ImageDataset:
        return _from_index(scan(path, options), reader, kind, split, size, channels, limit, seed)

    return loader


def _scan_folder(path: Path, options: dict[str, str]) -> FileIndex:
    _no_options("folder", path, options)
    return scan_image_folder(path)


def _scan_dicom(path: Path, options: dict[str, str]) -> FileIndex:
    unknown = set(options) - {"labels"}
    if unknown:
        raise DataError(
            f"dicom:{path}: unknown option(s) {', '.join(sorted(unknown))}; only labels=CSV."
        )
    return scan_dicom_folder(path, options.get("labels"))


FORMATS.add("folder", _index_format("image folder", _scan_folder, read_image))
FORMATS.add("dicom", _index_format("DICOM folder", _scan_dicom, read_dicom_pixels))


def _parse_spec(spec: str) -> tuple[str | None, str, dict[str, str]]:
    """``name`` -> (None, name, {}); ``FORMAT:PATH[?k=v&...]`` -> (FORMAT, PATH, options)."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"data set spec must be a built-in name or FORMAT:PATH; got {spec!r}.")
    spec = spec.strip()
    if ":" not in spec:
        return None, spec, {}
    fmt, rest = spec.split(":", 1)
    options: dict[str, str] = {}
    if "?" in rest:
        rest, query = rest.split("?", 1)
        for item in query.split("&"):
            key, eq, value = item.partition("=")
            if not eq or not key or not value:
                raise DataError(f"data set spec {spec!r}: options must look like ?key=value.")
            options[key] = value
    if not rest:
        raise DataError(f"data set spec {spec!r}: missing PATH after {fmt}:.")
    return fmt.strip().lower(), rest, options


def load_dataset(
    spec: str,
    *,
    split: str = "train",
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> ImageDataset:
    """Load a built-in (``lfw-faces``, ``digits``, ``mnist-5k``) or ``FORMAT:PATH`` data set.

    FORMAT is ``cifar10``, ``medmnist``, ``folder`` or ``dicom`` (``dicom:DIR?labels=CSV``).
    ``split``: ``train``/``test``/``all`` (MedMNIST also ``val``); built-ins, folders and DICOM
    use a fixed stratified 80/20 split. ``limit`` keeps a ``seed``-ed random subset of that many
    images (in file order). ``size`` and ``channels`` resize and convert every image.
    """
    hw, ch, lim = check_size(size), check_channels(channels), check_limit(limit)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"`seed` of load_dataset must be an int >= 0; got {seed!r}.")
    fmt, target, options = _parse_spec(spec)
    if fmt is None:
        if ("/" in target or "\\" in target or Path(target).exists()) and target not in BUILTINS:
            raise DataError(
                f"data set spec {spec!r} looks like a path; write FORMAT:PATH with FORMAT one of "
                f"{', '.join(FORMATS.names())} (e.g. folder:{target})."
            )
        builtin = BUILTINS.get(target)  # unknown names list the valid ones
        check_split(split, _SPLIT_SPLITS, f"built-in data set {target!r}")
        x, y = builtin.load_arrays()
        chosen = limit_indices(stratified_split(y, split), lim, int(seed))
        ds = ImageDataset(
            name=builtin.info.name,
            images=torch.from_numpy(x[chosen]),  # fancy indexing copies the cached array
            labels=torch.from_numpy(y[chosen]),
            classes=builtin.info.classes,
            description=f"{builtin.info.description} ({split} split)",
        )
        return _finish(ds, hw, ch)
    loader = FORMATS.get(fmt)
    return loader(Path(target).expanduser(), options, split, hw, ch, lim, int(seed))
