"""MixUp (Zhang et al. 2018) as a client trainer: train on convex mixes of images and labels.

Why it is a defense: each local step's gradient comes from blended images, so an attacker that
replays plain training on single images matches blends (and a batch's images are entangled).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedleak.defenses.training import (
    TrainingDefense,
    check_number,
    local_training,
    register_training_defense,
)
from fedleak.fl.update import ClientUpdate

__all__ = ["MixUp", "mixup_batch", "soft_cross_entropy"]


def mixup_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    lam: float,
    perm: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """lam * x + (1 - lam) * x[perm] and the matching soft labels (B, num_classes)."""
    onehot = torch.nn.functional.one_hot(labels, num_classes).to(images.dtype)
    mixed = lam * images + (1 - lam) * images[perm]
    soft = lam * onehot + (1 - lam) * onehot[perm]
    return mixed, soft


def soft_cross_entropy(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against soft labels (rows summing to 1)."""
    return -(soft * logits.log_softmax(-1)).sum(-1).mean()


@register_training_defense("mixup")
@dataclass
class MixUp(TrainingDefense):
    """Train on mixed inputs with soft labels; lam ~ Beta(alpha, alpha) per local batch.

    Options:
        alpha: Beta parameter (> 0); small alpha mixes little (lam near 0 or 1), 1 is uniform.
    """

    alpha: float = 1.0

    def __post_init__(self) -> None:
        check_number(self.alpha, "alpha", "MixUp", low=0.0, low_open=True)

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, **train: Any
    ) -> ClientUpdate:
        seed = int(train.get("seed", 0))
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(seed + 17)

        def objective(net: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
            lam = float(rng.beta(self.alpha, self.alpha))
            perm = torch.randperm(x.shape[0], generator=gen)
            logits = net(lam * x + (1 - lam) * x[perm])
            _, soft = mixup_batch(x, y, logits.shape[1], lam, perm)
            return soft_cross_entropy(logits, soft)

        return local_training(model, images, labels, objective, **train)
