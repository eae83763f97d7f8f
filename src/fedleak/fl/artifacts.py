"""Real artifacts: the update a server received, built from files a real pipeline saved.

A hospital team has a global checkpoint and the weights a client returned; the server of a
FedSGD deployment has a gradient. :func:`update_from_states` turns them into the
:class:`~fedleak.fl.update.ClientUpdate` the server saw: parameter deltas (or the gradient), the
BatchNorm buffers the client sent, and the training metadata the server knows.

Files are loaded without ever unpickling arbitrary objects: PyTorch files with
``torch.load(weights_only=True)``, safetensors files, NumPy ``.npz`` with ``allow_pickle=False``
(Flower's ``ndarrays`` saved with ``np.savez(*arrays)`` map onto the model's state-dict order).
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedleak.errors import ConfigError, DataError, UpdateError
from fedleak.fl.update import ClientUpdate, TrainingConfig

Tensors = dict[str, torch.Tensor]
StateSource = str | Path | Mapping[str, Any] | nn.Module

BN_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
# keys under which training scripts commonly nest the state dict inside a checkpoint
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")

# the training settings a user states, in their words, and what the server must otherwise assume
SETTING_DEFAULTS: dict[str, Any] = {
    "lr": None,
    "epochs": None,
    "steps": None,
    "batch_size": None,
    "optimizer": "sgd",
    "momentum": 0.0,
    "weight_decay": 0.0,
    "bn_mode": "train",
    "num_samples": None,
}


def _as_tensor(value: Any, name: str, where: str) -> torch.Tensor:
    if torch.is_tensor(value):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise DataError(f"{where}: entry {name!r} is an object array, not numbers.")
        return torch.from_numpy(np.ascontiguousarray(value))
    raise DataError(f"{where}: entry {name!r} is a {type(value).__name__}, not a tensor.")


def _tensor_dict(obj: Mapping[str, Any], where: str) -> Tensors:
    """Tensors of a (possibly nested) checkpoint dict; non-tensor metadata entries dropped."""
    for key in NESTED_KEYS:
        inner = obj.get(key) if isinstance(obj, Mapping) else None
        if isinstance(inner, Mapping) and any(torch.is_tensor(v) for v in inner.values()):
            obj = inner
            break
    if "meta" in obj and "tensors" in obj:
        raise DataError(
            f"{where}: this is a saved fedleak ClientUpdate; pass it as the update "
            "(`--update FILE` / ClientUpdate.load), not as a state dict."
        )
    out = {
        str(k): _as_tensor(v, str(k), where)
        for k, v in obj.items()
        if torch.is_tensor(v) or isinstance(v, np.ndarray)
    }
    if not out:
        raise DataError(f"{where}: holds no tensors (expected a state dict name -> tensor).")
    return out


def load_state(source: StateSource, *, reference: Sequence[str] | None = None) -> Tensors:
    """A state dict (name -> CPU tensor) from a module, a mapping or a file, loaded safely.

    Args:
        source: an ``nn.Module`` (its ``state_dict()``), a mapping of tensors/arrays, or a
            path to a ``.safetensors`` file, a ``.npz`` file, or a PyTorch file (``.pt``,
            ``.pth``, ``.bin``, ``.ckpt``) read with ``torch.load(weights_only=True)``.
        reference: the model's state-dict keys, in order; used to name the arrays of a
            ``.npz`` written as ``np.savez(path, *ndarrays)`` (Flower's ``ndarrays`` order).

    Raises:
        DataError: missing, corrupt or unsafe file (one line, naming the file).
    """
    if isinstance(source, nn.Module):
        return {k: v.detach().cpu().clone() for k, v in source.state_dict().items()}
    if isinstance(source, Mapping):
        return _tensor_dict(source, "state dict")
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected a state dict, .safetensors or .npz).")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:  # pragma: no cover - declared dependency
            raise DataError(f"{path}: reading it needs `pip install safetensors`.") from None
        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as exc:  # noqa: BLE001 - any failure means a corrupt file
            msg = _first_line(exc)
            raise DataError(f"{path}: not a readable safetensors file ({msg}).") from None
    if suffix == ".npz":
        return _load_npz(path, reference)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        lines = [ln.strip() for ln in str(exc).splitlines() if "Unsupported" in ln]
        msg = (lines[0] if lines else _first_line(exc))[:160]
        if "Unsupported global" in str(exc) or "Unsupported class" in str(exc):
            raise DataError(
                f"{path}: holds pickled Python objects, which fedleak never unpickles; re-save "
                "it with torch.save(model.state_dict(), path) or as .safetensors."
            ) from None
        raise DataError(f"{path}: not a readable PyTorch file ({msg}).") from None
    if torch.is_tensor(obj):
        raise DataError(f"{path}: holds one tensor, not a state dict (name -> tensor).")
    if not isinstance(obj, Mapping):
        raise DataError(f"{path}: holds a {type(obj).__name__}, not a state dict.")
    return _tensor_dict(obj, str(path))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _load_npz(path: Path, reference: Sequence[str] | None) -> Tensors:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(
            f"{path}: not a readable .npz of numeric arrays ({_first_line(exc)})."
        ) from None
    if not arrays:
        raise DataError(f"{path}: holds no arrays.")
    positional = [f"arr_{i}" for i in range(len(arrays))]
    if sorted(arrays) == sorted(positional):
        if reference is None:
            raise DataError(
                f"{path}: arrays are unnamed (arr_0, arr_1, ...); give the model so they can "
                "be matched to its state dict in order."
            )
        if len(reference) != len(arrays):
            raise DataError(
                f"{path}: holds {len(arrays)} unnamed arrays, the model's state dict has "
                f"{len(reference)} entries; they cannot be matched in order."
            )
        return {k: torch.from_numpy(np.ascontiguousarray(arrays[p])) for k, p in
                zip(reference, positional, strict=True)}
    return {k: _as_tensor(v, k, str(path)) for k, v in arrays.items()}


def is_bn_buffer(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in BN_BUFFER_SUFFIXES


def model_bn_buffer_names(model: nn.Module) -> list[str]:
    """State-dict names of the model's BatchNorm buffers (what a client sends besides params)."""
    names = []
    for mname, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for bname, b in m.named_buffers(recurse=False):
                if b is not None:
                    names.append(f"{mname}.{bname}" if mname else bname)
    return names


def batch_sizes_for(n: int, b: int, steps: int) -> tuple[int, ...]:
    """Sizes of ``steps`` batches of size ``b`` cycling through epochs of ``n`` samples."""
    per_epoch = [min(b, n - s) for s in range(0, n, b)]
    return tuple(per_epoch[i % len(per_epoch)] for i in range(steps))


def training_from_settings(
    settings: Mapping[str, Any] | TrainingConfig | None,
    *,
    kind: str,
    num_samples: int | None = None,
    bn_momentum: float | None = None,
) -> tuple[TrainingConfig | None, int | None, list[str]]:
    """The :class:`TrainingConfig` of stated settings, the sample count, and what was assumed.

    ``settings`` uses the words of a training script: ``lr``, ``epochs`` or ``steps``,
    ``batch_size``, ``optimizer``, ``momentum``, ``weight_decay``, ``bn_mode``, ``num_samples``.
    Whatever is not stated and has a default is listed in the third value, so the preflight
    can say what the audit assumed instead of silently using it.
    """
    if isinstance(settings, TrainingConfig):
        return settings, num_samples, []
    s = dict(settings or {})
    unknown = sorted(set(s) - set(SETTING_DEFAULTS) - {"local_steps", "local_epochs", "shuffle"})
    if unknown:
        raise ConfigError(
            f"training setting {unknown[0]!r} is unknown; valid: {', '.join(SETTING_DEFAULTS)}."
        )
    s.setdefault("steps", s.pop("local_steps", None))
    s.setdefault("epochs", s.pop("local_epochs", None))
    n = num_samples if num_samples is not None else s.get("num_samples")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"`num_samples` of the training settings must be an int >= 1; got {n!r}.")
    assumed = [
        f"{k}={v}" for k, v in SETTING_DEFAULTS.items()
        if v is not None and s.get(k) is None and (kind == "delta" or k == "bn_mode")
    ]
    opts = {k: (s[k] if s.get(k) is not None else v) for k, v in SETTING_DEFAULTS.items()}
    lr = opts["lr"]
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0):
        raise ConfigError(f"`lr` of the training settings must be a number > 0; got {lr!r}.")
    if kind == "gradient":
        if s.get("steps") not in (None, 1) or s.get("epochs") not in (None, 1):
            raise ConfigError("a gradient (FedSGD) is one step: drop `steps`/`epochs`.")
        cfg = TrainingConfig(
            protocol="fedsgd", lr=float(lr or 0.0), local_steps=1, batch_size=n or 1,
            batch_sizes=(n,) if n else (), bn_mode=opts["bn_mode"], bn_momentum=bn_momentum,
            shuffle=False,
        )
        return cfg, n, assumed
    if lr is None:
        return None, n, assumed  # no lr: the delta cannot be read as a gradient (level < C)
    steps, epochs, b = s.get("steps"), s.get("epochs"), s.get("batch_size")
    if steps is not None and epochs is not None:
        raise ConfigError("give `steps` or `epochs` of the client's training, not both.")
    if b is None:
        b = n
        if n is not None:
            assumed.append(f"batch_size={n} (all samples)")
    if steps is None:
        if epochs is None:
            epochs = 1
            assumed.append("epochs=1")
        if n is None or b is None:
            raise ConfigError(
                "`epochs` needs `num_samples` and `batch_size` to count the local steps; "
                "state them, or give `steps` instead."
            )
        steps = int(epochs) * math.ceil(n / int(b))
    sizes = batch_sizes_for(n, int(b), int(steps)) if n is not None and b is not None else ()
    cfg = TrainingConfig(
        protocol="fedavg", lr=float(lr), local_steps=int(steps),
        local_epochs=None if s.get("steps") is not None else epochs,
        batch_size=int(b or 1), batch_sizes=sizes, optimizer=opts["optimizer"],
        momentum=float(opts["momentum"]), weight_decay=float(opts["weight_decay"]),
        bn_mode=opts["bn_mode"], bn_momentum=bn_momentum,
        shuffle=bool(s.get("shuffle", True)),
    )
    return cfg, n, assumed


