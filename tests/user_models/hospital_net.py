"""A model written by a user, without fedleak: plain PyTorch, loaded by file path in the tests.

It expects *normalized* input ((x - 0.5) / 0.5, done by the user's data pipeline, not inside the
model), like most training scripts. ``out`` picks what forward returns: a tensor, a dict with
``logits``, or a tuple, as Hugging Face and other libraries do.
"""

import torch
from torch import nn


class HospitalNet(nn.Module):
    def __init__(self, channels: int = 1, classes: int = 3, width: int = 4, bn: bool = True,
                 out: str = "tensor", dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width) if bn else nn.Identity()
        self.act = nn.Sigmoid()
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width * 8 * 8, classes)
        self.out = out

    def forward(self, x: torch.Tensor):
        z = self.drop(self.act(self.bn(self.conv(x))).flatten(1))
        logits = self.head(z)
        if self.out == "dict":
            return {"logits": logits, "features": z}
        if self.out == "tuple":
            return (logits, z)
        return logits


class NoLinearHead(nn.Module):
    """Last layer is a 1x1 convolution + pooling, not an nn.Linear."""

    def __init__(self, channels: int = 1, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.act = nn.Sigmoid()
        self.head = nn.Conv2d(4, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv(x))).mean((2, 3))
