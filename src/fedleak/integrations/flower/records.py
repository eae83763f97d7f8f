"""Converters between fedleak's :class:`ClientUpdate` and Flower's records.

Flower's strategies exchange *models*, not updates: the server sends the global arrays and each
client replies with its local arrays (same keys, same order), which FedAvg averages. fedleak's
update is ``local - global`` (a ``delta``) or a gradient. :func:`to_arrays` and
:func:`from_arrays` convert between the two given the global arrays (``base``); without ``base``
they carry the raw tensors. Metadata (kind, number of samples, training configuration) travels
in a ConfigRecord (:func:`update_meta`), the weight in the MetricRecord's ``num-examples``.

The training configuration the server sends is a ConfigRecord with kebab-case keys
(``lr``, ``local-epochs``, ``batch-size``, ...); :func:`train_config_record` and
:func:`train_options` convert it from and to :func:`fedleak.fl.local_update` keyword arguments,
and :func:`derive_training` computes the :class:`TrainingConfig` a client reports from it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord
from torch import nn

from fedleak.errors import ConfigError, UpdateError
from fedleak.fl import ClientUpdate, TrainingConfig
from fedleak.fl.client import bn_buffers, bn_momentum, fedsgd_training

Tensors = Mapping[str, torch.Tensor]

# local_update keyword -> key in the train ConfigRecord
TRAIN_KEYS = {
    "protocol": "protocol",
    "lr": "lr",
    "local_epochs": "local-epochs",
    "local_steps": "local-steps",
    "batch_size": "batch-size",
    "optimizer": "optimizer",
    "momentum": "momentum",
    "weight_decay": "weight-decay",
    "betas": "betas",
    "bn_mode": "bn-mode",
    "shuffle": "shuffle",
}
_FROM_CONFIG = {v: k for k, v in TRAIN_KEYS.items()}


# --- arrays -----------------------------------------------------------------------------------
def state_from_arrays(arrays: ArrayRecord | Tensors) -> dict[str, torch.Tensor]:
    """A torch state dict (CPU tensors) from an ArrayRecord; a mapping of tensors passes through."""
    if isinstance(arrays, ArrayRecord):
        return {k: torch.from_numpy(np.array(v.numpy())) for k, v in arrays.items()}
    return dict(arrays)


def arrays_from_state(state: Tensors) -> ArrayRecord:
    """An ArrayRecord from a torch state dict (keys and order kept)."""
    return ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in state.items()})


def _names(params: Iterable[str] | nn.Module) -> tuple[list[str], list[str] | None]:
    """Parameter names and, for a model, its BatchNorm buffer names (None: all the rest)."""
    if isinstance(params, nn.Module):
        names = [k for k, p in params.named_parameters() if p.requires_grad]
        return names, list(bn_buffers(params))
    return list(params), None


def to_arrays(
    update: ClientUpdate,
    base: ArrayRecord | Tensors | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> ArrayRecord:
    """The ArrayRecord a client sends for ``update``.

    With ``base`` (the global arrays the client received) it is the client's local model as
    Flower's strategies expect it: ``base + delta`` (``base - lr * gradient`` for FedSGD), the
    update's BatchNorm buffers, and ``base``'s value for any array the update does not carry,
    with ``base``'s keys and order. Floating-point arrays take ``dtype`` (default: ``base``'s).
    ``dtype=torch.float64`` lets the server recover the update exactly as ``local - global``:
    in float32 a small update loses its low bits (a 1e-7 change of a weight of 0.1 keeps about
    three significant bits). Without ``base`` the record holds the raw tensors, then the
    buffers, then ``shared/<name>`` tensors.
    """
    if base is None:
        out = {**update.tensors, **update.buffers}
        out.update({f"shared/{k}": v for k, v in update.shared.items()})
        return arrays_from_state(out)
    glob = state_from_arrays(base)
    unknown = sorted((set(update.tensors) | set(update.buffers)) - set(glob))
    if unknown:
        raise UpdateError(
            f"to_arrays: the update holds {unknown[0]!r}, which the global arrays lack; pass the "
            "ArrayRecord the client received as `base`."
        )
    if update.kind == "gradient":
        lr = update.training.lr if update.training else 0.0
        if not lr > 0:
            raise UpdateError(
                "to_arrays: a FedSGD gradient becomes a local model only with the client's lr "
                "(update.training.lr > 0)."
            )
        step = {k: -lr * v for k, v in update.tensors.items()}
    else:
        step = dict(update.tensors)
    local = {}
    for k, g in glob.items():
        out = dtype if dtype is not None and g.is_floating_point() else g.dtype
        if k in step:
            local[k] = (g.double() + step[k].detach().cpu().double()).to(out)
        elif k in update.buffers:
            local[k] = update.buffers[k].detach().cpu().to(out)
        else:
            local[k] = g.to(out)
    return arrays_from_state(local)


def from_arrays(
    arrays: ArrayRecord | Tensors,
    *,
    base: ArrayRecord | Tensors | None = None,
    params: Iterable[str] | nn.Module | None = None,
    meta: ConfigRecord | Mapping[str, Any] | None = None,
    **fields: Any,
) -> ClientUpdate:
    """The :class:`ClientUpdate` behind a client's arrays (the inverse of :func:`to_arrays`).

    ``params`` is the model (its trainable parameters are the tensors, its BatchNorm buffers
    the buffers, as :func:`fedleak.fl.local_update` sends them; other arrays such as a
    normalisation layer's constants are left out) or the parameter names (every other array is
    a buffer). It defaults to ``meta``'s ``tensor-keys`` / ``buffer-keys``. With ``base`` the
    tensors are ``arrays - base``
    (``(base - arrays) / lr`` for a ``gradient``). ``meta`` (an :func:`update_meta` record)
    fills kind, num_samples, training, client_id and round; keyword ``fields`` override it.
    """
    info = parse_meta(meta) if meta is not None else {}
    info.update(fields)
    local = state_from_arrays(arrays)
    if params is not None:
        names, buffer_names = _names(params)
    else:
        names, buffer_names = info.get("tensor_keys"), info.get("buffer_keys")
    info.pop("tensor_keys", None)
    info.pop("buffer_keys", None)
    if names is None:
        raise ConfigError(
            "from_arrays: which arrays are parameters is unknown: pass params=model (or names) "
            "or a meta record with `tensor-keys`."
        )
    missing = [k for k in names if k not in local]
    if missing:
        raise UpdateError(f"from_arrays: the arrays lack the parameter {missing[0]!r}.")
    shared = {k[len("shared/") :]: v for k, v in local.items() if k.startswith("shared/")}
    kind = info.pop("kind", "delta" if base is not None else None)
    if kind is None:
        raise ConfigError("from_arrays: pass kind='delta' or 'gradient' (or a meta record).")
    training = info.get("training")
    # the update takes the model's dtypes (else the global arrays'); differences in float64
    dtypes = (
        {k: v.dtype for k, v in params.state_dict().items()}
        if isinstance(params, nn.Module)
        else {}
    )
    if base is not None:
        glob = state_from_arrays(base)
        dtypes = {**{k: v.dtype for k, v in glob.items()}, **dtypes}
        if kind == "gradient":
            lr = training.lr if isinstance(training, TrainingConfig) else 0.0
            if not lr > 0:
                raise UpdateError("from_arrays: a FedSGD gradient needs training.lr > 0.")
            diff = {k: (glob[k].double() - local[k].double()) / lr for k in names}
        else:
            diff = {k: local[k].double() - glob[k].double() for k in names}
        tensors = {k: v.to(dtypes[k]) for k, v in diff.items()}
    else:
        tensors = {k: local[k].to(dtypes.get(k, local[k].dtype)) for k in names}
    if buffer_names is not None:
        buffers = {k: local[k].to(dtypes.get(k, local[k].dtype)) for k in buffer_names}
    else:
        buffers = {
            k: v.to(dtypes.get(k, v.dtype))
            for k, v in local.items()
            if k not in tensors and not k.startswith("shared/")
        }
    return ClientUpdate(kind=kind, tensors=tensors, buffers=buffers, shared=shared, **info)


# --- metadata ---------------------------------------------------------------------------------
def update_meta(update: ClientUpdate) -> ConfigRecord:
    """The update's metadata as a ConfigRecord (absent values are left out)."""
    rec = ConfigRecord(
        {
            "kind": update.kind,
            "tensor-keys": list(update.tensors),
            "buffer-keys": list(update.buffers),
        }
    )
    if update.num_samples is not None:
        rec["num-samples"] = int(update.num_samples)
    if update.training is not None:
        rec["training"] = json.dumps(update.training.to_dict())
    if update.client_id is not None:
        rec["client-id"] = str(update.client_id)
    if update.round is not None:
        rec["round"] = int(update.round)
    return rec


