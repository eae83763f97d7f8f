"""A small UNet for diffusion clients, in plain PyTorch.

Why plain and attention-free: gradient inversion differentiates the client's gradient again
(double backward), which CPU attention kernels do not support, and ``torch.func`` transforms
(``functional_call``, ``vmap``, ``grad``) must work on it. GroupNorm (not BatchNorm) keeps every
sample independent and holds no running buffers, so vmapped forwards are pure.

Layout: sinusoidal time embedding -> MLP; conv in; per resolution level ``blocks`` residual
blocks (GroupNorm, SiLU, 3x3 conv, time shift), stride-2 conv down; a middle block; mirrored up
path (nearest upsample + conv), each up block taking its down block's output as a concatenated
skip connection; GroupNorm, SiLU, conv out. Defaults (16 channels, levels x1/x2, one block per
level) give about 95k parameters for 16x16x1 images.
The output conv is *not* zero-initialised: an untrained victim with a zero output layer would
send zero gradients for every other layer, which no real client model does after one step.
The network works in model space ([-1, 1] images); mapping from [0, 1] happens in the loss and
the samplers (``fedleak.diffusion.schedule.to_model_space``), never here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fedleak.errors import ConfigError


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`UNet` (JSON-able, saved next to the weights).

    ``channels`` is the base width; level ``i`` has ``channels * mults[i]`` channels and the
    image is halved between levels. ``time_scale`` multiplies t before the sinusoidal embedding
    (``1000 / T`` by default, so models for T=16 and T=1000 see the same range).
    """

    image_size: int = 16
    in_channels: int = 1
    channels: int = 16
    mults: tuple[int, ...] = (1, 2)
    blocks: int = 1
    groups: int = 8
    num_timesteps: int = 16
    time_scale: float | None = None

    def __post_init__(self) -> None:
        caller = "UNetConfig"
        for key in ("image_size", "in_channels", "channels", "blocks", "groups", "num_timesteps"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"`{key}` of {caller} must be an int >= 1; got {v!r}.")
        mults = tuple(self.mults)
        if not mults or not all(isinstance(m, int) and m >= 1 for m in mults):
            raise ConfigError(f"`mults` of {caller} must be ints >= 1; got {self.mults!r}.")
        object.__setattr__(self, "mults", mults)
        if self.image_size % 2 ** (len(mults) - 1):
            raise ConfigError(
                f"`image_size` of {caller} must be divisible by {2 ** (len(mults) - 1)} "
                f"({len(mults)} levels); got {self.image_size}."
            )
        for m in mults:
            if (self.channels * m) % self.groups:
                raise ConfigError(
                    f"`groups` of {caller} must divide every level's width "
                    f"({self.channels * m}); got {self.groups}."
                )

    @property
    def scale(self) -> float:
        return self.time_scale if self.time_scale is not None else 1000.0 / self.num_timesteps

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mults"] = list(self.mults)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        d = dict(d)
        if "mults" in d:
            d["mults"] = tuple(d["mults"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (N,) -> (N, dim); continuous in t (t-relaxation relies on this)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs.to(t.device)[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the time embedding added as a per-channel shift."""

    def __init__(self, cin: int, cout: int, tdim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(math.gcd(groups, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(tdim, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(temb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """Noise/velocity predictor ``(x_t, t) -> (N, C, H, W)`` for images in model space.

    ``t`` is a (N,) tensor of timesteps (ints or floats in [0, T)). Attributes ``config`` and
    ``input_shape`` (C, H, W) let attacks and :func:`save_model` read the architecture back.
    """

    def __init__(self, config: UNetConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        if config is None:
            config = UNetConfig(**overrides)
        elif overrides:
            config = UNetConfig.from_dict({**config.to_dict(), **overrides})
        self.config = config
        self.input_shape = (config.in_channels, config.image_size, config.image_size)
        c, g = config.channels, config.groups
        tdim = 2 * c
        self.temb_dim = c
        self.time_mlp = nn.Sequential(nn.Linear(c, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.conv_in = nn.Conv2d(config.in_channels, c, 3, padding=1)
        widths = [c * m for m in config.mults]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = []
        cur = c
        for i, w in enumerate(widths):
            level = nn.ModuleList()
            for _ in range(config.blocks):
                level.append(ResBlock(cur, w, tdim, g))
                cur = w
                skips.append(cur)
            self.down.append(level)
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
        self.mid = ResBlock(cur, cur, tdim, g)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            level = nn.ModuleList()
            for _ in range(config.blocks):
                level.append(ResBlock(cur + skips.pop(), w, tdim, g))
                cur = w
            self.up.append(level)
            if i > 0:
                self.upsample.append(nn.Conv2d(cur, cur, 3, padding=1))
        self.norm_out = nn.GroupNorm(g, cur)
        self.conv_out = nn.Conv2d(cur, config.in_channels, 3, padding=1)

    #: the parameter that multiplies :meth:`time_features` (what t-recovery by embedding reads)
    time_input = "time_mlp.0.weight"

    def time_features(self, t: torch.Tensor) -> torch.Tensor:
        """The sinusoidal features of t that enter the first time-MLP layer, (N, channels)."""
        return timestep_embedding(t * self.config.scale, self.temb_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        temb = self.time_mlp(self.time_features(t))
        h = self.conv_in(x)
        hs = []
        for i, level in enumerate(self.down):
            for block in level:
                h = block(h, temb)
                hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid(h, temb)
        for i, level in enumerate(self.up):
            for block in level:
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (for reports)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
