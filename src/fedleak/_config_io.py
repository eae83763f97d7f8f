"""Reading config files (YAML or TOML) and ``section.key=value`` overrides, with one-line errors.

Shared by the audit config (``fedleak.audit.config``) and the sweep config
(``fedleak.sweep.config``).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from fedleak.errors import ConfigError, DataError


def read_config_file(path: str | Path, kind: str = "config") -> dict[str, Any]:
    """The mapping in a .yaml/.yml/.toml file; ``kind`` names the file in the errors."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {kind} file not found.")
    text = path.read_text()
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise DataError(f"{path}: expected a .yaml, .yml or .toml {kind} file.")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0]
        raise DataError(f"{path}: not valid {suffix[1:].upper()}: {first}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: the {kind} must be a mapping at the top level.")
    return data


def apply_overrides(data: dict[str, Any], overrides: Iterable[str] | None) -> dict[str, Any]:
    """Set every ``section.key=value`` of ``overrides`` in ``data`` (in place; returned).

    Values are parsed as JSON when they can be (``3``, ``true``, ``[1, 2]``), else kept as
    strings; missing sections are created.
    """
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"an override must look like section.key=value; got {item!r}.")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: `{p}` is not a section.")
        node[parts[-1]] = value
    return data
