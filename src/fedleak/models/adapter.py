"""Users' own models, as fedleak's attacks need them: pixels in [0, 1] in, logits out.

A user's model often expects normalized input (the data pipeline normalizes, not the model) and
may return an output object (``.logits``, Hugging Face), a dict or a tuple. :func:`adapt_model`
wraps it: an :class:`InputTransform` in front (the transform the user states, used alike by the
attack and the scoring) and a :class:`LogitsAdapter` behind. Parameter names move under
``model.``; :func:`adapt_update` renames an update's tensors to match.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedleak.errors import ConfigError, DataError
from fedleak.fl.update import ClientUpdate
from fedleak.models.normalize import Normalize

PREFIX = "model."


def load_model_def(spec: str, args: dict[str, Any] | None = None) -> nn.Module:
    """Instantiate ``path/to/file.py:ClassName`` (a class or a factory) with ``args``.

    The file is the user's own code and is imported as such (as their training script does).
    """
    path_s, sep, name = spec.rpartition(":")
    if not sep or not path_s or not name:
        raise ConfigError(f"`--model-def` must look like path/to/file.py:ClassName; got {spec!r}.")
    path = Path(path_s)
    if not path.is_file():
        raise ConfigError(f"`--model-def` file {path} does not exist.")
    mod_name = f"fedleak_user_model_{abs(hash(path.resolve()))}"
    spec_obj = importlib.util.spec_from_file_location(mod_name, path)
    if spec_obj is None or spec_obj.loader is None:
        raise ConfigError(f"`--model-def` file {path} is not an importable Python file.")
    module = importlib.util.module_from_spec(spec_obj)
    sys.modules[mod_name] = module
    try:
        spec_obj.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file failed to import
        raise ConfigError(f"`--model-def` {path} failed to import: {type(exc).__name__}: {exc}") \
            from None
    factory = getattr(module, name, None)
    if factory is None or not callable(factory):
        found = sorted(k for k, v in vars(module).items()
                       if isinstance(v, type) and issubclass(v, nn.Module))
        raise ConfigError(
            f"`--model-def` {path} has no class {name!r}; nn.Module classes found: "
            f"{', '.join(found) or 'none'}."
        )
    try:
        model = factory(**(args or {}))
    except TypeError as exc:
        raise ConfigError(f"`--model-arg` of {name}: {exc}.") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"`--model-def` {spec} returned a {type(model).__name__}, not a module.")
    return model


def find_logits(out: Any, where: str | int | None = None) -> torch.Tensor:
    """The logits tensor of a model output: a tensor, ``.logits``, ``["logits"]`` or ``[0]``.

    ``where`` names an attribute/key (str) or a tuple index (int) when the default search
    would pick the wrong one.
    """
    if where is not None:
        try:
            if isinstance(where, int) or isinstance(out, dict):
                found = out[where]
            else:
                found = getattr(out, where)
        except (KeyError, IndexError, AttributeError, TypeError):
            raise ConfigError(
                f"`logits` of the model adapter: the output ({type(out).__name__}) has no "
                f"{where!r}."
            ) from None
        if not torch.is_tensor(found):
            raise ConfigError(f"`logits` {where!r} of the model output is not a tensor.")
        return found
    if torch.is_tensor(out):
        return out
    logits = getattr(out, "logits", None)
    if torch.is_tensor(logits):
        return logits
    if isinstance(out, dict):
        if torch.is_tensor(out.get("logits")):
            return out["logits"]
        keys = list(out)
    elif isinstance(out, (tuple, list)) and out and torch.is_tensor(out[0]):
        return out[0]
    else:
        keys = [k for k in dir(out) if not k.startswith("_")][:8]
    raise ConfigError(
        f"the model returns a {type(out).__name__} whose logits fedleak cannot find "
        f"(fields: {', '.join(map(str, keys)) or 'none'}); say where with --logits NAME "
        "(or logits= in adapt_model)."
    )


class LogitsAdapter(nn.Module):
    """``model(x)`` reduced to its logits (B, K)."""

    def __init__(self, model: nn.Module, where: str | int | None = None) -> None:
        super().__init__()
        self.model = model
        self.where = where

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return find_logits(self.model(x), self.where)


class AdaptedModel(nn.Module):
    """Pixels in [0, 1] -> the user's input transform -> the user's model -> logits."""

    def __init__(
        self, model: nn.Module, transform: nn.Module | None, where: str | int | None
    ) -> None:
        super().__init__()
        self.transform = transform if transform is not None else nn.Identity()
        self.model = model
        self.where = where

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return find_logits(self.model(self.transform(x)), self.where)


def input_transform(
    channels: int,
    *,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    value_range: tuple[float, float] | None = None,
) -> Normalize | None:
    """The pipeline's map from pixels in [0, 1] to the model's input (None: the identity).

    ``mean``/``std``: ``(x - mean) / std`` as ``transforms.Normalize``; ``value_range=(lo,
    hi)``: pixels rescaled to [lo, hi] (e.g. (-1, 1)).
    """
    if value_range is not None:
        if mean is not None or std is not None:
            raise ConfigError("state the input transform as mean/std or as a range, not both.")
        lo, hi = (float(v) for v in value_range)
        if not hi > lo:
            raise ConfigError(f"`input range` must be lo,hi with hi > lo; got {value_range!r}.")
        return Normalize(channels, mean=-lo / (hi - lo), std=1.0 / (hi - lo))
    if mean is None and std is None:
        return None
    return Normalize(channels, mean=0.0 if mean is None else mean,
                     std=1.0 if std is None else std)


def eager_attention_fix(model: nn.Module) -> str | None:
    """Switch a ``transformers`` model's attention to "eager" when it uses SDPA/flash.

    Double backward (what gradient matching needs) is not implemented for PyTorch's fused
    attention kernels on the CPU. Returns what was done (None: nothing to do).

    Raises:
        ConfigError: the model uses fused attention and cannot be switched.
    """
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None) if config is not None else None
    if impl is None or impl == "eager":
        return None
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter):
        try:
            setter("eager")
            return f"attention switched from {impl!r} to 'eager' (double backward needs it)"
        except Exception:  # noqa: BLE001, S110 - fall through to the clear error
            pass
    raise ConfigError(
        f"the model's attention is {impl!r}: gradient matching differentiates twice, which "
        "fused attention does not support on the CPU; build the model with "
        "attn_implementation=\"eager\" (e.g. Model(config) after config._attn_implementation = "
        "\"eager\")."
    )


def adapt_model(
    model: nn.Module,
    *,
    image_shape: tuple[int, int, int],
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    value_range: tuple[float, float] | None = None,
    logits: str | int | None = None,
) -> tuple[nn.Module, list[str]]:
    """The user's model as attacks need it, and notes on what was adapted.

    Returns the model itself when nothing is needed (a tensor out, no transform); otherwise an
    :class:`AdaptedModel` whose parameters are ``model.<name>`` (see :func:`adapt_update`).
    Sets ``input_shape`` and ``num_classes`` (from a dry forward) on the result.

    Raises:
        ConfigError: a 3D volume shape, an output without findable logits, logits not (B, K).
    """
    shape = check_image_shape(image_shape)
    notes: list[str] = []
    fixed = eager_attention_fix(model)
    if fixed:
        notes.append(fixed)
    transform = input_transform(shape[0], mean=mean, std=std, value_range=value_range)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            param = next(model.parameters(), None)
            probe = torch.rand((2, *shape), generator=torch.Generator().manual_seed(0))
            if param is not None:
                probe = probe.to(device=param.device, dtype=param.dtype)
            x = probe if transform is None else transform.to(probe)(probe)
            raw = model(x)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's forward failed on the stated shape
        raise ConfigError(
            f"the model fails on images of shape {shape} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); check --image-shape."
        ) from None
    finally:
        model.train(was_training)
    out = find_logits(raw, logits)
    if out.ndim != 2 or out.shape[0] != 2:
        raise ConfigError(
            f"the model's logits must be (batch, classes); got shape {tuple(out.shape)} for a "
            "batch of 2 (segmentation and other dense outputs are not supported)."
        )
    if torch.is_tensor(raw) and logits is None and transform is None:
        wrapped = model
    else:
        wrapped = AdaptedModel(model, transform, logits)
        if not torch.is_tensor(raw):
            notes.append(f"logits taken from the model's {type(raw).__name__} output")
        if transform is not None:
            notes.append(f"input transform in front of the model: {transform.extra_repr()}")
    wrapped.input_shape = shape
    wrapped.num_classes = int(out.shape[1])
    return wrapped, notes


def adapt_update(update: ClientUpdate, wrapped: nn.Module) -> ClientUpdate:
    """``update`` with names as in ``wrapped`` (prefixed ``model.`` for an AdaptedModel)."""
    if not isinstance(wrapped, AdaptedModel):
        return update
    return update.replace(
        tensors={PREFIX + k: v for k, v in update.tensors.items()},
        buffers={PREFIX + k: v for k, v in update.buffers.items()},
    )


def check_image_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """(C, H, W); a 4-number (C, D, H, W) volume is refused with the reason."""
    values = tuple(int(s) for s in shape)
    if len(values) == 4:
        raise ConfigError(
            f"`image shape` {values} is a 3D volume (C, D, H, W): fedleak attacks 2D images "
            "only; audit a 2D model (or slices) instead."
        )
    if len(values) != 3 or min(values) < 1:
        raise ConfigError(f"`image shape` must be C,H,W of positive ints; got {values}.")
    return values  # type: ignore[return-value]


def check_pixels(images: torch.Tensor, what: str = "images") -> None:
    """Refuse images outside [0, 1]: normalized data would be scored (and attacked) as pixels."""
    if images.ndim == 5:
        raise DataError(f"`{what}` are 3D volumes (N, C, D, H, W): fedleak handles 2D images only.")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-4 or hi > 1 + 1e-4:
        raise DataError(
            f"`{what}` range over [{lo:.3g}, {hi:.3g}], not pixels in [0, 1]: pass the raw "
            "images and state the pipeline's normalization (--input-mean/--input-std or "
            "--input-range; input_transform= in Python): it then serves the attack and the "
            "scoring alike."
        )
