"""Client-side simulation: what a real client computes and sends.

The user's model is never modified: training runs on a deep copy that starts from the global
weights. FedSGD sends one gradient on the whole batch; FedAvg runs E epochs or K steps of SGD
(with momentum) or Adam and sends ``new - old`` for every parameter plus its BatchNorm buffers.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fedleak.device import device_of
from fedleak.errors import ConfigError, DataError
from fedleak.fl.update import ClientUpdate, TrainingConfig


def bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """BatchNorm buffers of ``model`` as detached copies, keyed as in its state dict."""
    out: dict[str, torch.Tensor] = {}
    for mname, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for bname, b in m.named_buffers(recurse=False):
                if b is not None:
                    out[f"{mname}.{bname}" if mname else bname] = b.detach().clone()
    return out


def bn_momentum(model: nn.Module) -> float | None:
    """The (shared) BatchNorm momentum, or None if the model has no BatchNorm."""
    moms = {
        m.momentum
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    }
    if not moms:
        return None
    if len(moms) > 1 or None in moms:
        raise ConfigError(
            "BatchNorm layers must share one momentum (cumulative averaging, momentum=None, "
            f"is not simulated); got {sorted(map(str, moms))}."
        )
    return float(moms.pop())


# --- the pieces of local training that the training-time defenses share ---------------------


def check_batch(images: torch.Tensor, labels: torch.Tensor) -> None:
    """The client data checks: (N, C, H, W) finite images and (N,) labels."""
    if images.ndim != 4:
        raise DataError(f"`images` must be (N, C, H, W); got shape {tuple(images.shape)}.")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"`labels` must be (N,) with N = {images.shape[0]}; got shape {tuple(labels.shape)}."
        )
    if not bool(torch.isfinite(images).all()):
        raise DataError("`images` hold NaN or inf values.")


def set_bn_mode(model: nn.Module, mode: str) -> None:
    """Train mode everywhere; BatchNorm in eval mode when ``mode == "eval"``."""
    model.train()
    if mode == "eval":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def local_batches(
    n: int, b: int, total: int, shuffle: bool, gen: torch.Generator
) -> Iterator[torch.Tensor]:
    """``total`` index batches of size ``b``, epoch after epoch (reshuffled each epoch if asked).

    The schedule of :func:`local_update`, so an attacker who replays the client's steps from
    the update's metadata sees the same batch split.
    """
    done = 0
    while done < total:
        order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
        for start in range(0, n, b):
            yield order[start : start + b]
            done += 1
            if done == total:
                return


@dataclass(frozen=True)
class LocalPlan:
    """A client's checked local training: data size, schedule and :func:`local_update`'s options.

    ``batch_size`` and ``steps`` are the ones taken (N and 1 for FedSGD); ``local_epochs`` is
    what the update reports (``None`` when the length was given in steps, and for FedSGD).
    """

    n: int
    protocol: str
    batch_size: int
    steps: int
    local_epochs: int | None
    lr: float
    optimizer: str
    momentum: float
    weight_decay: float
    betas: tuple[float, float]
    bn_mode: str
    shuffle: bool
    seed: int
    client_id: str | None
    round: int | None


def plan_local(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    protocol: str,
    local_epochs: int | None,
    local_steps: int | None,
    batch_size: int | None,
    lr: float,
    bn_mode: str,
    **options: Any,
) -> LocalPlan:
    """Check the client's data and :func:`local_update`'s schedule; count the local steps.

    ``options`` are the rest of :func:`local_update`'s options (optimizer, momentum,
    weight_decay, betas, shuffle, seed, client_id, round), all required: the plan keeps them
    as given. The optimizer name is checked where the optimizer is built
    (:func:`make_optimizer`).
    """
    check_batch(images, labels)
    n = images.shape[0]
    if protocol not in ("fedsgd", "fedavg"):
        raise ConfigError(f"`protocol` must be 'fedsgd' or 'fedavg'; got {protocol!r}.")
    if bn_mode not in ("train", "eval"):
        raise ConfigError(f"`bn_mode` must be 'train' or 'eval'; got {bn_mode!r}.")
    if protocol == "fedsgd":
        if local_epochs not in (None, 1) or local_steps not in (None, 1):
            raise ConfigError("FedSGD sends one gradient: `local_epochs`/`local_steps` must be 1.")
        b, total, epochs = n, 1, None
    else:
        b = batch_size or n
        if b < 1:
            raise ConfigError(f"`batch_size` must be >= 1; got {b}.")
        b = min(b, n)  # a batch cannot hold more than the client's images: record what ran
        if local_steps is not None and local_epochs is not None:
            raise ConfigError("give `local_epochs` or `local_steps`, not both.")
        total = local_steps if local_steps is not None else (local_epochs or 1) * math.ceil(n / b)
        if total < 1:
            raise ConfigError(f"`local_steps`/`local_epochs` must be >= 1; got {total}.")
        if not (lr > 0):
            raise ConfigError(f"`lr` must be > 0 for FedAvg; got {lr!r}.")
        epochs = local_epochs if local_steps is None else None
    return LocalPlan(
        n=n,
        protocol=protocol,
        batch_size=b,
        steps=total,
        local_epochs=epochs,
        lr=lr,
        bn_mode=bn_mode,
        **options,
    )


def make_optimizer(
    params: Sequence[nn.Parameter],
    optimizer: str,
    *,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """SGD (with momentum) or Adam, as :func:`local_update` builds them."""
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)
    raise ConfigError(f"`optimizer` must be 'sgd' or 'adam'; got {optimizer!r}.")


def plan_optimizer(
    params: Sequence[nn.Parameter], plan: LocalPlan, optimizer: str | None = None
) -> torch.optim.Optimizer:
    """:func:`make_optimizer` with the plan's options (``optimizer`` overrides its name)."""
    return make_optimizer(
        params,
        optimizer or plan.optimizer,
        lr=plan.lr,
        momentum=plan.momentum,
        weight_decay=plan.weight_decay,
        betas=plan.betas,
    )


