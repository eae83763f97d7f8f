"""Diffusion clients inside a federation: a trainer for :func:`fedleak.fl.federate` and a
utility metric for the global model.

Why a trainer: :func:`~fedleak.fl.federate` (and so the audit) runs any client computation with
:func:`~fedleak.fl.local_update`'s signature; this one sends :func:`diffusion_update`'s
gradient or delta instead of a classifier's. Labels are ignored: the DDPM loss has none.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from fedleak.device import device_of, generator_for
from fedleak.diffusion.client import diffusion_update, draw_noise
from fedleak.diffusion.schedule import NoiseSchedule, check_prediction, diffusion_loss
from fedleak.errors import ConfigError
from fedleak.fl.update import ClientUpdate

Truth = dict[tuple[int, str], torch.Tensor]


def diffusion_trainer(
    *,
    schedule: NoiseSchedule | str = "cosine:16",
    prediction: str = "v",
    share_noise: bool = False,
    truth: Truth | None = None,
) -> Callable[..., ClientUpdate]:
    """A ``trainer=`` for :func:`~fedleak.fl.federate` whose clients train a diffusion model.

    Each client sends :func:`diffusion_update` on its images: FedSGD (one gradient) or FedAvg
    (``local_steps``, or ``local_epochs`` x ceil(N / batch_size) steps, of plain SGD).
    ``truth``, when given, receives each FedSGD client's private timesteps under
    ``(round, client_id)``: the simulation's ground truth for scoring t recovery, never part of
    the update.
    """
    schedule = NoiseSchedule.from_spec(schedule)
    prediction = check_prediction(prediction, "diffusion_trainer")

    def train(
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        protocol: str = "fedsgd",
        local_epochs: int | None = None,
        local_steps: int | None = None,
        batch_size: int | None = None,
        lr: float = 0.01,
        optimizer: str = "sgd",
        momentum: float = 0.0,
        seed: int = 0,
        client_id: str | None = None,
        round: int | None = None,
        **ignored: Any,  # classifier options with no meaning here (bn_mode, shuffle, ...)
    ) -> ClientUpdate:
        if optimizer != "sgd" or momentum:
            raise ConfigError(
                "diffusion clients train with plain SGD: set `optimizer: sgd` and no momentum."
            )
        n = images.shape[0]
        kwargs: dict[str, Any] = {}
        if protocol == "fedsgd":
            gen = generator_for(device_of(model), seed)
            t, eps = draw_noise(n, tuple(images.shape[1:]), schedule, gen)
            kwargs = {"t": t, "epsilon": eps}
            if truth is not None:
                truth[(int(round or 0), str(client_id))] = t
        elif protocol == "fedavg":
            b = min(batch_size or n, n)
            steps = local_steps or (local_epochs or 1) * math.ceil(n / b)
            kwargs = {"local_steps": int(steps), "batch_size": b}
        return diffusion_update(
            model, images, schedule=schedule, prediction=prediction, share_noise=share_noise,
            protocol=protocol, lr=lr, seed=seed, client_id=client_id, round=round, **kwargs,
        )

    return train


@torch.no_grad()
def diffusion_test_loss(
    model: nn.Module,
    images: torch.Tensor,
    *,
    schedule: NoiseSchedule | str = "cosine:16",
    prediction: str = "v",
    seed: int = 0,
    batch_size: int = 256,
) -> float:
    """Mean DDPM loss of ``model`` on held-out ``images`` with fixed (seeded) t and noise.

    The utility of a diffusion federation (lower is better): the same draws every round, so the
    curve shows training progress and not sampling noise.
    """
    schedule = NoiseSchedule.from_spec(schedule)
    gen = generator_for(device_of(model), seed)
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].to(gen.device)
            t, eps = draw_noise(x.shape[0], tuple(x.shape[1:]), schedule, gen)
            total += float(diffusion_loss(model, x, t, eps, schedule, prediction)) * x.shape[0]
    finally:
        model.train(was_training)
    return total / max(images.shape[0], 1)


def t_accuracy(
    found: Sequence[int], truth: torch.Tensor, pairing: Sequence[tuple[int, int]]
) -> float:
    """Share of the client's private timesteps an attack recovered, under the image pairing.

    ``found`` is the attack's t per reconstruction, ``truth`` the client's t per original and
    ``pairing`` the (reconstruction, original) pairs of the best-match scoring.
    """
    hits = [int(found[i]) == int(truth[j]) for i, j in pairing]
    return sum(hits) / len(hits) if hits else float("nan")
