"""Client-side simulation: what a real client computes and sends.

The user's model is never modified: training runs on a deep copy that starts from the global
weights. FedSGD sends one gradient on the whole batch; FedAvg runs E epochs or K steps of SGD
(with momentum) or Adam and sends ``new - old`` for every parameter plus its BatchNorm buffers.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F

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


def _check_batch(images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.ndim != 4:
        raise DataError(f"`images` must be (N, C, H, W); got shape {tuple(images.shape)}.")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"`labels` must be (N,) with N = {images.shape[0]}; got shape {tuple(labels.shape)}."
        )
    if not bool(torch.isfinite(images).all()):
        raise DataError("`images` hold NaN or inf values.")


def _set_bn_mode(model: nn.Module, mode: str) -> None:
    model.train()
    if mode == "eval":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


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
    _check_batch(images, labels)
    n = images.shape[0]
    if protocol not in ("fedsgd", "fedavg"):
        raise ConfigError(f"`protocol` must be 'fedsgd' or 'fedavg'; got {protocol!r}.")
    if bn_mode not in ("train", "eval"):
        raise ConfigError(f"`bn_mode` must be 'train' or 'eval'; got {bn_mode!r}.")
    net = copy.deepcopy(model)
    _set_bn_mode(net, bn_mode)
    mom = bn_momentum(net)
    params = [p for p in net.parameters() if p.requires_grad]
    names = [k for k, p in net.named_parameters() if p.requires_grad]

    if protocol == "fedsgd":
        if local_epochs not in (None, 1) or local_steps not in (None, 1):
            raise ConfigError("FedSGD sends one gradient: `local_epochs`/`local_steps` must be 1.")
        loss = F.cross_entropy(net(images), labels)
        grads = torch.autograd.grad(loss, params)
        return ClientUpdate(
            kind="gradient",
            tensors={k: g.detach() for k, g in zip(names, grads, strict=True)},
            buffers=bn_buffers(net),
            num_samples=n,
            training=TrainingConfig(
                protocol="fedsgd",
                lr=lr,
                local_steps=1,
                batch_size=n,
                batch_sizes=(n,),
                bn_mode=bn_mode,
                bn_momentum=mom,
                shuffle=False,
            ),
            client_id=client_id,
            round=round,
        )

    b = batch_size or n
    if b < 1:
        raise ConfigError(f"`batch_size` must be >= 1; got {b}.")
    if local_steps is not None and local_epochs is not None:
        raise ConfigError("give `local_epochs` or `local_steps`, not both.")
    steps_per_epoch = math.ceil(n / b)
    total = local_steps if local_steps is not None else (local_epochs or 1) * steps_per_epoch
    if total < 1:
        raise ConfigError(f"`local_steps`/`local_epochs` must be >= 1; got {total}.")
    if not (lr > 0):
        raise ConfigError(f"`lr` must be > 0 for FedAvg; got {lr!r}.")
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=lr, momentum=momentum, weight_decay=weight_decay
        )
    elif optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)
    else:
        raise ConfigError(f"`optimizer` must be 'sgd' or 'adam'; got {optimizer!r}.")

    before = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(seed)
    sizes: list[int] = []
    for batch_idx in _batches(n, b, total, shuffle, gen):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(images[batch_idx]), labels[batch_idx]).backward()
        opt.step()
        sizes.append(len(batch_idx))
    return ClientUpdate(
        kind="delta",
        tensors={k: (p.detach() - p0) for k, p, p0 in zip(names, params, before, strict=True)},
        buffers=bn_buffers(net),
        num_samples=n,
        training=TrainingConfig(
            protocol="fedavg",
            lr=lr,
            local_steps=total,
            local_epochs=local_epochs if local_steps is None else None,
            batch_size=b,
            batch_sizes=tuple(sizes),
            optimizer=optimizer,
            momentum=momentum,
            weight_decay=weight_decay,
            betas=betas,
            bn_mode=bn_mode,
            bn_momentum=mom,
            shuffle=shuffle,
        ),
        client_id=client_id,
        round=round,
    )


def _batches(n: int, b: int, total: int, shuffle: bool, gen: torch.Generator):
    """Yield ``total`` index batches, epoch after epoch (reshuffled each epoch if asked)."""
    done = 0
    while done < total:
        order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
        for start in range(0, n, b):
            yield order[start : start + b]
            done += 1
            if done == total:
                return
