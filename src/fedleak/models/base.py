"""Model registry, the public builder and the option checks every builder shares.

A builder is registered under a name with signature ``(input_shape, num_classes, **options)``;
its keyword-only parameters are its valid options, so a misspelt option fails before anything
is built and the error lists what would have worked.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from fedleak.errors import ConfigError
from fedleak.registry import Registry

ModelBuilder = Callable[..., nn.Module]

MODELS: Registry[ModelBuilder] = Registry("model")


def available_models() -> list[str]:
    """Sorted names accepted by :func:`build_model`."""
    return MODELS.names()


def model_options(name: str) -> list[str] | None:
    """Valid option names of model ``name`` (``None`` when its builder takes ``**options``)."""
    params = list(inspect.signature(MODELS.get(name)).parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return sorted(p.name for p in params[2:] if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


def build_model(
    name: str, *, input_shape: tuple[int, int, int], num_classes: int, **options: Any
) -> nn.Module:
    """Build model ``name`` for images of ``input_shape`` (C, H, W) in [0, 1].

    The returned module normalises inside (its first module is :class:`Normalize`) and maps
    (B, C, H, W) to logits (B, num_classes). ``input_shape`` and ``num_classes`` are kept as
    plain attributes so attacks can read them back from the victim.
    """
    caller = f"build_model({name!r})"
    builder = MODELS.get(name)
    shape = check_input_shape(input_shape, caller)
    classes = check_int(num_classes, "num_classes", caller)
    valid = model_options(name)
    if valid is not None:
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ConfigError(
                f"`options` of {caller} must be among {', '.join(valid) or '(none)'}; "
                f"got {unknown[0]!r}. Remove it or use one of those names."
            )
    model = builder(shape, classes, **options)
    model.input_shape = shape
    model.num_classes = classes
    return model


# --- option checks (shared by the builders) -------------------------------------------------


def check_int(value: Any, param: str, caller: str, minimum: int = 1) -> int:
    """An int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"`{param}` of {caller} must be an int >= {minimum}; got {value!r}.")
    return value


def check_bool(value: Any, param: str, caller: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"`{param}` of {caller} must be True or False; got {value!r}.")
    return value


def check_choice(value: Any, choices: Sequence[str], param: str, caller: str) -> str:
    if value not in choices:
        allowed = " | ".join(repr(c) for c in choices)
        raise ConfigError(f"`{param}` of {caller} must be one of {allowed}; got {value!r}.")
    return value


def check_int_tuple(
    value: Any, param: str, caller: str, *, minimum: int = 1, allow_empty: bool = False
) -> tuple[int, ...]:
    """A tuple/list of ints >= ``minimum`` (empty only when ``allow_empty``)."""
    ok = isinstance(value, (tuple, list)) and (allow_empty or len(value) > 0)
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)
    if not ok:
        what = "a" if allow_empty else "a non-empty"
        raise ConfigError(
            f"`{param}` of {caller} must be {what} tuple of ints >= {minimum}; got {value!r}."
        )
    return tuple(value)


def check_input_shape(value: Any, caller: str) -> tuple[int, int, int]:
    """(C, H, W) of positive ints."""
    ok = isinstance(value, (tuple, list)) and len(value) == 3
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    if not ok:
        raise ConfigError(
            f"`input_shape` of {caller} must be (channels, height, width) of positive ints; "
            f"got {value!r}."
        )
    c, h, w = value
    return (c, h, w)


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Spatial size after a conv/pool, so flatten sizes follow from ``input_shape``."""
    return (size + 2 * padding - kernel) // stride + 1


def check_spatial(h: int, w: int, input_shape: tuple[int, ...], caller: str) -> None:
    """Fail at build time, not at the first forward, when the input is too small."""
    if h < 1 or w < 1:
        raise ConfigError(
            f"`input_shape` of {caller} must be large enough to keep a non-empty feature map; "
            f"got {tuple(input_shape)!r}. Use larger images or fewer pooling/stride steps."
        )
