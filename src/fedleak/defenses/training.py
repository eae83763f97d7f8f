"""Training-time defenses: client trainers that change *how* a client trains, not what it sends.

A training-time defense is a drop-in replacement for :func:`fedleak.fl.local_update`: it is
called with the same arguments (so ``federate(trainer=defense)`` works) and returns an ordinary
:class:`~fedleak.fl.ClientUpdate`: the server, and the attacker, see nothing but that. Why a
separate kind from the update filters: these defenses act inside local training (a different
loss, per-sample clipping, mixed inputs, a latent noise layer), which no filter on the finished
update can do.

Defenses keep per-client state between rounds (a DP accountant, a local decoder, learned noise),
keyed by the ``client_id`` the federation passes. Each may also adapt the architecture
(:meth:`TrainingDefense.prepare_model`, e.g. BatchNorm -> GroupNorm for DP-SGD), run a local
stage before federated training (:meth:`TrainingDefense.setup`, e.g. seed 001's noise
pre-training), and give a client's personal view of the global model
(:meth:`TrainingDefense.client_model`) for utility measurements.

Registered by name in :data:`TRAINING_DEFENSES`; build one with :func:`make_training_defense`.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from fedleak.errors import ConfigError, DataError
from fedleak.fl.client import bn_buffers, bn_momentum, local_update
from fedleak.fl.server import ClientData
from fedleak.fl.update import ClientUpdate, TrainingConfig
from fedleak.registry import Registry

__all__ = [
    "TRAINING_DEFENSES",
    "NoDefense",
    "TrainingDefense",
    "available_training_defenses",
    "local_training",
    "make_training_defense",
    "register_training_defense",
]

# A loss over one local batch: (net, images, labels, step) -> scalar; may do side work (a
# decoder step) before returning the loss the shared model is trained on.
Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor]


class TrainingDefense(ABC):
    """Base of the registered training-time defenses (mutable dataclasses of options + state).

    Subclasses are ``@dataclass`` classes whose init fields are the options; per-client state
    lives in fields declared with ``init=False``. ``__call__`` has :func:`local_update`'s
    signature.
    """

    name: ClassVar[str] = ""

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The global model this defense trains (a changed copy where the architecture changes).

        Default: ``model`` itself. Call it once on the global model before federating.
        """
        return model

    def setup(self, model: nn.Module, clients: Sequence[ClientData], *, seed: int = 0) -> None:  # noqa: B027
        """A local stage before federated training (default: nothing).

        ``clients[i]`` is the client that the federation will call with ``client_id=str(i)``.
        """

    @abstractmethod
    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, **train: Any
    ) -> ClientUpdate:
        """Train a copy of ``model`` on the client's data; return what the client sends."""

    def client_model(self, model: nn.Module, client_id: str | None = None) -> nn.Module:
        """The model as client ``client_id`` uses it (e.g. with its private noise)."""
        return model

    def accounting(self, client_id: str | None = None) -> dict[str, Any]:
        """Privacy accounting of one client so far (empty for defenses without a guarantee)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """The defense's name and options as plain data (``make_training_defense(**d)`` works)."""
        out: dict[str, Any] = {"name": self.name}
        for f in fields(self):  # type: ignore[arg-type]
            if f.init:
                value = getattr(self, f.name)
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


TRAINING_DEFENSES: Registry[type[TrainingDefense]] = Registry("training defense")
D = TypeVar("D", bound=type[TrainingDefense])


def register_training_defense(name: str, *, force: bool = False) -> Callable[[D], D]:
    """Class decorator: register a :class:`TrainingDefense` under ``name`` (sets ``cls.name``)."""

    def deco(cls: D) -> D:
        cls.name = name
        TRAINING_DEFENSES.add(name, cls, force=force)
        return cls

    return deco


def available_training_defenses() -> list[str]:
    """Names accepted by :func:`make_training_defense`, sorted."""
    return TRAINING_DEFENSES.names()


