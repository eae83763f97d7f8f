"""Per-channel input normalisation as the first layer of every model.

Keeping it inside the model lets attacks optimise images directly in [0, 1] pixel space.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedleak.errors import ConfigError, DataError


def _per_channel(value: float | Sequence[float], channels: int, param: str) -> torch.Tensor:
    values = [value] * channels if isinstance(value, (int, float)) else list(value)
    if len(values) != channels or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    ):
        raise ConfigError(
            f"`{param}` of Normalize must be a number or {channels} numbers (one per channel); "
            f"got {value!r}."
        )
    return torch.tensor(values, dtype=torch.get_default_dtype()).view(channels, 1, 1)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel.

    ``mean``/``std`` are non-persistent buffers: they follow ``.to()``/``.double()`` but stay
    out of ``state_dict`` and ``parameters()``, so client updates and gradients never carry them.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        channels: int,
        mean: float | Sequence[float] = 0.5,
        std: float | Sequence[float] = 0.5,
    ) -> None:
        super().__init__()
        self.channels = channels
        mean_t = _per_channel(mean, channels, "mean")
        std_t = _per_channel(std, channels, "std")
        if not bool((std_t > 0).all()):
            raise ConfigError(f"`std` of Normalize must be > 0 in every channel; got {std!r}.")
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Broadcasting would silently turn a 1-channel image into 3 channels; refuse instead.
        if x.dim() < 3 or x.shape[-3] != self.channels:
            raise DataError(
                f"`x` of Normalize must have {self.channels} channels at dim -3; "
                f"got shape {tuple(x.shape)!r}."
            )
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, mean={self.mean.flatten().tolist()}, "
            f"std={self.std.flatten().tolist()}"
        )
