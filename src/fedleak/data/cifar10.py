"""CIFAR-10 from the python ``cifar-10-batches-py`` folder, unpickled with an allow-list.

The batches are pickles; a plain ``pickle.load`` of a file someone handed you runs arbitrary code,
so only the numpy globals those batches need are admitted.
"""

from __future__ import annotations

import importlib
import io
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedleak.data._text import brief
from fedleak.data.dataset import ImageDataset
from fedleak.data.splits import check_split
from fedleak.data.transforms import check_channels, check_size, resize, to_channels
from fedleak.errors import DataError

SPLITS = ("train", "test", "all")
_PIXELS = 3 * 32 * 32


def _numpy_attr(modules: tuple[str, ...], name: str) -> Any:
    for mod in modules:
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy provides no {name} in {modules}")  # pragma: no cover


def _allowed_globals() -> dict[tuple[str, str], Any]:
    reconstruct = _numpy_attr(("numpy._core.multiarray", "numpy.core.multiarray"), "_reconstruct")
    frombuffer = _numpy_attr(("numpy._core.numeric", "numpy.core.numeric"), "_frombuffer")
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        # what numpy writes for arrays under pickle protocol 5 (python 3's default)
        ("numpy.core.numeric", "_frombuffer"): frombuffer,
        ("numpy._core.numeric", "_frombuffer"): frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class _CifarUnpickler(pickle.Unpickler):
    """Admits only the numpy array reconstruction globals a CIFAR-10 batch holds."""

    def __init__(self, file: io.BufferedIOBase, source: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name} from {self._source}: not a CIFAR-10 batch"
            ) from None


def _unpickle(path: Path) -> dict[str, Any]:
    """Read one batch file into a dict with str keys, turning every failure into DataError."""
    if not path.is_file():
        raise DataError(
            f"{path}: file not found; expected a CIFAR-10 batch from cifar-10-batches-py."
        )
    try:
        with path.open("rb") as fh:
            obj = _CifarUnpickler(fh, path).load()
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if msg.startswith("refusing to unpickle"):
            raise DataError(msg) from exc
        raise DataError(
            f"{path}: not a readable pickle ({brief(exc)}); expected a CIFAR-10 batch."
        ) from exc
    except EOFError as exc:
        raise DataError(f"{path}: file is truncated; expected a complete CIFAR-10 batch.") from exc
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, OSError) as exc:
        raise DataError(f"{path}: corrupt or not a CIFAR-10 batch ({brief(exc)}).") from exc
    if not isinstance(obj, dict):
        raise DataError(
            f"{path}: holds a {type(obj).__name__}, expected a dict (a CIFAR-10 batch)."
        )
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out[key.decode("latin1") if isinstance(key, bytes) else str(key)] = value
    return out


def _read_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    missing = [k for k in ("data", "labels") if k not in batch]
    if missing:
        raise DataError(
            f"{path}: missing key(s) {', '.join(missing)}; a CIFAR-10 batch has data, labels, "
            f"batch_label, filenames (found {', '.join(sorted(batch)) or 'none'})."
        )
    data, labels = batch["data"], batch["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        got = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: data must be a uint8 array (N, 3072); got {got}.")
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: labels must be a list of ints ({brief(exc)}).") from exc
    n = len(labels)
    if data.size != n * _PIXELS:
        raise DataError(
            f"{path}: data holds {data.size} values but {n} labels need N*3072 = {n * _PIXELS}; "
            "expected a CIFAR-10 batch of 32x32 RGB images."
        )
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels must lie in [0, {num_classes - 1}].")
    return data.reshape(n, 3, 32, 32), labels


def _class_names(root: Path) -> tuple[str, ...]:
    meta_path = root / "batches.meta"
    meta = _unpickle(meta_path)
    names = meta.get("label_names")
    if not isinstance(names, (list, tuple)) or not names:
        raise DataError(f"{meta_path}: expected key label_names with a list of class names.")
    try:
        return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)
    except UnicodeDecodeError as exc:
        raise DataError(f"{meta_path}: class names are not valid UTF-8.") from exc


def _batch_files(root: Path, split: str) -> list[Path]:
    train = sorted(
        (p for p in root.glob("data_batch_*") if re.fullmatch(r"data_batch_\d+", p.name)),
        key=lambda p: int(p.name.rsplit("_", 1)[1]),
    )
    files = {"train": train, "test": [root / "test_batch"], "all": [*train, root / "test_batch"]}[
        split
    ]
    if split != "test" and not train:
        raise DataError(
            f"{root}: no data_batch_1..5 files; expected the python cifar-10-batches-py folder."
        )
    return files


def load_cifar10(
    root: str | Path,
    *,
    split: str = "train",
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
) -> ImageDataset:
    """Load CIFAR-10 from ``cifar-10-batches-py`` (data_batch_*, test_batch, batches.meta).

    ``split`` is ``train`` (all data batches present), ``test`` or ``all`` (train then test).
    """
    root = Path(root)
    check_split(split, SPLITS, f"CIFAR-10 folder {root}")
    hw, ch = check_size(size), check_channels(channels)
    if not root.is_dir():
        raise DataError(
            f"{root}: folder not found; expected the python cifar-10-batches-py folder "
            "(data_batch_1..5, test_batch, batches.meta)."
        )
    classes = _class_names(root)
    parts = [_read_batch(p, len(classes)) for p in _batch_files(root, split)]
    data = np.concatenate([d for d, _ in parts])
    labels = np.concatenate([lab for _, lab in parts])
    images = torch.from_numpy(data).to(torch.float32).div_(255.0)
    if ch is not None:
        images = to_channels(images, ch)
    if hw is not None:
        images = resize(images, hw)
    return ImageDataset(
        name="cifar10",
        images=images,
        labels=torch.from_numpy(labels),
        classes=classes,
        description=f"CIFAR-10 {split} split from {root}",
    )
