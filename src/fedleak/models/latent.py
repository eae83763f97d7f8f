"""The client model of seed 001's latent perturbation defense (model ``latent-net``).

Encoder -> latent + Gaussian noise -> predictor, plus the client-local decoder branch that
rebuilds the input from the perturbed latent (Table I of Jiang, Firouzi, Chakrabarty, arXiv
2503.16542, adapted). The training logic (the Pearson-correlation minimax, the learned noise)
lives in :mod:`fedleak.defenses.latent`; the architecture is here so that
``build_model("latent-net", ...)`` works without importing the defenses.

- encoder Conv3x3(pad 1)+ReLU with widths w, 2w, 2w, 4w, 4w, 4w, MaxPool(pool), 4w, 4w, 4w
  (paper: w = 64, pool = 3); predictor MaxPool(pool), Flatten, Linear.
- noise n ~ N(mean, |std|) per latent element; in eval mode the layer adds its mean (no
  sampling). The noise parameters are frozen unless the defense makes them learnable.
- decoder ConvT(4w, k3, s1), BN, ReLU, ConvT(4w, k4, s1), BN, ReLU, ConvT(C, k, s) with k and s
  chosen so the output has the input's size (CIFAR 32x32: k4 s2; 28x28: k2 s2; otherwise
  stride 1, or a final resize when no kernel fits).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from fedleak.errors import ConfigError
from fedleak.models.base import MODELS, check_int, conv_out
from fedleak.models.normalize import Normalize

__all__ = ["LatentDecoder", "LatentNet", "LatentNoise", "latent_net"]

_CALLER = "model 'latent-net'"


class LatentNoise(nn.Module):
    """z + n, n ~ N(mean, |std|) per latent element; in eval mode z + mean (no sampling).

    ``mean`` and ``std`` are parameters of the latent's shape so the learnable variant can train
    them; they are frozen (``requires_grad=False``) unless :meth:`set_learnable` says otherwise,
    so an FL update never carries them. ``generator`` (not state) seeds the sampling.
    """

    def __init__(self, shape: Sequence[int], mean: float = 0.0, std: float = 0.0) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.full(tuple(shape), float(mean)), requires_grad=False)
        self.std = nn.Parameter(torch.full(tuple(shape), float(std)), requires_grad=False)
        self.generator: torch.Generator | None = None

    def set_learnable(self, learnable: bool) -> None:
        self.mean.requires_grad_(learnable)
        self.std.requires_grad_(learnable)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = z + self.mean
        if not self.training:
            return out
        sigma = self.std.abs()
        if not self.std.requires_grad and not bool((sigma > 0).any()):
            return out
        eps = torch.randn(z.shape, generator=self.generator, dtype=z.dtype, device=z.device)
        return out + sigma * eps


class LatentNet(nn.Module):
    """Seed 001's client classifier: encoder -> noise -> predictor (Table I, adapted)."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        width: int,
        pool: int,
        noise_mean: float,
        noise_std: float,
        init: str = "he",
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        widths = [width, 2 * width, 2 * width, 4 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = [Normalize(c)]
        in_ch = c
        for out_ch in widths:
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU()]
            in_ch = out_ch
        layers.append(nn.MaxPool2d(pool))
        lh, lw = conv_out(h, pool, pool), conv_out(w, pool, pool)
        for _ in range(3):
            layers += [nn.Conv2d(in_ch, 4 * width, 3, padding=1), nn.ReLU()]
            in_ch = 4 * width
        ph, pw = conv_out(lh, pool, pool), conv_out(lw, pool, pool)
        if ph < 1 or pw < 1:
            raise ConfigError(
                f"`input_shape` of {_CALLER} must survive two {pool}x{pool} max-pools; got "
                f"{tuple(input_shape)!r}. Use larger images or a smaller `pool`."
            )
        self.encoder = nn.Sequential(*layers)
        if init == "he":
            for m in self.encoder.modules():
                if isinstance(m, nn.Conv2d):  # He init: the signal keeps its scale through 9 convs
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    nn.init.zeros_(m.bias)
        # init "default": PyTorch's own Conv2d init, as a plain implementation of the paper's
        # encoder has; its latent is 5-15x smaller than the paper's noise std 0.1 (FIELD.md 7)
        self.init = init
        self.latent_shape = (in_ch, lh, lw)
        self.noise = LatentNoise(self.latent_shape, noise_mean, noise_std)
        self.predictor = nn.Sequential(
            nn.MaxPool2d(pool), nn.Flatten(), nn.Linear(in_ch * ph * pw, num_classes)
        )
        self.width = width
        self.pool = pool
        self.input_shape = (c, h, w)
        self.num_classes = num_classes

    def perturbed_latent(self, x: torch.Tensor) -> torch.Tensor:
        """The noisy latent z~ = E(x) + n that feeds both the predictor and the decoder."""
        return self.noise(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.perturbed_latent(x))