def parse_meta(meta: ConfigRecord | Mapping[str, Any]) -> dict[str, Any]:
    """:func:`update_meta`'s record back to ClientUpdate fields (plus ``tensor_keys``)."""
    out: dict[str, Any] = {}
    if "kind" in meta:
        out["kind"] = str(meta["kind"])
    for key in ("tensor-keys", "buffer-keys"):
        if key in meta:
            out[key.replace("-", "_")] = list(meta[key])  # type: ignore[arg-type]
    if "num-samples" in meta:
        out["num_samples"] = int(meta["num-samples"])  # type: ignore[arg-type]
    if "training" in meta:
        out["training"] = TrainingConfig.from_dict(json.loads(str(meta["training"])))
    if "client-id" in meta:
        out["client_id"] = str(meta["client-id"])
    if "round" in meta:
        out["round"] = int(meta["round"])  # type: ignore[arg-type]
    return out


# --- training configuration -------------------------------------------------------------------
def train_config_record(options: Mapping[str, Any]) -> ConfigRecord:
    """The train ConfigRecord for :func:`fedleak.fl.local_update` keyword ``options``.

    ``None`` values are left out (Flower's records hold no None).
    """
    unknown = sorted(set(options) - set(TRAIN_KEYS))
    if unknown:
        raise ConfigError(
            f"`{unknown[0]}` is not a training option Flower clients understand; valid: "
            f"{', '.join(TRAIN_KEYS)}."
        )
    rec = ConfigRecord()
    for k, v in options.items():
        if v is None:
            continue
        rec[TRAIN_KEYS[k]] = [float(b) for b in v] if k == "betas" else v
    return rec


