"""The LeNet variant from Deep Leakage from Gradients (Zhu et al., 2019).

Sigmoid activations and uniform(-0.5, 0.5) init make it twice differentiable everywhere and
easy to invert, which is why DLG-style attacks are benchmarked on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedleak.models.base import MODELS, check_choice, check_spatial, conv_out
from fedleak.models.normalize import Normalize

_CALLER = "model 'lenet'"


@MODELS.register("lenet")
def lenet(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    init: str = "dlg",
    mean: float | Sequence[float] = 0.5,
    std: float | Sequence[float] = 0.5,
) -> nn.Sequential:
    """Normalize-[Conv5x5(s2)-Sigmoid]x2-Conv5x5(s1)-Sigmoid-Flatten-Linear.

    ``init="dlg"`` draws every weight and bias from uniform(-0.5, 0.5) as DLG's code does;
    ``"default"`` keeps PyTorch's init. Flatten size is 12*ceil(H/4)*ceil(W/4) (768 at 32x32).
    """
    check_choice(init, ("dlg", "default"), "init", _CALLER)
    c, h, w = input_shape
    for stride in (2, 2, 1):
        h, w = conv_out(h, 5, stride, 2), conv_out(w, 5, stride, 2)
    check_spatial(h, w, input_shape, _CALLER)
    net = nn.Sequential(
        Normalize(c, mean, std),
        nn.Conv2d(c, 12, kernel_size=5, stride=2, padding=2),
        nn.Sigmoid(),
        nn.Conv2d(12, 12, kernel_size=5, stride=2, padding=2),
        nn.Sigmoid(),
        nn.Conv2d(12, 12, kernel_size=5, stride=1, padding=2),
        nn.Sigmoid(),
        nn.Flatten(),
        nn.Linear(12 * h * w, num_classes),
    )
    if init == "dlg":
        with torch.no_grad():
            for p in net.parameters():
                p.uniform_(-0.5, 0.5)
    return net
