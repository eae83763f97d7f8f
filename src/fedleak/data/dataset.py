"""The in-memory image data set every fedleak component consumes, and built-in data set infos.

One validated container (float32 images in [0, 1], int64 labels) means attacks, models and
metrics never have to re-check what they were given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fedleak.errors import DataError

#: Channel counts an :class:`ImageDataset` may hold (grey or RGB).
ALLOWED_CHANNELS = (1, 3)


@dataclass(frozen=True, eq=False)  # eq=False: tensors do not compare to one bool
class ImageDataset:
    """Images ``(N, C, H, W)`` float32 in [0, 1] with labels ``(N,)`` int64 into ``classes``."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    description: str = field(default="")

    def __post_init__(self) -> None:
        where = f"data set {self.name!r}"
        if not isinstance(self.classes, tuple):  # accept any sequence, store a tuple
            if isinstance(self.classes, str) or not isinstance(self.classes, Sequence):
                raise DataError(
                    f"{where}: classes must be a sequence of names; got {self.classes!r}."
                )
            object.__setattr__(self, "classes", tuple(self.classes))
        if not self.classes or not all(isinstance(c, str) for c in self.classes):
            raise DataError(
                f"{where}: classes must be a non-empty sequence of str; got {self.classes!r}."
            )
        if len(set(self.classes)) != len(self.classes):
            raise DataError(f"{where}: class names must be unique; got {self.classes!r}.")
        imgs, labels = self.images, self.labels
        if not torch.is_tensor(imgs) or imgs.dim() != 4:
            got = tuple(imgs.shape) if torch.is_tensor(imgs) else type(imgs).__name__
            raise DataError(f"{where}: images must be a 4-D tensor (N, C, H, W); got {got}.")
        if imgs.dtype != torch.float32:
            raise DataError(f"{where}: images must be float32 in [0, 1]; got dtype {imgs.dtype}.")
        if imgs.shape[1] not in ALLOWED_CHANNELS:
            raise DataError(
                f"{where}: images must have 1 or 3 channels; got {imgs.shape[1]} "
                f"(shape {tuple(imgs.shape)}; is it (N, H, W, C) instead of (N, C, H, W)?)."
            )
        if imgs.shape[2] < 1 or imgs.shape[3] < 1:
            raise DataError(
                f"{where}: images must have positive height and width; got {tuple(imgs.shape)}."
            )
        if imgs.numel() and not (
            bool(torch.isfinite(imgs).all()) and imgs.min() >= 0 and imgs.max() <= 1
        ):
            raise DataError(f"{where}: image values must be finite and in [0, 1].")
        if not torch.is_tensor(labels) or labels.dim() != 1 or labels.dtype != torch.int64:
            got = (tuple(labels.shape), labels.dtype) if torch.is_tensor(labels) else type(labels)
            raise DataError(f"{where}: labels must be a 1-D int64 tensor; got {got}.")
        if labels.shape[0] != imgs.shape[0]:
            raise DataError(f"{where}: {imgs.shape[0]} images but {labels.shape[0]} labels.")
        if labels.numel() and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise DataError(
                f"{where}: labels must lie in [0, {len(self.classes) - 1}] (one per class); "
                f"got range [{int(labels.min())}, {int(labels.max())}]."
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        _, c, h, w = self.images.shape
        return (int(c), int(h), int(w))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> ImageDataset:
        """A new data set of the images at ``indices`` (ints or a boolean mask), in that order."""
        bad = f"subset of {self.name!r}: indices must be a 1-D sequence of ints or a boolean mask"
        try:
            idx = indices if torch.is_tensor(indices) else torch.as_tensor(np.asarray(indices))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise DataError(f"{bad}; got {indices!r}.") from exc
        if idx.dtype == torch.bool:
            if idx.shape != (len(self),):
                raise DataError(
                    f"subset of {self.name!r}: a boolean mask needs {len(self)} entries; "
                    f"got shape {tuple(idx.shape)}."
                )
            idx = idx.nonzero().flatten()
        if idx.numel() == 0:
            idx = idx.to(torch.int64)
        if idx.dim() != 1 or (idx.is_floating_point() or idx.is_complex()):
            raise DataError(f"{bad}; got {indices!r}.")
        idx = idx.to(torch.int64)
        if idx.numel() and (idx.min() < 0 or idx.max() >= len(self)):
            raise DataError(
                f"subset of {self.name!r}: indices must lie in [0, {len(self) - 1}]; "
                f"got range [{int(idx.min())}, {int(idx.max())}]."
            )
        return ImageDataset(
            name=self.name,
            images=self.images[idx],
            labels=self.labels[idx],
            classes=self.classes,
            description=self.description,
        )

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return (
            f"ImageDataset(name={self.name!r}, n={len(self)}, image_shape=({c}, {h}, {w}), "
            f"classes={len(self.classes)})"
        )


@dataclass(frozen=True)
class DatasetInfo:
    """What a built-in data set holds, so users can choose one without loading it."""

    name: str
    description: str
    classes: tuple[str, ...]
    native_size: tuple[int, int]  # (H, W)
    channels: int
    num_images: int  # all splits together
    source: str  # the installed package and file the images come from

    @property
    def num_classes(self) -> int:
        return len(self.classes)
