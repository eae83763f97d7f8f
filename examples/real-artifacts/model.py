"""The model of the worked example: plain PyTorch, no fedleak (it expects normalized input)."""

import torch
from torch import nn


class SmallNet(nn.Module):
    def __init__(self, classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.Sigmoid(),
            nn.Conv2d(width, width, 3, padding=1), nn.Sigmoid(),
        )
        self.classifier = nn.Linear(width * 8 * 8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))
