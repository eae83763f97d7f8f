"""What `fedleak datasets` and `fedleak attacks` print, readable without importing PyTorch.

The registries stay the one source of truth: the built-in data sets (``fedleak.data.builtin``),
the attacks (their class, ``requires`` and the ``Options:`` section of the class docstring, see
:mod:`fedleak.cli.reference`) and the models. Importing them costs seconds (PyTorch), too much
for a listing, so :func:`collect` copies what the listings show into the generated module
``fedleak/_catalogue_data.py``, and these commands read only that copy.
``tests/test_catalogue.py`` fails, naming the command below, whenever copy and registries differ.

To add an attack, a built-in data set or a model: register it as before (``@register_attack``
with an ``Options:`` docstring section, ``BUILTINS.add`` with its ``DatasetInfo``,
``@register_model``), then regenerate the copy and commit it::

    PYTHONPATH=src python -m fedleak.catalogue
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

from fedleak.registry import Registry

DATA_PATH = Path(__file__).with_name("_catalogue_data.py")
REGENERATE = "PYTHONPATH=src python -m fedleak.catalogue"


def datasets() -> list[dict[str, Any]]:
    """The built-in data sets, sorted by name: name, description, classes, size, source..."""
    from fedleak._catalogue_data import DATASETS

    return DATASETS


def models() -> list[str]:
    """Sorted names of the registered models."""
    from fedleak._catalogue_data import MODELS

    return MODELS


def attacks() -> Registry[dict[str, Any]]:
    """The attacks' entries (name, summary, requires, level, options) by name.

    A registry, so an unknown name is the same one-line error (with a close match) as
    ``fedleak.attacks.ATTACKS.get`` gives.
    """
    from fedleak._catalogue_data import ATTACKS

    reg: Registry[dict[str, Any]] = Registry("attack")
    for entry in ATTACKS:
        reg.add(entry["name"], entry)
    return reg


# --- generation from the registries (imports PyTorch) -------------------------------------------


def collect() -> dict[str, Any]:
    """What the listings show, read from the registries themselves."""
    from fedleak.attacks import ATTACKS
    from fedleak.cli.reference import option_rows
    from fedleak.data import available_datasets
    from fedleak.fl.threat import LEVELS, level_granting
    from fedleak.models import available_models

    sets = [
        {
            "name": d.name,
            "description": d.description,
            "classes": list(d.classes),
            "native_size": list(d.native_size),
            "channels": d.channels,
            "num_images": d.num_images,
            "source": d.source,
        }
        for d in available_datasets()
    ]
    attacks = []
    for name in ATTACKS.names():
        cls = ATTACKS.get(name)
        granting = [level_granting(item) for item in cls.requires]
        level = max((lv for lv in granting if lv), key=LEVELS.index, default=LEVELS[0])
        doc = inspect.cleandoc(cls.__doc__ or "").splitlines()
        attacks.append(
            {
                "name": name,
                "summary": doc[0] if doc else "",
                "requires": sorted(cls.requires),
                "level": level,
                "options": [list(row) for row in option_rows(cls, ATTACKS)],
            }
        )
    return {"DATASETS": sets, "ATTACKS": attacks, "MODELS": list(available_models())}


def render(data: dict[str, Any]) -> str:
    """Source text of ``_catalogue_data.py`` holding ``data`` (one option per line, for diffs)."""
    head = (
        f'"""Generated from the registries by `{REGENERATE}`: do not edit.\n\n'
        'See fedleak.catalogue for why this copy exists."""\n\nfrom typing import Any\n'
    )
    body = "".join(
        f"\n{key}: Any = {_literal(value, 0, len(key) + 7)}\n" for key, value in data.items()
    )
    return head + body


def _literal(value: Any, indent: int, lead: int = 0, width: int = 96) -> str:
    """``repr(value)`` on one line when it fits after ``lead`` characters at ``indent``, else
    one item per line."""
    flat = repr(value)
    if indent + lead + len(flat) + 1 <= width:
        return flat
    pad = " " * (indent + 4)
    if isinstance(value, str):  # adjacent literals, split after spaces
        chunks, line = [], ""
        for word in value.split(" "):
            if line and indent + 4 + len(repr(line + word + " ")) > width:
                chunks.append(line)
                line = ""
            line += word + " "
        chunks.append(line[:-1])
        return "(\n" + "".join(f"{pad}{c!r}\n" for c in chunks) + " " * indent + ")"
    if isinstance(value, dict):
        items = [f"{k!r}: {_literal(v, indent + 4, len(repr(k)) + 2)}" for k, v in value.items()]
        open_, close = "{", "}"
    else:
        items = [_literal(v, indent + 4) for v in value]
        open_, close = "[", "]"
    return open_ + "\n" + "".join(f"{pad}{it},\n" for it in items) + " " * indent + close


def main(argv: list[str] | None = None) -> int:
    """Write ``_catalogue_data.py`` (``--check``: only report whether it is up to date)."""
    args = sys.argv[1:] if argv is None else argv
    text = render(collect())
    current = DATA_PATH.read_text() if DATA_PATH.exists() else ""
    if "--check" in args:
        if current != text:
            print(f"{DATA_PATH} is out of date; run `{REGENERATE}`.")
            return 1
        return 0
    if current != text:
        DATA_PATH.write_text(text)
        print(f"wrote {DATA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
