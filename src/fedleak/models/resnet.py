"""CIFAR-style ResNets (3x3 stem, no max-pool) for small images.

``norm="group"`` swaps every BatchNorm for GroupNorm, which has no cross-example statistics
and so is compatible with per-example gradients (DP-SGD) and train-mode ``vmap``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fedleak.models.base import MODELS, check_choice, check_int
from fedleak.models.normalize import Normalize


def group_count(channels: int) -> int:
    """Largest divisor of ``channels`` that is <= min(32, channels // 4) (at least 1).

    Keeps >= 4 channels per group and at most 32 groups (Wu & He, 2018), for any width.
    """
    cap = max(1, min(32, channels // 4))
    return next(g for g in range(cap, 0, -1) if channels % g == 0)


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(group_count(channels), channels)
    return nn.BatchNorm2d(channels)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection.

    A shape-changing shortcut is either a 1x1 conv + norm (``"projection"``, ResNet-18 as in
    most CIFAR code) or parameter-free subsampling + zero channel padding (``"pad"``, option A
    of He et al. 2016, used for ResNet-20).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.norm1 = make_norm(norm, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.norm2 = make_norm(norm, out_ch)
        reshape = stride != 1 or in_ch != out_ch
        self.stride = stride
        self.pad = (0, 0, 0, 0, (out_ch - in_ch) // 2, out_ch - in_ch - (out_ch - in_ch) // 2)
        self.use_pad = reshape and shortcut == "pad"
        self.shortcut: nn.Sequential | None = None
        if reshape and shortcut == "projection":
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), make_norm(norm, out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        if self.shortcut is not None:
            x = self.shortcut(x)
        elif self.use_pad:
            x = F.pad(x[..., :: self.stride, :: self.stride], self.pad)
        return F.relu(out + x)


class ResNet(nn.Module):
    """Normalize - conv3x3 - norm - ReLU - stages of BasicBlocks - global avg pool - Linear.

    Fully convolutional up to the pool, so it accepts any H, W (down to 1x1 feature maps).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        blocks: Sequence[int],
        widths: Sequence[int],
        *,
        norm: str = "batch",
        shortcut: str = "projection",
        mean: float | Sequence[float] = 0.5,
        std: float | Sequence[float] = 0.5,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(in_channels, mean, std)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.norm1 = make_norm(norm, widths[0])
        stages: list[nn.Module] = []
        in_ch = widths[0]
        for i, (n, out_ch) in enumerate(zip(blocks, widths, strict=True)):
            strides = [1 if i == 0 else 2] + [1] * (n - 1)
            stage = [
                BasicBlock(in_ch if j == 0 else out_ch, out_ch, s, norm, shortcut)
                for j, s in enumerate(strides)
            ]
            stages.append(nn.Sequential(*stage))
            in_ch = out_ch
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(self.normalize(x))))
        x = self.layers(x)
        return self.fc(x.mean(dim=(-2, -1)))


@MODELS.register("resnet18")
def resnet18(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    norm: str = "batch",
    width: int = 64,
    mean: float | Sequence[float] = 0.5,
    std: float | Sequence[float] = 0.5,
) -> ResNet:
    """ResNet-18: BasicBlocks [2, 2, 2, 2], widths ``width`` x (1, 2, 4, 8), projection shortcuts.

    11,173,962 parameters on 3x32x32 with 10 classes.
    """
    caller = "model 'resnet18'"
    check_choice(norm, ("batch", "group"), "norm", caller)
    width = check_int(width, "width", caller)
    return ResNet(
        input_shape[0],
        num_classes,
        (2, 2, 2, 2),
        tuple(width * m for m in (1, 2, 4, 8)),
        norm=norm,
        shortcut="projection",
        mean=mean,
        std=std,
    )


@MODELS.register("resnet20")
def resnet20(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    norm: str = "batch",
    width: int = 16,
    mean: float | Sequence[float] = 0.5,
    std: float | Sequence[float] = 0.5,
) -> ResNet:
    """ResNet-20 (He et al., 2016): BasicBlocks [3, 3, 3], widths ``width`` x (1, 2, 4).

    Option-A (zero-padding) shortcuts as in the paper: 269,722 parameters on 3x32x32/10 classes.
    """
    caller = "model 'resnet20'"
    check_choice(norm, ("batch", "group"), "norm", caller)
    width = check_int(width, "width", caller)
    return ResNet(
        input_shape[0],
        num_classes,
        (3, 3, 3),
        tuple(width * m for m in (1, 2, 4)),
        norm=norm,
        shortcut="pad",
        mean=mean,
        std=std,
    )