def update_from_states(
    global_state: StateSource,
    client_state: StateSource,
    *,
    training: Mapping[str, Any] | TrainingConfig | None = None,
    num_samples: int | None = None,
    kind: str = "delta",
    model: nn.Module | None = None,
    client_id: str | None = None,
    round: int | None = None,
) -> ClientUpdate:
    """The update a server saw, from the global state and what the client returned.

    Args:
        global_state: the weights the server sent (module, mapping or file).
        client_state: the client's returned weights (``kind="delta"``), or its gradient keyed
            by parameter name (``kind="gradient"``, FedSGD).
        training: the client's settings (see :func:`training_from_settings`) or a
            :class:`TrainingConfig`; ``None`` hides them (an attacker below level C).
        model: the architecture; selects which entries are trainable parameters and which are
            BatchNorm buffers (without it, names ending in ``running_mean``, ``running_var``
            and ``num_batches_tracked`` are buffers and every other float entry a parameter).

    Raises:
        UpdateError: shapes differ, or the states share no parameter.
    """
    if kind not in ("delta", "gradient"):
        raise ConfigError(f"`kind` of from_states must be 'delta' or 'gradient'; got {kind!r}.")
    ref = list(model.state_dict()) if model is not None else None
    g = load_state(global_state, reference=ref)
    c = load_state(client_state, reference=ref if kind == "delta" else _param_names(model))
    if model is not None:
        params = [k for k, p in model.named_parameters() if p.requires_grad]
        buffer_names = model_bn_buffer_names(model)
    else:
        params = [k for k, v in g.items() if v.is_floating_point() and not is_bn_buffer(k)]
        buffer_names = [k for k in g if is_bn_buffer(k)]
    tensors: Tensors = {}
    for k in params:
        if k not in c:
            continue  # reported by the preflight (model tensors without an update entry)
        if kind == "gradient":
            tensors[k] = c[k].to(torch.get_default_dtype())
            continue
        if k not in g:
            raise UpdateError(f"parameter {k!r} is in the client's state but not the global one.")
        if g[k].shape != c[k].shape:
            raise UpdateError(
                f"parameter {k!r} has shape {tuple(c[k].shape)} in the client's state and "
                f"{tuple(g[k].shape)} in the global one: not the same model."
            )
        tensors[k] = c[k].to(g[k].dtype) - g[k]
    if not tensors:
        raise UpdateError(
            "the client's state shares no parameter name with the model; check that both "
            f"files come from the same architecture (e.g. client keys {list(c)[:3]})."
        )
    buffers = {k: c[k].clone() for k in buffer_names if k in c}
    mom = _bn_momentum(model)
    cfg, n, _ = training_from_settings(training, kind=kind, num_samples=num_samples,
                                       bn_momentum=mom)
    return ClientUpdate(
        kind=kind,  # type: ignore[arg-type]
        tensors=tensors,
        buffers=buffers,
        num_samples=n,
        training=cfg,
        client_id=client_id,
        round=round,
    )


