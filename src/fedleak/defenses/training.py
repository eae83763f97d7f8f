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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from fedleak.device import device_of
from fedleak.fl.client import (  # noqa: F401  (the local-training helpers, also importable here)
    LocalPlan,
    build_update,
    check_batch,
    local_batches,
    local_update,
    make_optimizer,
    plan_local,
    plan_optimizer,
    run_local_steps,
    set_bn_mode,
    trainable,
)
from fedleak.fl.server import ClientData
from fedleak.fl.update import ClientUpdate
from fedleak.registry import Registry, check_options, dataclass_options, init_options
from fedleak.registry import option_error as fail

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
        return {"name": self.name, **dataclass_options(self, lambda f: f.init)}


TRAINING_DEFENSES: Registry[type[TrainingDefense]] = Registry("training defense")
D = TypeVar("D", bound=type[TrainingDefense])


def register_training_defense(name: str, *, force: bool = False) -> Callable[[D], D]:
    """Class decorator: register a :class:`TrainingDefense` under ``name`` (sets ``cls.name``)."""
    return TRAINING_DEFENSES.register_class(name, force=force)


def available_training_defenses() -> list[str]:
    """Names accepted by :func:`make_training_defense`, sorted."""
    return TRAINING_DEFENSES.names()


def training_defense_options(name: str) -> list[str]:
    """The option names of the training defense ``name``."""
    return init_options(TRAINING_DEFENSES.get(name))


def make_training_defense(name: str, **options: Any) -> TrainingDefense:
    """Build the training defense registered as ``name`` from an options dict.

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists the valid names).
        ConfigError: an option is unknown to that defense or out of its range.
    """
    cls = TRAINING_DEFENSES.get(name)
    check_options(options, init_options(cls), f"make_training_defense({name!r})")
    return cls(**options)


# --- validation helpers shared by the defenses ---------------------------------------------
# (and ``fail``, fedleak.registry's option_error: the one error template)


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
    plan = plan_local(
        images, labels, protocol=protocol, local_epochs=local_epochs, local_steps=local_steps,
        batch_size=batch_size, lr=lr, optimizer=optimizer, momentum=momentum,
        weight_decay=weight_decay, betas=betas, bn_mode=bn_mode, shuffle=shuffle, seed=seed,
        client_id=client_id, round=round,
    )
    net = copy.deepcopy(model)
    images, labels = images.to(device_of(net)), labels.to(device_of(net))  # train where it lives
    if prepare is not None:
        prepare(net)
    set_bn_mode(net, bn_mode)
    names, params = trainable(net)
    if plan.protocol == "fedsgd":
        loss = objective(net, images, labels, 0)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        full = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]
        return build_update(net, names, full, kind="gradient", plan=plan, sizes=(plan.n,))

    def loss_of(idx: torch.Tensor, step: int) -> torch.Tensor:
        return objective(net, images[idx], labels[idx], step)

    deltas, sizes = run_local_steps(plan_optimizer(params, plan), params, plan, loss_of)
    return build_update(net, names, deltas, kind="delta", plan=plan, sizes=sizes)


# --- the undefended baseline -----------------------------------------------------------------


@register_training_defense("none")
@dataclass
class NoDefense(TrainingDefense):
    """The undefended baseline: plain :func:`local_update` (cross-entropy, no perturbation)."""

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, **train: Any
    ) -> ClientUpdate:
        return local_update(model, images, labels, **train)
