"""What a federated diffusion client sends: the gradient (FedSGD) or delta (FedAvg) of the
DDPM loss on its private images, with its noise shared in the clear or kept private.

The training metadata travels in the ordinary :class:`~fedleak.fl.update.TrainingConfig`:
``task="diffusion"`` and ``loss="diffusion:<prediction>:<schedule>:<T>"`` (e.g.
``"diffusion:v:cosine:16"``), parsed back with :func:`parse_diffusion_loss`. When
``share_noise=True`` the update's ``shared`` holds ``epsilon`` (N, C, H, W) and ``t`` (N,) (for
FedAvg with K > 1 local steps: (K, B, C, H, W) and (K, B), one draw per step); otherwise it is
empty and both stay on the client. The images never enter the update.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from fedleak.device import device_of, generator_for
from fedleak.diffusion.schedule import (
    NoiseSchedule,
    check_prediction,
    diffusion_loss,
)
from fedleak.errors import ConfigError
from fedleak.fl.update import ClientUpdate, TrainingConfig

LOSS_PREFIX = "diffusion"


def diffusion_loss_name(prediction: str, schedule: NoiseSchedule) -> str:
    """The ``TrainingConfig.loss`` string of a diffusion client, e.g. "diffusion:v:cosine:16"."""
    return f"{LOSS_PREFIX}:{prediction}:{schedule.spec}"


def parse_diffusion_loss(loss: str) -> tuple[str, NoiseSchedule]:
    """(prediction, schedule) from a loss string written by :func:`diffusion_loss_name`."""
    parts = str(loss).split(":")
    if len(parts) != 4 or parts[0] != LOSS_PREFIX:
        raise ConfigError(
            f"not a diffusion loss name (want 'diffusion:<v|eps>:<schedule>:<T>'); got {loss!r}."
        )
    prediction = check_prediction(parts[1], "parse_diffusion_loss")
    return prediction, NoiseSchedule.from_spec(f"{parts[2]}:{parts[3]}")


def draw_noise(
    n: int, shape: tuple[int, ...], schedule: NoiseSchedule, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample timesteps (uniform over the T steps) and Gaussian noise from the client's RNG."""
    t = torch.randint(0, schedule.steps, (n,), generator=generator, device=generator.device)
    eps = torch.randn((n, *shape), generator=generator, device=generator.device)
    return t, eps


def _check_images(images: torch.Tensor, model: nn.Module) -> None:
    if not torch.is_tensor(images) or images.dim() != 4 or not images.is_floating_point():
        got = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ConfigError(f"`images` of diffusion_update must be float (N, C, H, W); got {got}.")
    shape = getattr(model, "input_shape", None)
    if shape is not None and tuple(images.shape[1:]) != tuple(shape):
        raise ConfigError(
            f"`images` of diffusion_update must be {tuple(shape)} per image for this model; "
            f"got {tuple(images.shape[1:])}."
        )


