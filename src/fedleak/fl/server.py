"""Server side of an in-process federation: weighted FedAvg, client sampling, the round loop."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fedleak.device import device_of, fast_layout, resolve_device
from fedleak.errors import ConfigError, UpdateError
from fedleak.fl.client import local_update
from fedleak.fl.update import ClientUpdate


def aggregate(
    updates: Sequence[ClientUpdate], weights: Sequence[float] | None = None
) -> ClientUpdate:
    """Weighted FedAvg: a true weighted mean of the clients' tensors and float buffers.

    Weights default to each update's ``num_samples``. Integer buffers (``num_batches_tracked``)
    take the maximum. The result is an update of the same kind, with ``num_samples`` summed.
    """
    if not updates:
        raise ConfigError("`updates` of aggregate must hold at least one update; got none.")
    kinds = {u.kind for u in updates}
    if len(kinds) > 1:
        raise UpdateError(f"cannot aggregate a mix of update kinds {sorted(kinds)}.")
    if weights is None:
        if any(u.num_samples is None for u in updates):
            raise ConfigError("aggregate needs `weights` when an update hides its num_samples.")
        weights = [float(u.num_samples) for u in updates]  # type: ignore[arg-type]
    if len(weights) != len(updates) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(
            f"`weights` of aggregate must be {len(updates)} non-negative numbers with a positive "
            f"sum; got {list(weights)!r}."
        )
    dev = next(iter(updates[0].tensors.values())).device
    w = torch.tensor(weights, dtype=torch.float64, device=dev)
    w = w / w.sum()
    keys = list(updates[0].tensors)
    tensors = {}
    for k in keys:
        stack = torch.stack([u.tensors[k].to(torch.float64) for u in updates])
        tensors[k] = torch.tensordot(w, stack, dims=1).to(updates[0].tensors[k].dtype)
    buffers = {}
    for k, v0 in updates[0].buffers.items():
        stack = torch.stack([u.buffers[k] for u in updates])
        if v0.is_floating_point():
            buffers[k] = torch.tensordot(w, stack.to(torch.float64), dims=1).to(v0.dtype)
        else:
            buffers[k] = stack.max(dim=0).values
    total = sum(u.num_samples or 0 for u in updates)
    return ClientUpdate(kind=updates[0].kind, tensors=tensors, buffers=buffers, num_samples=total)


@torch.no_grad()
def apply_update(model: nn.Module, update: ClientUpdate, *, server_lr: float = 1.0) -> None:
    """Apply an (aggregated) update to ``model`` in place: ``p += lr*delta`` or ``p -= lr*grad``."""
    params = dict(model.named_parameters())
    sign = 1.0 if update.kind == "delta" else -1.0
    for k, t in update.tensors.items():
        params[k].add_(t.to(params[k].device), alpha=sign * server_lr)
    state_buffers = dict(model.named_buffers())
    for k, b in update.buffers.items():
        state_buffers[k].copy_(b)


def sample_clients(num_clients: int, per_round: int, generator: torch.Generator) -> list[int]:
    """Choose ``per_round`` distinct clients uniformly at random (sorted, reproducible)."""
    if not 1 <= per_round <= num_clients:
        raise ConfigError(
            f"`clients_per_round` must be between 1 and {num_clients}; got {per_round}."
        )
    return sorted(torch.randperm(num_clients, generator=generator)[:per_round].tolist())


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch: int | None = None) -> torch.Tensor:
    """Class predictions (on the CPU) of ``model`` in eval mode; every module's mode is restored.

    Restoring each module (not just the top one): a model that shares modules with one still
    training (Opacus refuses a module left in eval mode) must get them back as they were.
    ``batch`` defaults to 64 on the CPU (cache-sized: 1.7x faster than 512 for the seed-001 net
    at one thread) and 512 elsewhere.
    """
    dev = device_of(model)
    batch = batch or (64 if dev.type == "cpu" else 512)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        parts = [model(images[s : s + batch].to(dev)).argmax(1).cpu()
                 for s in range(0, len(images), batch)]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)
    finally:
        for m, training in modes:
            m.training = training


def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int | None = None
) -> float:
    """Top-1 accuracy of ``model`` in eval mode (every module's mode restored after)."""
    pred = predict(model, images, batch)
    return int((pred == labels.cpu()).sum()) / max(1, images.shape[0])


@dataclass
class ClientData:
    """A simulated client's private data; it never leaves the simulation."""

    images: torch.Tensor
    labels: torch.Tensor
    train: dict[str, Any] = field(default_factory=dict)  # per-client local_update overrides


@dataclass(frozen=True)
class RoundResult:
    round: int
    clients: list[int]
    accuracy: float | None
    updates: dict[int, ClientUpdate]  # what each participating client sent (withheld: absent)
    withheld: list[int] = field(default_factory=list)


UpdateFilter = Callable[..., ClientUpdate]  # (update, *, generator) -> update
ClientCheck = Callable[[int, int, ClientUpdate, ClientData, nn.Module], ClientUpdate | None]


def round_generator(seed: int, round: int, salt: int = 0) -> torch.Generator:
    """A generator derived from (seed, round): rounds are reproducible in any order (resume)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + round * 7_919 + salt)


def federate(
    model: nn.Module,
    clients: Sequence[ClientData],
    *,
    rounds: int,
    clients_per_round: int | None = None,
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
    train: dict[str, Any] | None = None,
    seed: int = 0,
    filters: UpdateFilter | None = None,
    client_check: ClientCheck | None = None,
    on_update: Callable[[int, int, ClientUpdate, nn.Module], None] | None = None,
    start_round: int = 1,
    trainer: Callable[..., ClientUpdate] = local_update,
    device: str | torch.device | None = None,
) -> Iterator[RoundResult]:
    """Run an in-process federation, yielding one :class:`RoundResult` per round.

    ``model`` is trained in place (it is the server's global model). ``train`` holds the
    :func:`local_update` options shared by all clients; ``ClientData.train`` overrides them per
    client. Each client then applies ``filters`` to its outgoing update and, if given, runs
    ``client_check(round, client, update, data, global_model)``, which returns the update to
    send or ``None`` to withhold it. ``on_update(round, client, update, global_model)`` sees every
    update the server receives, with the global model the client started from (an audit's hook).
    ``start_round`` resumes a federation whose global model is already at that round.
    ``trainer`` replaces :func:`local_update` (same signature), e.g. a training-time defense.
    ``device`` moves ``model`` there first (default: where it is); clients train on the
    model's device, their data stays where it is and is moved batch-wise. On the CPU the model's
    conv weights are put in channels-last layout first (:func:`fedleak.device.fast_layout`).
    """
    if device is not None:
        model.to(resolve_device(device))
    fast_layout(model)
    if rounds < 1:
        raise ConfigError(f"`rounds` must be >= 1; got {rounds}.")
    per_round = clients_per_round or len(clients)
    for r in range(start_round, rounds + 1):
        chosen = sample_clients(len(clients), per_round, round_generator(seed, r))
        start = copy.deepcopy(model)
        updates: dict[int, ClientUpdate] = {}
        withheld: list[int] = []
        for c in chosen:
            opts = {**(train or {}), **clients[c].train}
            u = trainer(
                start,
                clients[c].images,
                clients[c].labels,
                seed=seed * 100_003 + r * 1_009 + c,
                client_id=str(c),
                round=r,
                **opts,
            )
            if filters is not None:
                from fedleak.defenses.filters import with_reference  # (a cycle at import time)

                gen = round_generator(seed, r, salt=1 + c)
                u = with_reference(filters, start)(u, generator=gen)
            if client_check is not None:
                checked = client_check(r, c, u, clients[c], start)
                if checked is None:
                    withheld.append(c)
                    continue
                u = checked
            if on_update is not None:
                on_update(r, c, u, start)
            updates[c] = u
        if updates:
            apply_update(model, aggregate(list(updates.values())), server_lr=_server_lr(updates))
        acc = evaluate(model, *test) if test is not None else None
        yield RoundResult(r, chosen, acc, updates, withheld)


def _server_lr(updates: dict[int, ClientUpdate]) -> float:
    """FedSGD gradients are applied with the clients' lr; FedAvg deltas as they are."""
    u = next(iter(updates.values()))
    if u.kind == "gradient":
        return u.training.lr if u.training and u.training.lr > 0 else 0.1
    return 1.0
