"""What every attack shares: the registry, what an attack is given, what it returns.

An attack is a frozen dataclass of its hyperparameters with a ``reconstruct(inputs)`` method.
It declares the knowledge it ``requires``; the front door checks that against the threat model
before anything runs. Ground truth never reaches an attack: simulations that know the truth
observe progress through the ``callback`` and score afterwards.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from fedleak.attacks.fit import FitCheck, FitTerms
from fedleak.device import device_of, generator_for
from fedleak.errors import ConfigError
from fedleak.fl.threat import ThreatModel
from fedleak.fl.update import ClientUpdate
from fedleak.registry import Registry


@dataclass(frozen=True)
class Checkpoint:
    """Progress of an attack, handed to the caller's callback every few iterations."""

    iteration: int
    loss: float  # best attack loss over restarts so far
    images: torch.Tensor  # (N, C, H, W) current best candidate (or consensus), detached


@dataclass(frozen=True)
class Reconstruction:
    """The result of an attack.

    Attributes:
        images: (N, C, H, W) in [0, 1], the restart with the lowest attack loss (or, under
            Inverting Gradients' ``select="mean"``, the restarts' consensus).
        labels: (N,) class indices the attack used or recovered (None if it has none).
        loss_history: attack loss of the chosen restart, one value per iteration.
        restart_losses: final (best) attack loss of each restart; ``best_restart`` indexes it.
        restart_images: (R, N, C, H, W) every restart's final (best) images, in the order of
            ``restart_losses`` (``images`` is ``restart_images[best_restart]``, or under
            ``select="mean"`` their consensus), so users can see what restart selection did;
            None for attacks without restarts.
        label_method: where the labels came from ("granted", "idlg", "count", "joint", ...).
        fit: the fit check (:mod:`fedleak.attacks.fit`), set by the front door after the attack.
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    attack: str
    threat_level: str
    loss_history: list[float]
    restart_losses: list[float]
    best_restart: int
    iterations: int
    seconds: float
    label_method: str = "none"
    extras: dict[str, Any] = field(default_factory=dict)
    fit: FitCheck | None = None
    restart_images: torch.Tensor | None = None

    @property
    def iterations_per_second(self) -> float:
        return self.iterations / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> dict[str, Any]:
        """JSON-ready description without the images."""
        return {
            "attack": self.attack,
            "threat_level": self.threat_level,
            "num_images": int(self.images.shape[0]),
            "labels": None if self.labels is None else self.labels.tolist(),
            "label_method": self.label_method,
            "final_loss": self.restart_losses[self.best_restart] if self.restart_losses else None,
            "restart_losses": self.restart_losses,
            "best_restart": self.best_restart,
            "iterations": self.iterations,
            "seconds": round(self.seconds, 3),
            "iterations_per_second": round(self.iterations_per_second, 2),
            **{k: v for k, v in self.extras.items() if isinstance(v, int | float | str | bool)},
            "fit": None if self.fit is None else self.fit.to_dict(),
        }


@dataclass(frozen=True)
class AttackInputs:
    """Everything an attack may use: the attacker's view, never the client's data.

    ``model`` is a private copy of the global model (parameters frozen) that the attack may use
    freely; ``update`` has already been filtered through ``threat.view``.
    """

    model: nn.Module
    update: ClientUpdate
    threat: ThreatModel
    num_images: int
    image_shape: tuple[int, int, int]
    num_classes: int
    labels: torch.Tensor | None
    label_method: str
    seed: int = 0
    callback: Callable[[Checkpoint], None] | None = None
    checkpoint_every: int = 100
    progress: Callable[[int, float], None] | None = None  # (iterations done, current loss)
    memory_budget: float | int | None = None  # fraction of free memory or bytes (device.py)

    @property
    def device(self) -> torch.device:
        """Where the attack runs: the model's device (every tensor it creates lives there)."""
        return device_of(self.model)

    def generator(self) -> torch.Generator:
        """The attack's seeded generator, on the model's device (reproducible per device)."""
        return generator_for(self.device, self.seed)


class Attack(ABC):
    """Base class of all attacks. Subclasses are frozen dataclasses of hyperparameters."""

    name: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset({"architecture"})
    #: whether the front door should provide labels (granted, or recovered from the update)
    uses_labels: ClassVar[bool] = True
    #: update kinds the attack handles
    handles: ClassVar[frozenset[str]] = frozenset({"gradient", "delta"})

    @abstractmethod
    def reconstruct(self, inputs: AttackInputs) -> Reconstruction:
        """Rebuild the client's images from ``inputs`` alone."""

    def objective_at(
        self, inputs: AttackInputs, images: torch.Tensor, labels: torch.Tensor | None
    ) -> FitTerms | None:
        """The attack's objective and matching residual at candidate ``images`` (N, C, H, W).

        Used by the fit check, after the attack, at the reconstruction and (in simulations) at
        the truth; it must evaluate exactly the objective the attack minimized, with
        ``labels`` (N,) in place of the attack's own. None: the attack has no such objective.
        """
        return None

    @classmethod
    def options(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []

    @classmethod
    def create(cls, **options: Any) -> Attack:
        """Build the attack, turning unknown options into a clear error."""
        valid = cls.options()
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ConfigError(
                f"attack {cls.name!r} has no option {', '.join(map(repr, unknown))}; "
                f"valid options: {', '.join(valid) or 'none'}."
            )
        return cls(**options)


ATTACKS: Registry[type[Attack]] = Registry("attack")


def register_attack(name: str, *, force: bool = False) -> Callable[[type[Attack]], type[Attack]]:
    """Class decorator: register an attack under ``name`` (also sets ``cls.name``)."""
    return ATTACKS.register_class(name, force=force)


def available_attacks() -> list[str]:
    return ATTACKS.names()
