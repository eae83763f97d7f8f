"""The client update: exactly what a federated-learning server receives from one client.

It holds tensors keyed by parameter name (a gradient for FedSGD, ``new - old`` for FedAvg), the
BatchNorm buffers after local training and the training metadata a real FL framework ships with the
update (or that the server itself configured). The private images and labels are never part of it.
The object is plain (dicts of tensors, scalars) so a Flower message can carry it.
"""

from __future__ import annotations

import json
import math
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from fedleak.errors import ConfigError, DataError, UpdateError, brief, check_finite

Protocol = Literal["fedsgd", "fedavg"]
OptimizerName = Literal["sgd", "adam"]
BNMode = Literal["train", "eval"]


@dataclass(frozen=True)
class TrainingConfig:
    """How the client trained locally: the "training details" of threat levels C and up.

    ``local_steps`` is the number of optimizer steps actually taken (1 for FedSGD);
    ``batch_sizes`` lists the size of each of those steps' batches in order.
    """

    protocol: Protocol = "fedsgd"
    lr: float = 0.0
    local_steps: int = 1
    local_epochs: int | None = None
    batch_size: int = 1
    batch_sizes: tuple[int, ...] = ()
    optimizer: OptimizerName = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    bn_mode: BNMode = "train"
    bn_momentum: float | None = None
    shuffle: bool = True
    loss: str = "cross-entropy"
    task: str = "classification"

    def __post_init__(self) -> None:
        if self.protocol not in ("fedsgd", "fedavg"):
            raise ConfigError(f"`protocol` must be 'fedsgd' or 'fedavg'; got {self.protocol!r}.")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"`optimizer` must be 'sgd' or 'adam'; got {self.optimizer!r}.")
        if self.bn_mode not in ("train", "eval"):
            raise ConfigError(f"`bn_mode` must be 'train' or 'eval'; got {self.bn_mode!r}.")
        if self.local_steps < 1 or self.batch_size < 1:
            raise ConfigError(
                f"`local_steps` and `batch_size` must be >= 1; got {self.local_steps}, "
                f"{self.batch_size}."
            )
        if self.protocol == "fedavg" and not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"`lr` must be a positive finite number for FedAvg; got {self.lr!r}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainingConfig:
        d = dict(d)
        for key in ("batch_sizes", "betas"):
            if key in d and d[key] is not None:
                d[key] = tuple(d[key])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class ClientUpdate:
    """What one client sends for one round.

    Attributes:
        kind: ``"gradient"`` (FedSGD: the loss gradient) or ``"delta"`` (FedAvg: new - old params).
        tensors: parameter name -> tensor of the parameter's shape.
        buffers: BatchNorm buffers after local training (absolute values, as in a state dict).
        num_samples: images the client trained on (FedAvg weight); ``None`` when hidden.
        training: the local training configuration; ``None`` when the threat model hides it.
        shared: other tensors the client sends in the clear, e.g. a diffusion client's noise
            ``epsilon`` and timesteps ``t`` when the protocol shares them (empty by default).
        client_id, round: bookkeeping for audits.
    """

    kind: Literal["gradient", "delta"]
    tensors: Mapping[str, torch.Tensor]
    buffers: Mapping[str, torch.Tensor] = field(default_factory=dict)
    num_samples: int | None = None
    training: TrainingConfig | None = None
    shared: Mapping[str, torch.Tensor] = field(default_factory=dict)
    client_id: str | None = None
    round: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("gradient", "delta"):
            raise UpdateError(
                f"`kind` of ClientUpdate must be 'gradient' or 'delta'; got {self.kind!r}."
            )
        if not self.tensors:
            raise UpdateError("ClientUpdate holds no tensors.")
        check_finite(self.tensors, "client update")
        check_finite(self.buffers, "client update buffers")

    def replace(self, **changes: Any) -> ClientUpdate:
        """A copy with some fields changed (the update itself is immutable)."""
        return replace(self, **changes)

    def check_matches(self, model: torch.nn.Module) -> None:
        """Raise :class:`UpdateError` unless each tensor is a parameter of ``model``, same shape."""
        params = dict(model.named_parameters())
        problems = []
        for name, t in self.tensors.items():
            if name not in params:
                problems.append(f"{name!r} is not a parameter of the model")
            elif params[name].shape != t.shape:
                problems.append(
                    f"{name!r} has shape {tuple(t.shape)}, model has {tuple(params[name].shape)}"
                )
        if problems:
            raise UpdateError("update does not fit the model: " + "; ".join(problems[:3]) + ".")

    # --- real artifacts: what a real server received (fedleak.fl.artifacts) ------------------
    @classmethod
    def from_states(cls, global_state: Any, client_state: Any, **kwargs: Any) -> ClientUpdate:
        """The update a server saw, from saved states (see ``fl.artifacts.update_from_states``).

        Example: ``ClientUpdate.from_states("global.pt", "client.safetensors", model=net,
        training={"lr": 0.1, "epochs": 2, "batch_size": 8}, num_samples=16)``.
        """
        from fedleak.fl.artifacts import update_from_states

        return update_from_states(global_state, client_state, **kwargs)

    @classmethod
    def from_modules(
        cls, global_model: torch.nn.Module, client_model: torch.nn.Module, **kwargs: Any
    ) -> ClientUpdate:
        """:meth:`from_states` of the global model and the client's trained copy."""
        from fedleak.fl.artifacts import update_from_modules

        return update_from_modules(global_model, client_model, **kwargs)

    # --- serialization: plain tensors + JSON metadata, loaded with weights_only=True -------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "kind": self.kind,
            "num_samples": self.num_samples,
            "training": self.training.to_dict() if self.training else None,
            "client_id": self.client_id,
            "round": self.round,
        }
        payload = {
            "tensors": {k: v.detach().cpu() for k, v in self.tensors.items()},
            "buffers": {k: v.detach().cpu() for k, v in self.buffers.items()},
            "shared": {k: v.detach().cpu() for k, v in self.shared.items()},
            "meta": json.dumps(meta),
        }
        torch.save(payload, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ClientUpdate:
        """Load a saved update; never unpickles arbitrary objects (``weights_only=True``)."""
        path = Path(path)
        if not path.is_file():
            raise DataError(
                f"{path}: no such update file (expected a file written by ClientUpdate.save)."
            )
        payload = load_tensors_safely(path, "fedleak client update")
        try:
            meta = json.loads(payload["meta"])
            tensors, buffers = dict(payload["tensors"]), dict(payload["buffers"])
            shared = dict(payload.get("shared", {}))
        except Exception as exc:  # noqa: BLE001 - any failure means "not our format"
            raise DataError(
                f"{path}: not a fedleak client update (missing or malformed {brief(exc)})."
            ) from None
        training = TrainingConfig.from_dict(meta["training"]) if meta.get("training") else None
        return cls(
            kind=meta["kind"],
            tensors=tensors,
            buffers=buffers,
            shared=shared,
            num_samples=meta.get("num_samples"),
            training=training,
            client_id=meta.get("client_id"),
            round=meta.get("round"),
        )


def load_tensors_safely(path: str | Path, what: str) -> Any:
    """``torch.load`` with ``weights_only=True``, its failures turned into one line.

    Never unpickles arbitrary objects: a file that holds anything but tensors and plain
    containers is refused (PyTorch's own message, which suggests disabling the check, is
    replaced), and its pickle warnings are silenced.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected a {what}).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DataError(
            f"{path}: not a {what}: it is not a PyTorch file of plain tensors, or it holds "
            "Python objects, which fedleak never unpickles."
        ) from None
    except Exception as exc:  # noqa: BLE001 - zip/EOF/runtime errors all mean "unreadable"
        raise DataError(f"{path}: not a readable {what} ({brief(exc)}).") from None
