"""Sweep configuration: defenses x hyperparameter grid x seeds, from YAML/TOML, validated early.

Loaded with the audit config's ``from_dict`` (unknown keys rejected, types coerced, one-line
errors), then :meth:`SweepConfig.validate` builds every cell's defense once so a misspelt option
fails before hours of computing, not in the middle.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedleak._config_io import apply_overrides, read_config_file
from fedleak.attacks import ATTACKS
from fedleak.audit.config import from_dict
from fedleak.defenses import FILTERS, TRAINING_DEFENSES, make_filter, make_training_defense
from fedleak.defenses.knowledge import KNOWLEDGE, attack_for
from fedleak.device import resolve_device
from fedleak.engines.config import EngineConfig
from fedleak.errors import ConfigError, FedleakError
from fedleak.models import MODELS

__all__ = [
    "AttackSpec",
    "Cell",
    "DefenseSpec",
    "SemanticConfig",
    "SweepAttackConfig",
    "SweepConfig",
    "SweepDataConfig",
    "SweepFLConfig",
    "SweepModelConfig",
    "load_sweep_config",
]

# local_update options a defense may override for its own training (e.g. DP-SGD with SGD)
TRAIN_KEYS = (
    "lr", "optimizer", "momentum", "weight_decay", "local_epochs", "local_steps", "batch_size",
)


@dataclass
class SweepDataConfig:
    """Which images, how many clients and how many images each holds (an IID split)."""

    name: str = "mnist-5k"  # built-in name or FORMAT:PATH (cifar10:DIR, medmnist:FILE.npz)
    size: int | None = 16
    channels: int | None = None
    clients: int = 4
    images_per_client: int = 250
    test_images: int | None = None  # evaluate on at most this many test images (None: all)


@dataclass
class SweepModelConfig:
    name: str = "latent-net"
    options: dict[str, Any] = field(default_factory=lambda: {"width": 8, "pool": 2})


@dataclass
class SweepFLConfig:
    """The federation that measures utility (FedAvg; the paper uses Adam except for DP-SGD)."""

    rounds: int = 5
    clients_per_round: int | None = None
    local_epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.0
    # stop rule for comparisons at matched utility: stop after the first round at which client
    # 0's test accuracy reaches this (``rounds`` is then the cap); None: train ``rounds`` rounds
    target_accuracy: float | None = None


@dataclass
class AttackSpec:
    name: str = "inverting-gradients"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepAttackConfig:
    """The leakage probe: one client's update on ``num_images`` images, then an attack on it.

    ``round``: the victim trains from the global model at the start of this round (1: the
    initial model; ``fl.rounds + 1``: the final one). ``batch_size`` None: all images in one
    batch, so ``local_epochs`` local steps (the paper: 8 images, 5 epochs).
    """

    name: str = "inverting-gradients"
    options: dict[str, Any] = field(default_factory=lambda: {"iterations": 300})
    extra: list[AttackSpec] = field(default_factory=list)
    num_images: int = 8
    local_epochs: int = 5
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    round: int = 1
    threat: str = "C"
    grant_labels: bool = True
    # what the attacker knows of a latent-noise client's perturbation, one attack per entry
    # (fedleak.defenses.knowledge): none (the paper's, default), distribution, exact, adaptive
    knowledge: list[str] = field(default_factory=lambda: ["none"])
    batches: int = 1  # probe this many disjoint batches of num_images (averaged in the record)


@dataclass
class SemanticConfig:
    """The classifier trained WITHOUT defense that labels the reconstructions (seed 001)."""

    enabled: bool = True
    model: str = "convnet"
    options: dict[str, Any] = field(
        default_factory=lambda: {"widths": [16, 32, 64], "pool_after": [0, 1]}
    )
    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-3


@dataclass
class DefenseSpec:
    """One defense of the grid: a training defense or an update filter, by name.

    ``grid`` maps option names to the values to sweep (their product makes the cells); a key
    ``"a,b"`` sweeps two options together with values ``[[a1, b1], [a2, b2]]`` (BiDO's pairs);
    ``options`` are fixed options; ``train`` overrides the federation's local training for this
    defense (e.g. ``{optimizer: sgd, lr: 0.05}`` for DP-SGD); ``label`` names the curve in tables
    and plots (default: ``name``), so two variants of one defense get two curves.
    """

    name: str
    grid: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    label: str | None = None


@dataclass(frozen=True)
class Cell:
    """One unit of work: a defense with concrete parameters and a seed."""

    id: str
    index: int  # position of the defense in ``defenses``
    defense: str  # label
    method: str  # registry name
    params: dict[str, Any]
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _default_defenses() -> list[DefenseSpec]:
    return [DefenseSpec("none")]


@dataclass
class SweepConfig:
    data: SweepDataConfig = field(default_factory=SweepDataConfig)
    model: SweepModelConfig = field(default_factory=SweepModelConfig)
    fl: SweepFLConfig = field(default_factory=SweepFLConfig)
    attack: SweepAttackConfig = field(default_factory=SweepAttackConfig)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    defenses: list[DefenseSpec] = field(default_factory=_default_defenses)
    seeds: list[int] = field(default_factory=lambda: [0])
    engine: EngineConfig = field(default_factory=EngineConfig)  # where the cells run
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps, for every cell

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepConfig:
        """Build and validate from a plain mapping (e.g. parsed YAML)."""
        if not isinstance(data, dict):
            raise ConfigError(f"a sweep config must be a mapping; got {type(data).__name__}.")
        return from_dict(cls, data).validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> SweepConfig:
        """Check ranges, names and every cell's options before anything runs."""
        d, fl, atk = self.data, self.fl, self.attack
        resolve_device(self.device)  # an unknown or absent device fails here, in one line
        for where, v in (
            ("data.clients", d.clients), ("data.images_per_client", d.images_per_client),
            ("fl.rounds", fl.rounds), ("fl.local_epochs", fl.local_epochs),
            ("fl.batch_size", fl.batch_size), ("attack.num_images", atk.num_images),
            ("attack.local_epochs", atk.local_epochs), ("semantic.epochs", self.semantic.epochs),
            ("semantic.batch_size", self.semantic.batch_size),
        ):
            if v < 1:
                raise ConfigError(f"`{where}` must be >= 1; got {v}.")
        if fl.clients_per_round is not None and not 1 <= fl.clients_per_round <= d.clients:
            raise ConfigError(
                f"`fl.clients_per_round` must be between 1 and {d.clients}; "
                f"got {fl.clients_per_round}."
            )
        if not (fl.lr > 0):
            raise ConfigError(f"`fl.lr` must be > 0; got {fl.lr}.")
        if fl.target_accuracy is not None and not (
            isinstance(fl.target_accuracy, int | float) and 0 < fl.target_accuracy <= 1
        ):
            raise ConfigError(
                "`fl.target_accuracy` must be a number in (0, 1] or null; "
                f"got {fl.target_accuracy!r}."
            )
        if fl.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"`fl.optimizer` must be 'sgd' or 'adam'; got {fl.optimizer!r}.")
        if atk.batches < 1:
            raise ConfigError(f"`attack.batches` must be >= 1; got {atk.batches}.")
        if atk.num_images * atk.batches > d.images_per_client:
            raise ConfigError(
                f"`attack.num_images` x `attack.batches` ({atk.num_images * atk.batches}) must "
                f"not exceed `data.images_per_client` ({d.images_per_client}): the victim is "
                "client 0."
            )
        if not atk.knowledge or len(set(atk.knowledge)) != len(atk.knowledge):
            raise ConfigError(
                f"`attack.knowledge` must be a non-empty list of distinct settings; "
                f"got {atk.knowledge!r}."
            )
        for k in atk.knowledge:
            if k not in KNOWLEDGE:
                raise ConfigError(
                    f"`attack.knowledge` entries must be one of {', '.join(KNOWLEDGE)}; got {k!r}."
                )
            attack_for(k, atk.name, atk.options)
        if not 1 <= atk.round <= fl.rounds + 1:
            raise ConfigError(
                f"`attack.round` must be between 1 and fl.rounds + 1 = {fl.rounds + 1}; "
                f"got {atk.round}."
            )
        if atk.threat not in ("A", "B", "C", "D", "E"):
            raise ConfigError(f"`attack.threat` must be one of A-E; got {atk.threat!r}.")
        for where, spec in [("attack", atk), *((f"attack.extra[{i}]", s)
                                               for i, s in enumerate(atk.extra))]:
            if spec.name not in ATTACKS:
                raise ConfigError(
                    f"`{where}.name` must be one of {', '.join(ATTACKS.names())}; "
                    f"got {spec.name!r}."
                )
            try:
                ATTACKS.get(spec.name).create(**spec.options)
            except (FedleakError, TypeError) as exc:
                raise ConfigError(f"`{where}.options`: {exc}") from None
        names = (("model.name", self.model.name), ("semantic.model", self.semantic.model))
        for where, name in names:
            if name not in MODELS:
                raise ConfigError(
                    f"`{where}` must be one of {', '.join(MODELS.names())}; got {name!r}."
                )
        if not self.defenses:
            raise ConfigError("`defenses` must list at least one defense (e.g. name: none).")
        if not self.seeds:
            raise ConfigError("`seeds` must list at least one seed.")
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ConfigError(f"`seeds` must be distinct ints >= 0; got {self.seeds!r}.")
        labels = [spec.label or spec.name for spec in self.defenses]
        for i, spec in enumerate(self.defenses):
            where = f"defenses[{i}]"
            for key, values in spec.grid.items():
                if not isinstance(values, list) or not values:
                    raise ConfigError(
                        f"`{where}.grid.{key}` must be a non-empty list of values; got {values!r}."
                    )
                names = _grid_names(key)
                if len(names) > 1 and any(
                    not isinstance(v, list) or len(v) != len(names) for v in values
                ):
                    raise ConfigError(
                        f"`{where}.grid.{key}` zips {len(names)} options: each value must be a "
                        f"list of {len(names)}; got {values!r}."
                    )
                both = sorted(set(names) & set(spec.options))
                if both:
                    raise ConfigError(f"`{where}`: `{both[0]}` is both in `grid` and in `options`.")
            bad = sorted(set(spec.train) - set(TRAIN_KEYS))
            if bad:
                raise ConfigError(
                    f"`{where}.train.{bad[0]}` is not a training option; valid: "
                    f"{', '.join(TRAIN_KEYS)}."
                )
            if labels.count(labels[i]) > 1 and spec.label is None:
                raise ConfigError(
                    f"`{where}`: defense {spec.name!r} appears twice; give each a `label`."
                )
        if len(set(labels)) != len(labels):
            raise ConfigError(f"`defenses` labels must be distinct; got {labels!r}.")
        for cell in self.cells():
            build_defense(self.defenses[cell.index], cell.params, where=f"cell {cell.id!r}")
        self.engine.validate()
        return self

    def cells(self) -> list[Cell]:
        """Every (defense, parameter combination, seed), in config order."""
        out: list[Cell] = []
        for i, spec in enumerate(self.defenses):
            keys = list(spec.grid)
            combos = itertools.product(*(spec.grid[k] for k in keys)) if keys else [()]
            for combo in combos:
                params: dict[str, Any] = {}
                for key, value in zip(keys, combo, strict=True):
                    names = _grid_names(key)
                    params.update(zip(names, value if len(names) > 1 else [value], strict=True))
                for seed in self.seeds:
                    label = spec.label or spec.name
                    cid = cell_id(label, params, seed)
                    out.append(Cell(cid, i, label, spec.name, params, seed))
        ids = [c.id for c in out]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ConfigError(f"two cells share the id {dup!r}; remove the duplicate grid value.")
        return out