def diffusion_update(
    model: nn.Module,
    images: torch.Tensor,
    *,
    schedule: NoiseSchedule | str = "cosine:16",
    prediction: str = "v",
    t: torch.Tensor | None = None,
    epsilon: torch.Tensor | None = None,
    share_noise: bool = False,
    protocol: str = "fedsgd",
    local_steps: int = 1,
    batch_size: int | None = None,
    lr: float = 0.01,
    seed: int = 0,
    client_id: str | None = None,
    round: int | None = None,
) -> ClientUpdate:
    """The update of a diffusion client holding ``images`` (N, C, H, W) in [0, 1].

    FedSGD: the gradient of the mean DDPM loss on all N images, each with its own t and
    epsilon (``t``/``epsilon`` given, or drawn from the client's ``seed``-ed generator).
    FedAvg: ``local_steps`` plain SGD steps of size ``lr`` on batches of ``batch_size`` (default
    N), with fresh t and epsilon per step (``t``/``epsilon`` may not be given then); the update
    is new - old parameters. ``model`` is not modified.
    """
    caller = "diffusion_update"
    schedule = NoiseSchedule.from_spec(schedule)
    prediction = check_prediction(prediction, caller)
    _check_images(images, model)
    if not isinstance(share_noise, bool):
        raise ConfigError(f"`share_noise` of {caller} must be True or False; got {share_noise!r}.")
    n, shape = images.shape[0], tuple(images.shape[1:])
    images = images.to(device_of(model))  # the client trains where the model lives
    gen = generator_for(images.device, seed)
    net = copy.deepcopy(model)
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    names = [k for k, p in net.named_parameters() if p.requires_grad]
    loss_name = diffusion_loss_name(prediction, schedule)

    if protocol == "fedsgd":
        if local_steps != 1:
            raise ConfigError(f"FedSGD sends one gradient: `local_steps` of {caller} must be 1.")
        t_draw, eps_draw = draw_noise(n, shape, schedule, gen)
        t = t_draw if t is None else torch.as_tensor(t).long().reshape(-1).to(images.device)
        eps = eps_draw if epsilon is None else epsilon.float().to(images.device)
        if t.shape != (n,) or eps.shape != images.shape:
            raise ConfigError(
                f"`t` and `epsilon` of {caller} must be ({n},) and {tuple(images.shape)}; got "
                f"{tuple(t.shape)} and {tuple(eps.shape)}."
            )
        if int(t.min()) < 0 or int(t.max()) >= schedule.steps:
            raise ConfigError(f"`t` of {caller} must lie in [0, {schedule.steps - 1}].")
        loss = diffusion_loss(net, images, t, eps, schedule, prediction)
        grads = torch.autograd.grad(loss, params)
        shared = {"epsilon": eps.detach().clone(), "t": t.clone()} if share_noise else {}
        return ClientUpdate(
            kind="gradient",
            tensors={k: g.detach() for k, g in zip(names, grads, strict=True)},
            num_samples=n,
            training=TrainingConfig(
                protocol="fedsgd", lr=lr, local_steps=1, batch_size=n, batch_sizes=(n,),
                bn_mode="eval", shuffle=False, loss=loss_name, task="diffusion",
            ),
            shared=shared,
            client_id=client_id,
            round=round,
        )
    if protocol != "fedavg":
        raise ConfigError(f"`protocol` of {caller} must be 'fedsgd' or 'fedavg'; got {protocol!r}.")
    if t is not None or epsilon is not None:
        raise ConfigError(f"FedAvg draws fresh noise every step: drop `t`/`epsilon` of {caller}.")
    if isinstance(local_steps, bool) or not isinstance(local_steps, int) or local_steps < 1:
        raise ConfigError(f"`local_steps` of {caller} must be an int >= 1; got {local_steps!r}.")
    if not (isinstance(lr, int | float) and lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"`lr` of {caller} must be a positive number for FedAvg; got {lr!r}.")
    b = batch_size or n
    if b < 1 or b > n:
        raise ConfigError(f"`batch_size` of {caller} must be in [1, {n}]; got {b}.")
    opt = torch.optim.SGD(params, lr=lr)
    before = [p.detach().clone() for p in params]
    ts, epss, sizes = [], [], []
    for step in range(local_steps):
        start = (step * b) % n
        idx = torch.arange(start, start + b) % n  # fixed cyclic order: no shuffling
        t_k, eps_k = draw_noise(b, shape, schedule, gen)
        opt.zero_grad(set_to_none=True)
        diffusion_loss(net, images[idx], t_k, eps_k, schedule, prediction).backward()
        opt.step()
        ts.append(t_k)
        epss.append(eps_k)
        sizes.append(b)
    if not share_noise:
        shared = {}
    elif local_steps == 1:
        shared = {"epsilon": epss[0], "t": ts[0]}
    else:
        shared = {"epsilon": torch.stack(epss), "t": torch.stack(ts)}
    return ClientUpdate(
        kind="delta",
        tensors={k: (p.detach() - p0) for k, p, p0 in zip(names, params, before, strict=True)},
        num_samples=n,
        training=TrainingConfig(
            protocol="fedavg", lr=lr, local_steps=local_steps, batch_size=b,
            batch_sizes=tuple(sizes), bn_mode="eval", shuffle=False, loss=loss_name,
            task="diffusion",
        ),
        shared=shared,
        client_id=client_id,
        round=round,
    )