def training_defense_options(name: str) -> list[str]:
    """The option names of the training defense ``name``."""
    cls = TRAINING_DEFENSES.get(name)
    return sorted(f.name for f in fields(cls) if f.init)  # type: ignore[arg-type]


def make_training_defense(name: str, **options: Any) -> TrainingDefense:
    """Build the training defense registered as ``name`` from an options dict.

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists the valid names).
        ConfigError: an option is unknown to that defense or out of its range.
    """
    cls = TRAINING_DEFENSES.get(name)
    known = training_defense_options(name)
    for key in options:
        if key not in known:
            raise ConfigError(
                f"`{key}` of make_training_defense({name!r}) must be one of its options "
                f"({', '.join(known) or 'none'}); got {options[key]!r}."
            )
    return cls(**options)


# --- validation helpers shared by the defenses ---------------------------------------------


def fail(param: str, caller: str, constraint: str, value: Any) -> ConfigError:
    """The one error template: "`param` of caller must be constraint; got value."."""
    return ConfigError(f"`{param}` of {caller} must be {constraint}; got {value!r}.")


def check_number(
    value: Any,
    param: str,
    caller: str,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
) -> float:
    """A finite real number in [low, high] (``low_open``: (low, high])."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        lo = "(" if low_open else "["
        raise fail(param, caller, f"a finite number in {lo}{low}, {high}]", value)
    return float(value)


def check_positive_int(value: Any, param: str, caller: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise fail(param, caller, f"an int >= {minimum}", value)
    return value


# --- the local training loop the defenses share ---------------------------------------------


def check_batch(images: torch.Tensor, labels: torch.Tensor) -> None:
    """The client data checks of :func:`local_update`, for trainers that do not call it."""
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

    The same schedule as :func:`local_update`, so an attacker who replays the client's steps
    from the update's metadata sees the same batch split.
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
    """The checked local-training schedule: protocol, batch size, number of steps."""

    protocol: str
    batch_size: int
    steps: int
    local_epochs: int | None


def plan_local(
    n: int,
    *,
    protocol: str,
    local_epochs: int | None,
    local_steps: int | None,
    batch_size: int | None,
    lr: float,
    bn_mode: str,
) -> LocalPlan:
    """Validate :func:`local_update`'s schedule arguments (same messages) and count the steps."""
    if protocol not in ("fedsgd", "fedavg"):
        raise ConfigError(f"`protocol` must be 'fedsgd' or 'fedavg'; got {protocol!r}.")
    if bn_mode not in ("train", "eval"):
        raise ConfigError(f"`bn_mode` must be 'train' or 'eval'; got {bn_mode!r}.")
    if protocol == "fedsgd":
        if local_epochs not in (None, 1) or local_steps not in (None, 1):
            raise ConfigError("FedSGD sends one gradient: `local_epochs`/`local_steps` must be 1.")
        return LocalPlan("fedsgd", n, 1, None)
    b = batch_size or n
    if b < 1:
        raise ConfigError(f"`batch_size` must be >= 1; got {b}.")
    if local_steps is not None and local_epochs is not None:
        raise ConfigError("give `local_epochs` or `local_steps`, not both.")
    total = local_steps if local_steps is not None else (local_epochs or 1) * math.ceil(n / b)
    if total < 1:
        raise ConfigError(f"`local_steps`/`local_epochs` must be >= 1; got {total}.")
    if not (lr > 0):
        raise ConfigError(f"`lr` must be > 0 for FedAvg; got {lr!r}.")
    return LocalPlan("fedavg", b, total, local_epochs if local_steps is None else None)


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


def trainable(net: nn.Module) -> tuple[list[str], list[nn.Parameter]]:
    """Names and parameters the client trains and sends (``requires_grad``), in module order."""
    pairs = [(k, p) for k, p in net.named_parameters() if p.requires_grad]
    return [k for k, _ in pairs], [p for _, p in pairs]


