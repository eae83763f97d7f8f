"""Audit configuration: dataclasses loaded from YAML or TOML, validated with one-line errors.

Every field can be overridden from the command line as ``section.field=value``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedleak._config_io import apply_overrides, read_config_file
from fedleak.device import resolve_device
from fedleak.engines.config import EngineConfig
from fedleak.errors import ConfigError

TASKS = ("classification", "diffusion")
DIFFUSION_ATTACKS = ("diffusion-ig", "gidm", "gidm-plus")


@dataclass
class DataConfig:
    name: str = "lfw-faces"  # built-in name or FORMAT:PATH
    size: int | None = 32
    channels: int | None = None


@dataclass
class ModelConfig:
    name: str | None = None  # default: "convnet" (classification) or "unet" (diffusion)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DiffusionConfig:
    """A diffusion federation (``task: diffusion``, seed 002): clients train a DDPM UNet."""

    schedule: str = "cosine:16"  # "<linear|cosine>:<T>"
    prediction: str = "v"  # "v" or "eps"
    share_noise: bool = False  # clients send their eps and t in the clear
    prior_model: str | None = None  # the attacker's prior (gidm, gidm-plus); None: train one
    prior_steps: int = 1000  # steps of that training, on the public split


@dataclass
class ClientSpec:
    """One client's local data size and training (unset fields fall back to ``train``)."""

    images: int = 8
    batch_size: int | None = None
    local_epochs: int | None = None
    local_steps: int | None = None
    lr: float | None = None


@dataclass
class FederationConfig:
    rounds: int = 5
    clients: list[ClientSpec] = field(
        default_factory=lambda: [ClientSpec(images=n) for n in (1, 4, 8, 16)]
    )
    clients_per_round: int | None = None
    train: dict[str, Any] = field(
        default_factory=lambda: {
            "protocol": "fedavg",
            "lr": 0.01,
            "local_epochs": 1,
            "batch_size": 4,
            "optimizer": "sgd",
            "bn_mode": "train",
        }
    )


@dataclass
class FilterSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class AuditSchedule:
    every: int = 1  # audit every k rounds ...
    start: int = 1  # ... from round s
    clients: list[int] | str = "all"
    attack: str | None = None  # default: "inverting-gradients", or "diffusion-ig" (diffusion)
    options: dict[str, Any] = field(default_factory=dict)
    threat: str = "C"
    grant_labels: bool = False
    prior: str = "mean"  # RDLV reference: "mean" of public data, "none", or an image file
    attacker_prior: bool = False  # also give the prior to the attacker (needs threat >= D)


@dataclass
class SelfCheckConfig:
    """The client's own leakage check (NVFlare-style filter, seed 000)."""

    enabled: bool = False
    attack: str = "inverting-gradients"
    options: dict[str, Any] = field(default_factory=dict)
    every: int = 1
    start: int = 1
    rdlv_threshold: float | None = 0.0
    ssim_threshold: float | None = None
    action: str = "withhold"  # "withhold" (send nothing) or "empty" (send a zero update)