@MODELS.register("latent-net")
def latent_net(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    width: int = 64,
    pool: int = 3,
    noise_mean: float = 0.0,
    noise_std: float = 0.0,
    init: str = "he",
) -> LatentNet:
    """Seed 001's Table I classifier (encoder + noise + predictor); noise off by default.

    ``width`` 64 and ``pool`` 3 are the paper's (2304 predictor inputs at 28x28 or 32x32);
    smaller values make a CPU-sized model. Undefended, it is a plain 9-conv classifier without
    BatchNorm, which the baselines (DP-SGD, BiDO, ...) train as well. ``init``: "he" (He
    normal convs, zero biases) or "default" (PyTorch's default init, a plain implementation of
    the paper's encoder: the latent is then small next to the paper's noise std 0.1).
    """
    if init not in ("he", "default"):
        raise ConfigError(f"`init` of {_CALLER} must be 'he' or 'default'; got {init!r}.")
    width = check_int(width, "width", _CALLER)
    pool = check_int(pool, "pool", _CALLER)
    for param, v in (("noise_mean", noise_mean), ("noise_std", noise_std)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ConfigError(f"`{param}` of {_CALLER} must be a finite number; got {v!r}.")
    if noise_std < 0:
        raise ConfigError(f"`noise_std` of {_CALLER} must be >= 0; got {noise_std!r}.")
    return LatentNet(
        input_shape,
        num_classes,
        width=width,
        pool=pool,
        noise_mean=float(noise_mean),
        noise_std=float(noise_std),
        init=init,
    )


def _decoder_head(latent: int, size: int) -> tuple[int, int, bool]:
    """(kernel, stride, resize) of the last ConvT so that it outputs ``size`` pixels."""
    s2 = latent + 5  # after ConvT(k3, s1) and ConvT(k4, s1)
    k = size - 2 * (s2 - 1)
    if 1 <= k <= 8:
        return k, 2, False
    k = size - s2 + 1
    if 1 <= k <= 8:
        return k, 1, False
    return 2, 2, True


class LatentDecoder(nn.Module):
    """The client-local decoder branch of Table I: perturbed latent -> an image-sized rebuild."""

    def __init__(self, latent_shape: tuple[int, int, int], input_shape: tuple[int, int, int]):
        super().__init__()
        ch, lh, lw = latent_shape
        c, h, w = input_shape
        kh, sh, rh = _decoder_head(lh, h)
        kw, sw, rw = _decoder_head(lw, w)
        self.net = nn.Sequential(
            nn.ConvTranspose2d(ch, ch, 3, stride=1),
            nn.BatchNorm2d(ch),
            nn.ReLU(),
            nn.ConvTranspose2d(ch, ch, 4, stride=1),
            nn.BatchNorm2d(ch),
            nn.ReLU(),
            nn.ConvTranspose2d(ch, c, (kh, kw), stride=(sh, sw)),
        )
        self.size = (h, w) if (rh or rw) else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(z)
        if self.size is not None:
            out = F.interpolate(out, size=self.size, mode="bilinear", align_corners=False)
        return out