def merge_train(config: Mapping[str, Any], overrides: Mapping[str, Any]) -> ConfigRecord:
    """``config`` (a train ConfigRecord) with :func:`local_update` ``overrides`` applied.

    An override of ``None`` removes the key (e.g. ``local_epochs=None`` next to ``local_steps``).
    """
    out = ConfigRecord(dict(config))
    for k, v in overrides.items():
        key = TRAIN_KEYS.get(k)
        if key is None:
            raise ConfigError(f"`{k}` is not a training option; valid: {', '.join(TRAIN_KEYS)}.")
        if v is None:
            out.pop(key, None)
        else:
            out[key] = [float(b) for b in v] if k == "betas" else v
    return out


def train_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`fedleak.fl.local_update` keyword arguments from a train ConfigRecord.

    Keys that are not training options (``server-round``, a DP mod's ``clipping_norm``...) are
    ignored.
    """
    opts: dict[str, Any] = {}
    for key, value in config.items():
        name = _FROM_CONFIG.get(key)
        if name is None:
            continue
        opts[name] = tuple(value) if name == "betas" else value  # type: ignore[arg-type]
    return opts


def derive_training(
    options: Mapping[str, Any], num_samples: int, model: nn.Module
) -> TrainingConfig:
    """The :class:`TrainingConfig` that :func:`fedleak.fl.local_update` reports for ``options``.

    What an honest-but-curious server knows (level C) from the train config it sent, the
    client's ``num-examples`` and the architecture; equal to the client's own report.
    """
    n = int(num_samples)
    if n < 1:
        raise ConfigError(f"`num-examples` must be >= 1 to derive the training; got {n}.")
    protocol = options.get("protocol", "fedsgd")
    lr = float(options.get("lr", 0.01))
    bn_mode = options.get("bn_mode", "train")
    mom = bn_momentum(model)
    if protocol == "fedsgd":
        return fedsgd_training(n, lr=lr, bn_mode=bn_mode, bn_momentum=mom)
    epochs, steps = options.get("local_epochs"), options.get("local_steps")
    if epochs is not None and steps is not None:
        raise ConfigError("the train config gives `local-epochs` and `local-steps`; give one.")
    b = int(options.get("batch_size") or n)
    per_epoch = math.ceil(n / b)
    total = int(steps) if steps is not None else int(epochs or 1) * per_epoch
    epoch_sizes = [min(b, n - s) for s in range(0, n, b)]
    sizes = tuple(epoch_sizes[i % per_epoch] for i in range(total))
    return TrainingConfig(
        protocol="fedavg",
        lr=lr,
        local_steps=total,
        local_epochs=epochs if steps is None else None,
        batch_size=b,
        batch_sizes=sizes,
        optimizer=options.get("optimizer", "sgd"),
        momentum=float(options.get("momentum", 0.0)),
        weight_decay=float(options.get("weight_decay", 0.0)),
        betas=tuple(options.get("betas", (0.9, 0.999))),  # type: ignore[arg-type]
        bn_mode=bn_mode,
        bn_momentum=mom,
        shuffle=bool(options.get("shuffle", True)),
    )