def build_update(
    net: nn.Module,
    names: list[str],
    tensors: list[torch.Tensor],
    *,
    kind: str,
    n: int,
    plan: LocalPlan,
    sizes: Sequence[int],
    lr: float,
    optimizer: str,
    momentum: float,
    weight_decay: float,
    betas: tuple[float, float],
    bn_mode: str,
    shuffle: bool,
    client_id: str | None,
    round: int | None,
) -> ClientUpdate:
    """The ClientUpdate with the metadata a real client ships (what :func:`local_update` sends)."""
    training = TrainingConfig(
        protocol=plan.protocol,  # type: ignore[arg-type]
        lr=lr,
        local_steps=plan.steps,
        local_epochs=plan.local_epochs,
        batch_size=plan.batch_size,
        batch_sizes=tuple(sizes),
        optimizer=optimizer if plan.protocol == "fedavg" else "sgd",  # type: ignore[arg-type]
        momentum=momentum if plan.protocol == "fedavg" else 0.0,
        weight_decay=weight_decay if plan.protocol == "fedavg" else 0.0,
        betas=betas,
        bn_mode=bn_mode,  # type: ignore[arg-type]
        bn_momentum=bn_momentum(net),
        shuffle=shuffle if plan.protocol == "fedavg" else False,
    )
    return ClientUpdate(
        kind=kind,  # type: ignore[arg-type]
        tensors={k: t.detach() for k, t in zip(names, tensors, strict=True)},
        buffers=bn_buffers(net),
        num_samples=n,
        training=training,
        client_id=client_id,
        round=round,
    )


def local_training(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    objective: Objective,
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
    prepare: Callable[[nn.Module], None] | None = None,
) -> ClientUpdate:
    """:func:`local_update` with the loss replaced by ``objective(net, x, y, step)``.

    The schedule, optimizers, metadata and validation are :func:`local_update`'s; the defenses
    built on it (latent perturbation, BiDO, MixUp) only supply their loss. ``prepare(net)`` runs
    on the private copy before training (e.g. to load a client's own noise parameters).
    FedSGD sends the gradient of ``objective`` on the whole batch.
    """
    check_batch(images, labels)
    n = images.shape[0]
    plan = plan_local(
        n, protocol=protocol, local_epochs=local_epochs, local_steps=local_steps,
        batch_size=batch_size, lr=lr, bn_mode=bn_mode,
    )
    net = copy.deepcopy(model)
    if prepare is not None:
        prepare(net)
    set_bn_mode(net, bn_mode)
    names, params = trainable(net)
    common = dict(
        n=n, plan=plan, lr=lr, optimizer=optimizer, momentum=momentum,
        weight_decay=weight_decay, betas=betas, bn_mode=bn_mode, shuffle=shuffle,
        client_id=client_id, round=round,
    )
    if plan.protocol == "fedsgd":
        loss = objective(net, images, labels, 0)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        full = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]
        return build_update(net, names, full, kind="gradient", sizes=(n,), **common)

    opt = make_optimizer(
        params, optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay, betas=betas
    )
    before = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(seed)
    sizes: list[int] = []
    for step, idx in enumerate(local_batches(n, plan.batch_size, plan.steps, shuffle, gen)):
        opt.zero_grad(set_to_none=True)
        objective(net, images[idx], labels[idx], step).backward()
        opt.step()
        sizes.append(len(idx))
    deltas = [p.detach() - p0 for p, p0 in zip(params, before, strict=True)]
    return build_update(net, names, deltas, kind="delta", sizes=sizes, **common)


# --- the undefended baseline -----------------------------------------------------------------


@register_training_defense("none")
@dataclass
class NoDefense(TrainingDefense):
    """The undefended baseline: plain :func:`local_update` (cross-entropy, no perturbation)."""

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, **train: Any
    ) -> ClientUpdate:
        return local_update(model, images, labels, **train)