def trainable(net: nn.Module) -> tuple[list[str], list[nn.Parameter]]:
    """Names and parameters the client trains and sends (``requires_grad``), in module order."""
    pairs = [(k, p) for k, p in net.named_parameters() if p.requires_grad]
    return [k for k, _ in pairs], [p for _, p in pairs]


def run_local_steps(
    opt: torch.optim.Optimizer,
    params: Sequence[nn.Parameter],
    plan: LocalPlan,
    loss: Callable[[torch.Tensor, int], torch.Tensor],
) -> tuple[list[torch.Tensor], list[int]]:
    """Run the plan's FedAvg steps; ``loss(batch_idx, step)`` is the loss of one local batch.

    Returns ``new - old`` for every parameter and the size of every step's batch.
    """
    before = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(plan.seed)
    sizes: list[int] = []
    batches = local_batches(plan.n, plan.batch_size, plan.steps, plan.shuffle, gen)
    for step, idx in enumerate(batches):
        opt.zero_grad(set_to_none=True)
        loss(idx, step).backward()
        opt.step()
        sizes.append(len(idx))
    return [p.detach() - p0 for p, p0 in zip(params, before, strict=True)], sizes


def fedsgd_training(
    n: int, *, lr: float, bn_mode: str, bn_momentum: float | None
) -> TrainingConfig:
    """The training a FedSGD client reports: one gradient on all ``n`` images, no optimizer."""
    return TrainingConfig(
        protocol="fedsgd",
        lr=lr,
        local_steps=1,
        batch_size=n,
        batch_sizes=(n,),
        bn_mode=bn_mode,  # type: ignore[arg-type]
        bn_momentum=bn_momentum,
        shuffle=False,
    )


def build_update(
    net: nn.Module,
    names: Sequence[str],
    tensors: Sequence[torch.Tensor],
    *,
    kind: str,
    plan: LocalPlan,
    sizes: Sequence[int],
) -> ClientUpdate:
    """The ClientUpdate with the metadata a real client ships (what :func:`local_update` sends)."""
    mom = bn_momentum(net)
    if plan.protocol == "fedsgd":
        training = fedsgd_training(plan.n, lr=plan.lr, bn_mode=plan.bn_mode, bn_momentum=mom)
    else:
        training = TrainingConfig(
            protocol="fedavg",
            lr=plan.lr,
            local_steps=plan.steps,
            local_epochs=plan.local_epochs,
            batch_size=plan.batch_size,
            batch_sizes=tuple(sizes),
            optimizer=plan.optimizer,  # type: ignore[arg-type]
            momentum=plan.momentum,
            weight_decay=plan.weight_decay,
            betas=plan.betas,
            bn_mode=plan.bn_mode,  # type: ignore[arg-type]
            bn_momentum=mom,
            shuffle=plan.shuffle,
        )
    return ClientUpdate(
        kind=kind,  # type: ignore[arg-type]
        tensors={k: t.detach() for k, t in zip(names, tensors, strict=True)},
        buffers=bn_buffers(net),
        num_samples=plan.n,
        training=training,
        client_id=plan.client_id,
        round=plan.round,
    )


# --- the plain client ------------------------------------------------------------------------


def local_update(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    protocol: str = "fedsgd",
    local_epochs: int | None = None,
    local_steps: int | None = None,
    batch_size: int | None = None,
    lr: float = 0.01,
    optimizer: str = "sgd",
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    bn_mode: str = "train",
    shuffle: bool = True,
    seed: int = 0,
    client_id: str | None = None,
    round: int | None = None,
) -> ClientUpdate:
    """Train a copy of ``model`` on the client's data and return what the client sends.

    Args:
        model: the global model as the server sent it (left unchanged).
        images: (N, C, H, W) in [0, 1]; labels: (N,) class indices.
        protocol: "fedsgd" (one gradient of the mean loss on all N images) or "fedavg".
        local_epochs / local_steps: FedAvg length: E passes over the data, or exactly K optimizer
            steps cycling through (reshuffled) epochs. Default: 1 epoch.
        batch_size: FedAvg batch size B (default N); the last batch of an epoch may be smaller.
        bn_mode: "train" (batch statistics, running buffers updated, as real clients do) or "eval".
        seed: seeds the client's shuffling, so a simulation is reproducible.
    """
    plan = plan_local(
        images,
        labels,
        protocol=protocol,
        local_epochs=local_epochs,
        local_steps=local_steps,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        momentum=momentum,
        weight_decay=weight_decay,
        betas=betas,
        bn_mode=bn_mode,
        shuffle=shuffle,
        seed=seed,
        client_id=client_id,
        round=round,
    )
    net = copy.deepcopy(model)
    images, labels = images.to(device_of(net)), labels.to(device_of(net))  # train where it lives
    set_bn_mode(net, bn_mode)
    bn_momentum(net)  # BatchNorm that cannot be simulated fails before any training
    names, params = trainable(net)

    if plan.protocol == "fedsgd":
        grads = torch.autograd.grad(F.cross_entropy(net(images), labels), params)
        return build_update(net, names, grads, kind="gradient", plan=plan, sizes=(plan.n,))

    opt = plan_optimizer(params, plan)

    def loss(idx: torch.Tensor, step: int) -> torch.Tensor:
        return F.cross_entropy(net(images[idx]), labels[idx])

    deltas, sizes = run_local_steps(opt, params, plan, loss)
    return build_update(net, names, deltas, kind="delta", plan=plan, sizes=sizes)
