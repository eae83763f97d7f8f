"""Resizing and channel conversion shared by every loader, so all formats behave alike."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedleak.errors import DataError

# ITU-R BT.601 luma weights (what PIL's "L" mode and most papers use).
_LUMA = (0.299, 0.587, 0.114)


def check_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """Normalise ``size`` to ``(H, W)``; an int means a square."""
    if size is None:
        return None
    pair = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    if len(pair) != 2 or not all(_is_int(s) and s > 0 for s in pair):
        raise DataError(
            f"`size` must be a positive int or a (height, width) pair of them; got {size!r}."
        )
    return (int(pair[0]), int(pair[1]))


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def check_channels(channels: int | None) -> int | None:
    """Accept ``None`` (keep the native count), 1 (grey) or 3 (RGB)."""
    if channels is None:
        return None
    if not _is_int(channels) or channels not in (1, 3):
        raise DataError(f"`channels` must be 1 (grey) or 3 (RGB); got {channels!r}.")
    return int(channels)


def _check_batch(images: torch.Tensor, caller: str) -> None:
    if not torch.is_tensor(images) or images.dim() != 4:
        got = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise DataError(f"`images` of {caller} must be a 4-D tensor (N, C, H, W); got {got}.")
    if not images.is_floating_point():
        raise DataError(
            f"`images` of {caller} must be a float tensor in [0, 1]; got {images.dtype}."
        )


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert ``(N, C, H, W)`` images to 1 or 3 channels.

    1 -> 3 repeats the grey plane; 3 -> 1 uses BT.601 luma; 4 -> 3 drops alpha (4 -> 1 drops
    alpha then takes luma); 2 (grey + alpha) drops alpha. Fitting images are returned as is.
    """
    target = check_channels(channels)
    if target is None:
        raise DataError("`channels` of to_channels must be 1 (grey) or 3 (RGB); got None.")
    _check_batch(images, "to_channels")
    c = images.shape[1]
    if c == 4:
        images, c = images[:, :3], 3
    elif c == 2:
        images, c = images[:, :1], 1
    if c == target:
        return images
    if c == 1:
        return images.expand(-1, 3, -1, -1).contiguous()
    if c == 3:
        w = torch.tensor(_LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images * w).sum(dim=1, keepdim=True).clamp_(0.0, 1.0)
    raise DataError(
        f"to_channels: cannot convert {c}-channel images; expected 1, 2, 3 or 4 channels."
    )


def resize(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize ``(N, C, H, W)`` images to ``size`` (bilinear, antialiased, values kept in [0, 1])."""
    hw = check_size(size)
    if hw is None:
        raise DataError("`size` of resize must be a positive int or (height, width); got None.")
    _check_batch(images, "resize")
    if tuple(images.shape[-2:]) == hw:
        return images
    if images.shape[0] == 0:
        return images.new_zeros((0, images.shape[1], *hw))
    out = F.interpolate(images, size=hw, mode="bilinear", align_corners=False, antialias=True)
    return out.clamp_(0.0, 1.0)


def array_to_chw(arr: np.ndarray, source: Path | str) -> np.ndarray:
    """Turn one decoded image (H, W[, C]) of int/float dtype into float32 (C, H, W) in [0, 1].

    Integers are scaled by their dtype's maximum; alpha channels are dropped.
    """
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise DataError(
            f"{source}: expected a grey, RGB or RGBA image (H, W[, C]); got shape {arr.shape}."
        )
    if arr.shape[2] in (2, 4):  # grey+alpha or RGBA: drop alpha
        arr = arr[:, :, : arr.shape[2] - 1]
    if arr.dtype == np.bool_:
        out = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        if info.min < 0 and arr.min() < 0:
            raise DataError(
                f"{source}: negative pixel values in a {arr.dtype} image; expected >= 0."
            )
        out = arr.astype(np.float32) / np.float32(info.max)
    elif np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
        if not np.isfinite(out).all() or out.min() < 0 or out.max() > 1:
            raise DataError(f"{source}: float pixel values must be finite and in [0, 1].")
    else:
        raise DataError(
            f"{source}: unsupported pixel dtype {arr.dtype}; expected integers or floats."
        )
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def stack_images(
    images: Iterable[tuple[str, np.ndarray]],
    *,
    size: tuple[int, int] | None,
    channels: int | None,
    where: str,
) -> torch.Tensor:
    """Stack ``(source, (C, H, W) float32)`` pairs into one batch, resizing each image first.

    Converting and resizing one image at a time keeps memory at the output size and lets images of
    different sizes be combined. Without ``channels``, grey images join RGB ones as RGB (lossless).
    """
    out: list[torch.Tensor] = []
    first: tuple[str, tuple[int, int]] | None = None
    for source, chw in images:
        t = torch.from_numpy(chw).unsqueeze(0)
        if channels is not None:
            t = to_channels(t, channels)
        if size is not None:
            t = resize(t, size)
        hw = (int(t.shape[-2]), int(t.shape[-1]))
        if first is None:
            first = (source, hw)
        elif hw != first[1]:
            raise DataError(
                f"{where}: images differ in size ({first[0]} is {first[1][0]}x{first[1][1]}, "
                f"{source} is {hw[0]}x{hw[1]}); pass size=... (e.g. size={first[1][0]}) to resize "
                "them all."
            )
        out.append(t)
    if not out:
        raise DataError(f"{where}: no images to load.")
    if channels is None and len({t.shape[1] for t in out}) > 1:
        out = [to_channels(t, 3) for t in out]
    return torch.cat(out, dim=0).contiguous()