def update_from_modules(
    global_model: nn.Module, client_model: nn.Module, **kwargs: Any
) -> ClientUpdate:
    """:func:`update_from_states` of two modules; the global one gives the architecture."""
    kwargs.setdefault("model", global_model)
    return update_from_states(global_model, client_model, **kwargs)


def _param_names(model: nn.Module | None) -> list[str] | None:
    if model is None:
        return None
    return [k for k, p in model.named_parameters() if p.requires_grad]


def _bn_momentum(model: nn.Module | None) -> float | None:
    if model is None:
        return None
    from fedleak.fl.client import bn_momentum

    try:
        return bn_momentum(model)
    except ConfigError:
        return None


def load_global_model(model: nn.Module, state: Tensors) -> list[str]:
    """Load the global ``state`` into ``model`` (shapes must match); returns missing keys.

    Entries the model lacks are ignored here (the preflight reports them).
    """
    own = model.state_dict()
    problems = [
        f"{k!r}: file {tuple(v.shape)}, model {tuple(own[k].shape)}"
        for k, v in state.items() if k in own and own[k].shape != v.shape
    ]
    if problems:
        raise UpdateError(
            "the global state does not fit the model (shape mismatch): " + "; ".join(problems[:3])
            + ". Check --model-def/--model-arg or the model options."
        )
    common = {k: v for k, v in state.items() if k in own}
    if not common:
        raise UpdateError(
            "the global state shares no tensor name with the model (e.g. file keys "
            f"{list(state)[:3]}, model keys {list(own)[:3]}): not the same architecture."
        )
    model.load_state_dict(common, strict=False)
    return [k for k in own if k not in state]
