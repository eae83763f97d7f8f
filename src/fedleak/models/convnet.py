"""Geiping-style ConvNet: a plain stack of 3x3 conv (+BN) + ReLU blocks with max-pools.

A small, BN-carrying CNN is the standard victim for optimisation attacks that use BN
statistics (Geiping et al., 2020; Yin et al., 2021).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from fedleak.errors import ConfigError
from fedleak.models.base import (
    MODELS,
    check_bool,
    check_choice,
    check_int,
    check_int_tuple,
    check_spatial,
    conv_out,
)
from fedleak.models.normalize import Normalize

_CALLER = "model 'convnet'"


@MODELS.register("convnet")
def convnet(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    widths: Sequence[int] = (32, 64, 128, 128),
    pool_after: Sequence[int] = (1, 2),
    batch_norm: bool = True,
    head: str = "flatten",
    width: int = 1,
    mean: float | Sequence[float] = 0.5,
    std: float | Sequence[float] = 0.5,
) -> nn.Sequential:
    """Normalize, then per block Conv3x3(pad 1) [-BatchNorm2d] -ReLU [-MaxPool2x2], then a head.

    ``pool_after`` holds 0-based block indices followed by a 2x2 max-pool; ``width`` multiplies
    ``widths``; ``head`` is ``"flatten"`` (Flatten-Linear) or ``"gap"`` (global average pool).
    Convs before a BatchNorm have no bias (BN's shift makes it redundant). Defaults on 1x32x32
    with 2 classes: 256,994 parameters (239,904 in the conv weights, 16,386 in the Linear).
    """
    widths = check_int_tuple(widths, "widths", _CALLER)
    pool_after = check_int_tuple(pool_after, "pool_after", _CALLER, minimum=0, allow_empty=True)
    batch_norm = check_bool(batch_norm, "batch_norm", _CALLER)
    head = check_choice(head, ("flatten", "gap"), "head", _CALLER)
    width = check_int(width, "width", _CALLER)
    bad = [i for i in pool_after if i >= len(widths)]
    if bad or len(set(pool_after)) != len(pool_after):
        raise ConfigError(
            f"`pool_after` of {_CALLER} must hold distinct block indices in "
            f"0..{len(widths) - 1}; got {pool_after!r}."
        )

    c, h, w = input_shape
    layers: list[nn.Module] = [Normalize(c, mean, std)]
    in_ch = c
    for i, base in enumerate(widths):
        out_ch = base * width
        layers.append(nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(nn.ReLU())
        if i in pool_after:
            layers.append(nn.MaxPool2d(2))
            h, w = conv_out(h, 2, 2), conv_out(w, 2, 2)
        in_ch = out_ch
    check_spatial(h, w, input_shape, _CALLER)

    if head == "gap":
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_ch, num_classes)]
    else:
        layers += [nn.Flatten(), nn.Linear(in_ch * h * w, num_classes)]
    return nn.Sequential(*layers)
