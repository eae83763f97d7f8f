"""A tiny name -> object registry shared by data sets, models and attacks.

Unknown names list the valid ones and the closest match, so a typo is a one-line fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from fedleak.errors import UnknownNameError

T = TypeVar("T")


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
