"""The user's reference for attack options: default and meaning of each, from the docstrings.

Attacks document their options in an ``Options:`` section of the class docstring (one entry per
option or per group, ``name, other: meaning``, continuation lines indented). An entry that
reads "as in <attack>" / "as for <attack>" borrows that attack's meanings. Options no section
mentions fall back to :data:`COMMON` (the shared optimization loop), so nothing shows blank.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any

COMMON = {
    "iterations": "optimizer steps per restart",
    "restarts": "independent starts run together; the lowest attack loss wins",
    "lr": "optimizer step size",
    "signed": "Adam on the sign of the gradient (Inverting Gradients' trick)",
    "schedule": "learning-rate schedule: 'step' (x0.1 at 3/8, 5/8, 7/8), 'cosine' or 'constant'",
    "tv": "total-variation weight (smoothness prior)",
    "init": "initial candidates: 'random', 'randn', 'constant' (0.5 grey) or 'prior'",
}
# an entry inside a line: "... the prior. ddim_steps: K steps" -> a new entry "ddim_steps"
_INLINE = re.compile(r"(?<=[.;])\s+([a-z_][\w]*(?:\s*,\s*[a-z_][\w]*)*):\s")
_ENTRY = re.compile(
    r"^(?P<names>[A-Za-z_][\w]*(?:\s*,\s*[A-Za-z_][\w]*)*)\s*(?:\([^)]*\))?:\s*(?P<text>.*)$"
)
_BORROW = re.compile(r"as (?:in|for) [\"'`]*([\w-]+)[\"'`]*")


def _options_section(doc: str) -> list[tuple[list[str], str]]:
    """(names, meaning) entries of the docstring's ``Options...:`` section."""
    lines = inspect.cleandoc(doc or "").splitlines()
    entries: list[tuple[list[str], str]] = []
    inside, indent = False, 0
    for line in lines:
        if not inside:
            if line.strip().startswith("Options") and line.rstrip().endswith(":"):
                inside, indent = True, -1
            continue
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if depth == 0:  # the section ended (e.g. "Extras:")
            break
        if indent < 0:
            indent = depth
        m = _ENTRY.match(line.strip()) if depth == indent else None
        if m:
            names = [n.strip() for n in m.group("names").split(",")]
            entries.append((names, m.group("text").strip()))
        elif entries:
            names, text = entries[-1]
            entries[-1] = (names, f"{text} {line.strip()}")
    split: list[tuple[list[str], str]] = []
    for names, text in entries:
        parts = _INLINE.split(text)  # [text, names2, text2, names3, text3, ...]
        split.append((names, parts[0].strip()))
        for i in range(1, len(parts) - 1, 2):
            split.append(([n.strip() for n in parts[i].split(",")], parts[i + 1].strip()))
    return split


def option_meanings(
    cls: type, registry: Any = None, _seen: frozenset[str] = frozenset()
) -> dict[str, str]:
    """Meaning of each documented option of attack class ``cls`` (and its bases)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        for names, text in _options_section(klass.__dict__.get("__doc__") or ""):
            borrowed = _BORROW.search(text)
            for n in names:
                if len(names) > 1 and n in COMMON:  # a group's shared text says less
                    out.setdefault(n, COMMON[n])
                    continue
                meaning = text
                if borrowed and registry is not None and borrowed.group(1) not in _seen:
                    other = borrowed.group(1)
                    if other in registry.names():
                        ref = option_meanings(registry.get(other), registry, _seen | {other})
                        meaning = ref.get(n, text)
                out[n] = meaning
    return out


def option_rows(cls: type, registry: Any = None) -> list[tuple[str, str, str]]:
    """(option, default, meaning) for every option of attack class ``cls``."""
    meanings = option_meanings(cls, registry, frozenset({getattr(cls, "name", "")}))
    elsewhere: dict[str, str] = {}  # the same option documented by another attack
    if registry is not None:
        for other in registry.names():
            if other != getattr(cls, "name", None):
                for k, v in option_meanings(registry.get(other)).items():
                    elsewhere.setdefault(k, v)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = repr(f.default_factory())  # type: ignore[misc]
        else:
            default = "(required)"
        meaning = meanings.get(f.name) or COMMON.get(f.name) or elsewhere.get(f.name, "-")
        rows.append((f.name, default, meaning))
    return rows
