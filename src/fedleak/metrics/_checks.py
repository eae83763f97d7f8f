"""Input checks shared by the metric functions, so every caller gets the same one-line errors."""

from __future__ import annotations

import torch
from torch import Tensor

from fedleak.errors import ConfigError, DataError


def check_images(t: object, param: str, caller: str) -> Tensor:
    """Return ``t`` if it is a non-empty, finite, floating (N, C, H, W) tensor, else raise."""
    if not torch.is_tensor(t):
        raise DataError(
            f"`{param}` of {caller} must be a torch.Tensor of shape (N, C, H, W); "
            f"got {type(t).__name__!r}."
        )
    assert isinstance(t, Tensor)
    if t.dim() != 4:
        raise DataError(
            f"`{param}` of {caller} must be a 4-D tensor (N, C, H, W); "
            f"got shape {tuple(t.shape)!r}."
        )
    if not t.is_floating_point():
        raise DataError(
            f"`{param}` of {caller} must be a float tensor with values in [0, 1]; "
            f"got dtype {t.dtype!r}."
        )
    if t.numel() == 0:
        raise DataError(
            f"`{param}` of {caller} must hold at least one non-empty image; "
            f"got shape {tuple(t.shape)!r}."
        )
    if not bool(torch.isfinite(t).all()):
        raise DataError(
            f"`{param}` of {caller} must hold only finite values; got a tensor with NaN or inf."
        )
    return t


def check_same_image_shape(
    x: Tensor, y: Tensor, xname: str, yname: str, caller: str, *, same_n: bool
) -> None:
    """Raise unless ``x`` and ``y`` have equal (C, H, W) (and equal N when ``same_n``)."""
    if x.shape[1:] != y.shape[1:]:
        raise DataError(
            f"`{yname}` of {caller} must have the same (C, H, W) as `{xname}` "
            f"{tuple(x.shape[1:])!r}; got {tuple(y.shape[1:])!r}."
        )
    if same_n and x.shape[0] != y.shape[0]:
        raise DataError(
            f"`{yname}` of {caller} must hold as many images as `{xname}` ({x.shape[0]}); "
            f"got {y.shape[0]}."
        )


def check_data_range(data_range: object, caller: str) -> float:
    """Return ``data_range`` as a positive finite float, else raise :class:`ConfigError`."""
    try:
        value = float(data_range)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = float("nan")
    if not (value > 0 and value != float("inf")):
        raise ConfigError(
            f"`data_range` of {caller} must be a positive finite number; got {data_range!r}."
        )
    return value


def check_by(by: object, caller: str) -> str:
    """Return ``by`` if it names a supported pairing criterion."""
    if by not in ("ssim", "mse"):
        raise ConfigError(f"`by` of {caller} must be 'ssim' or 'mse'; got {by!r}.")
    return str(by)
