"""A tiny name -> object registry shared by data sets, models, attacks and defenses.

Unknown names list the valid ones and the closest match, so a typo is a one-line fix. The
option helpers at the end serve the registered classes that are dataclasses of options
(update filters, training defenses): their options are their init fields.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import Field, fields
from typing import Any, Generic, TypeVar

from fedleak.errors import ConfigError, UnknownNameError

T = TypeVar("T")
C = TypeVar("C", bound=type)


class Registry(Generic[T]):
    """Maps names to objects of one kind (``kind`` is used in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, *, force: bool = False) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``; ``force`` replaces an existing entry."""

        def deco(obj: T) -> T:
            self.add(name, obj, force=force)
            return obj

        return deco

    def register_class(self, name: str, *, force: bool = False) -> Callable[[C], C]:
        """Class decorator: register ``cls`` under ``name`` and set ``cls.name`` to it."""

        def deco(cls: C) -> C:
            cls.name = name  # type: ignore[attr-defined]
            self.add(name, cls, force=force)  # type: ignore[arg-type]
            return cls

        return deco

    def add(self, name: str, obj: T, *, force: bool = False) -> None:
        if name in self._items and not force:
            raise ValueError(
                f"{self.kind} {name!r} is already registered; pass force=True to replace it."
            )
        self._items[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self._items))}.{hint}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


# --- options of registered dataclasses --------------------------------------------------------


def init_options(cls: type) -> list[str]:
    """The option names of a dataclass built from options: its init fields, sorted."""
    return sorted(f.name for f in fields(cls) if f.init)


def option_error(param: str, caller: str, constraint: str, value: Any) -> ConfigError:
    """The one option error template: "`param` of caller must be constraint; got value."."""
    return ConfigError(f"`{param}` of {caller} must be {constraint}; got {value!r}.")


def check_options(options: Mapping[str, Any], known: Sequence[str], caller: str) -> None:
    """ConfigError for the first key of ``options`` that is not in ``known`` (listing those)."""
    for key in options:
        if key not in known:
            constraint = f"one of its options ({', '.join(known) or 'none'})"
            raise option_error(key, caller, constraint, options[key])


def dataclass_options(obj: Any, keep: Callable[[Field[Any]], bool]) -> dict[str, Any]:
    """The fields of dataclass ``obj`` that ``keep`` selects, as plain data (tuples -> lists)."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        if keep(f):
            value = getattr(obj, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out