def _grid_names(key: str) -> list[str]:
    """``"a,b"`` sweeps options a and b together (zipped values); ``"a"`` sweeps one."""
    return [k.strip() for k in key.split(",")]


def cell_id(label: str, params: dict[str, Any], seed: int) -> str:
    """A readable, stable id: ``label[key=value,...]#seed``."""
    inner = ",".join(f"{k}={json.dumps(params[k], sort_keys=True)}" for k in sorted(params))
    return f"{label}[{inner}]#s{seed}"


def slug(text: str) -> str:
    """A file-name-safe form of a cell id."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")[:120]


def build_defense(spec: DefenseSpec, params: dict[str, Any], *, where: str = "defense") -> Any:
    """The training defense or update filter of ``spec`` with ``params``; ConfigError if bad."""
    options = {**spec.options, **params}
    try:
        if spec.name in TRAINING_DEFENSES:
            return make_training_defense(spec.name, **options)
        if spec.name in FILTERS:
            return make_filter(spec.name, **options)
    except (FedleakError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    valid = sorted({*TRAINING_DEFENSES.names(), *FILTERS.names()})
    raise ConfigError(f"{where}: unknown defense {spec.name!r}; available: {', '.join(valid)}.")


def load_sweep_config(
    source: str | Path | dict[str, Any] | SweepConfig | None,
    overrides: list[str] | None = None,
) -> SweepConfig:
    """A validated SweepConfig from a YAML/TOML file, a mapping, a SweepConfig or defaults.

    ``overrides`` are ``section.key=value`` strings (values parsed as JSON when they can be),
    as for ``fedleak audit``.
    """
    if isinstance(source, SweepConfig):
        if not overrides:
            return source.validate()
        data: dict[str, Any] = source.to_dict()
    elif isinstance(source, dict):
        data = json.loads(json.dumps(source))
    elif source is None:
        data = {}
    else:
        data = read_config_file(source, "sweep config")
    apply_overrides(data, overrides)
    return SweepConfig.from_dict(data)