@dataclass
class AuditConfig:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps (fedleak.device.resolve_device)
    task: str = "classification"  # or "diffusion"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    filters: list[FilterSpec] = field(default_factory=list)
    audit: AuditSchedule = field(default_factory=AuditSchedule)
    selfcheck: SelfCheckConfig = field(default_factory=SelfCheckConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)  # where the attacks run

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> AuditConfig:
        """Check the ranges and combinations the run needs, before anything runs."""
        fed, aud, sc = self.federation, self.audit, self.selfcheck
        resolve_device(self.device)  # an unknown or absent device fails here, in one line
        if self.task not in TASKS:
            raise ConfigError(f"`task` must be one of {', '.join(TASKS)}; got {self.task!r}.")
        diffusion = self.task == "diffusion"
        self.model.name = self.model.name or ("unet" if diffusion else "convnet")
        aud.attack = aud.attack or ("diffusion-ig" if diffusion else "inverting-gradients")
        if diffusion:
            self._validate_diffusion()
        if fed.rounds < 1:
            raise ConfigError(f"`federation.rounds` must be >= 1; got {fed.rounds}.")
        if not fed.clients:
            raise ConfigError("`federation.clients` must list at least one client.")
        for i, c in enumerate(fed.clients):
            if c.images < 1:
                raise ConfigError(f"`federation.clients[{i}].images` must be >= 1; got {c.images}.")
        n = len(fed.clients)
        if fed.clients_per_round is not None and not 1 <= fed.clients_per_round <= n:
            raise ConfigError(
                f"`federation.clients_per_round` must be between 1 and {n}; "
                f"got {fed.clients_per_round}."
            )
        for name, v in (
            ("audit.every", aud.every),
            ("audit.start", aud.start),
            ("selfcheck.every", sc.every),
            ("selfcheck.start", sc.start),
        ):
            if v < 1:
                raise ConfigError(f"`{name}` must be >= 1; got {v}.")
        if isinstance(aud.clients, str):
            if aud.clients != "all":
                raise ConfigError(
                    f"`audit.clients` must be 'all' or a list of client indices; "
                    f"got {aud.clients!r}."
                )
        elif any(not 0 <= c < n for c in aud.clients):
            raise ConfigError(
                f"`audit.clients` must be indices in [0, {n - 1}]; got {aud.clients!r}."
            )
        if aud.attacker_prior and aud.threat < "D":
            raise ConfigError(
                "`audit.attacker_prior` gives the attacker surrogate data: it needs "
                f"`audit.threat` D or E; got {aud.threat!r}."
            )
        if sc.action not in ("withhold", "empty"):
            raise ConfigError(
                f"`selfcheck.action` must be 'withhold' or 'empty'; got {sc.action!r}."
            )
        if sc.enabled and sc.rdlv_threshold is None and sc.ssim_threshold is None:
            raise ConfigError("the self-check needs `rdlv_threshold` or `ssim_threshold`.")
        self.engine.validate(("local", "ray", "flower"))
        if not diffusion:
            self._validate_training()
            self._validate_generative()
        self._validate_attacks()
        return self

    def _validate_training(self) -> None:
        """Types of ``federation.train`` and each client's schedule, checked on its image count.

        Runs the client's own schedule check on placeholder tensors of its size, so a bad value
        stops the audit here instead of after the federation has started.
        """
        import torch

        from fedleak.fl.client import local_update, plan_local

        fed = self.federation
        hints = typing.get_type_hints(local_update)
        allowed = sorted(set(hints) - {"model", "images", "labels", "seed", "client_id",
                                       "round", "return"})
        for key, value in list(fed.train.items()):
            if key not in allowed:
                raise ConfigError(
                    f"unknown key `federation.train.{key}`; valid keys: {', '.join(allowed)}."
                )
            fed.train[key] = _convert(value, hints[key], f"federation.train.{key}")
        defaults = {
            k: p.default
            for k, p in inspect.signature(local_update).parameters.items()
            if k in allowed
        }
        for i, c in enumerate(fed.clients):
            where = f"federation.clients[{i}]"
            if c.batch_size is not None and not 1 <= c.batch_size <= c.images:
                raise ConfigError(
                    f"`{where}.batch_size` must be between 1 and the client's {c.images} "
                    f"images; got {c.batch_size}."
                )
            own = {k: v for k, v in dataclasses.asdict(c).items() if k != "images" and v}
            if "local_steps" in own:
                own["local_epochs"] = None
            opts = {**defaults, **fed.train, **own, "seed": 0, "client_id": None, "round": None}
            try:
                plan_local(torch.zeros(c.images, 1, 1, 1), torch.zeros(c.images, dtype=torch.long),
                           **opts)
            except ConfigError as exc:
                raise ConfigError(f"`{where}` (with `federation.train`): {exc}") from None
            if opts.get("optimizer") not in ("sgd", "adam"):
                raise ConfigError(
                    f"`federation.train.optimizer` must be 'sgd' or 'adam'; "
                    f"got {opts.get('optimizer')!r}."
                )

    def _validate_attacks(self) -> None:
        """The attacks' options against their schemas, and their needs against the threat level."""
        from fedleak.attacks import ATTACKS
        from fedleak.fl.threat import ThreatModel

        for where, name, options, level in (
            ("audit", self.audit.attack, self.audit.options, self.audit.threat),
            ("selfcheck", self.selfcheck.attack, self.selfcheck.options, "E"),
        ):
            if where == "selfcheck" and not self.selfcheck.enabled:
                continue
            try:
                cls = ATTACKS.get(name)
                cls.create(**options)
                threat = ThreatModel(level=level)
            except ConfigError as exc:
                raise ConfigError(f"`{where}`: {exc}") from None
            try:  # the run folder's config.json records them
                json.dumps(options)
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"`{where}.options` must be JSON values (numbers, strings, lists, objects), "
                    f"since config.json records them; pass files as paths ({exc})."
                ) from None
            needs = set(cls.requires) - {"labels"}  # labels are granted or recovered
            threat.check(needs, f"`{where}.attack` {name!r}")

    def _validate_generative(self) -> None:
        """generative-prior in a classification audit: the prior it gets (runner)."""
        if self.audit.attack == "generative-prior" and self.diffusion.prior_steps < 1:
            raise ConfigError(
                f"`diffusion.prior_steps` must be >= 1; got {self.diffusion.prior_steps}."
            )
        sc = self.selfcheck
        if sc.enabled and sc.attack == "generative-prior" and "prior_model" not in sc.options:
            raise ConfigError(
                "the self-check's 'generative-prior' needs `selfcheck.options.prior_model`: "
                "the path of a prior written by fedleak.diffusion.save_model."
            )

    def _validate_diffusion(self) -> None:
        dif, aud = self.diffusion, self.audit
        if self.model.name != "unet":
            raise ConfigError(
                f"a diffusion federation trains fedleak's UNet: `model.name` must be 'unet' "
                f"(its options are UNetConfig's); got {self.model.name!r}."
            )
        if aud.attack not in DIFFUSION_ATTACKS:
            raise ConfigError(
                f"`audit.attack` of a diffusion federation must be one of "
                f"{', '.join(DIFFUSION_ATTACKS)}; got {aud.attack!r}."
            )
        if aud.attack == "gidm" and not dif.share_noise:
            raise ConfigError(
                "attack 'gidm' needs the clients' eps and t: set `diffusion.share_noise: true` "
                "or use 'gidm-plus'."
            )
        if aud.attack in ("gidm", "gidm-plus") and aud.threat < "D":
            raise ConfigError(
                f"attack {aud.attack!r} uses a prior model trained on public data: it needs "
                f"`audit.threat` D or E; got {aud.threat!r}."
            )
        if dif.prior_steps < 1:
            raise ConfigError(f"`diffusion.prior_steps` must be >= 1; got {dif.prior_steps}.")
        if self.selfcheck.enabled:
            raise ConfigError(
                "the client's self-check is for classification federations; disable "
                "`selfcheck` for `task: diffusion`."
            )
        if aud.grant_labels:
            raise ConfigError("diffusion clients have no labels: drop `audit.grant_labels`.")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Coerce ``value`` to the annotated type ``tp`` or raise a ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"`{where}` has an invalid value {value!r}.")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"`{where}` must be a table/mapping; got {value!r}.")
        return from_dict(tp, value, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"`{where}` must be a list; got {value!r}.")
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"`{where}` must be a mapping; got {value!r}.")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"`{where}` must be true or false; got {value!r}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"`{where}` must be an integer; got {value!r}.")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"`{where}` must be a number; got {value!r}.")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"`{where}` must be a string; got {value!r}.")
    return value


def from_dict(cls: Any, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys with the valid ones."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown key `{prefix}{unknown[0]}`; valid keys here: {', '.join(sorted(names))}."
        )
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise ConfigError(f"`{where or cls.__name__}` is missing `{missing[0]}`.")
    return cls(**kwargs)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> AuditConfig:
    """Read a YAML/TOML file (or defaults if ``path`` is None), apply ``a.b=value`` overrides."""
    data: dict[str, Any] = read_config_file(path) if path is not None else {}
    apply_overrides(data, overrides)
    return from_dict(AuditConfig, data).validate()
