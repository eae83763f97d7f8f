"""A Flower app's task module written without fedleak, shaped like Flower's quickstart-pytorch.

The data loader normalizes images (``Normalize((0.5,), (0.5,))``: the model expects input in
[-1, 1]); the data are offline (seeded random images with a class-dependent brightness); the
client trains 2 local steps of SGD with momentum 0.9, whatever the server sends besides ``lr``.
"""

import torch
from torch import nn
from torch.nn import functional as F

STEPS, BATCH, MOMENTUM = 2, 4, 0.9


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.sigmoid(self.conv(x)).flatten(1))


def load_pixels(partition_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The client's raw images in [0, 1] and labels (before the loader's Normalize)."""
    g = torch.Generator().manual_seed(100 + int(partition_id))
    labels = torch.randint(0, 3, (BATCH * STEPS,), generator=g)
    images = (torch.rand(len(labels), 1, 8, 8, generator=g) * 0.5
              + 0.25 * labels.view(-1, 1, 1, 1))
    return images, labels


def load_data(partition_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What the training loop sees: normalized images, as the quickstart's transforms give."""
    images, labels = load_pixels(partition_id)
    return (images - 0.5) / 0.5, labels


def train_local(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, lr: float) -> float:
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=MOMENTUM)
    net.train()
    loss = torch.zeros(())
    for s in range(0, STEPS * BATCH, BATCH):
        opt.zero_grad()
        loss = F.cross_entropy(net(images[s:s + BATCH]), labels[s:s + BATCH])
        loss.backward()
        opt.step()
    return float(loss.detach())
