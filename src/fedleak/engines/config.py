"""The ``engine:`` section of the audit and sweep configs: where the units of work run.

Kept apart from the runners so both configs share it and neither imports Ray to validate it.
The engine never changes a result, so a resumed run may use another engine than its start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fedleak.errors import ConfigError

__all__ = ["EngineConfig", "ENGINE_KEY"]

ENGINE_KEY = "engine"  # the config key the resume check ignores
_ADDRESS = re.compile(r"^(auto|ray://.+|[A-Za-z0-9_.\-\[\]:]+:\d+)$")


@dataclass
class EngineConfig:
    """Which engine runs the independent units (sweep cells, audited attacks), with what.

    ``name``: ``local`` (the in-process audit; the sweep's process pool of ``--workers``),
    ``ray`` or, for audits, ``flower``. The Ray keys: ``address`` (``auto``, ``HOST:PORT``
    or None to start a local Ray here), ``num_cpus`` / ``num_gpus`` per task (torch threads:
    ``num_cpus``; ``num_gpus: 1`` runs one attack per GPU, ``0.5`` two), ``max_retries``
    (reruns of a task whose worker or node died) and ``local_cpus`` (CPUs of a local Ray;
    None: all of this machine's).
    """

    name: str = "local"
    address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_retries: int = 3
    local_cpus: int | None = None

    def validate(self, names: tuple[str, ...] = ("local", "ray")) -> EngineConfig:
        """Check the names and ranges; ``names`` are the engines the caller supports."""
        if self.name not in names:
            raise ConfigError(
                f"`engine.name` must be one of {', '.join(names)}; got {self.name!r}."
            )
        if self.address is not None and not _ADDRESS.match(self.address):
            raise ConfigError(
                f"`engine.address` must be 'auto', 'HOST:PORT' or 'ray://HOST:PORT'; "
                f"got {self.address!r}."
            )
        if self.address is not None and self.name != "ray":
            raise ConfigError(
                f"`engine.address` is for the ray engine; got it with engine {self.name!r} "
                "(set `engine.name: ray` or drop the address)."
            )
        if not self.num_cpus >= 0 or not self.num_gpus >= 0 or self.num_cpus + self.num_gpus == 0:
            raise ConfigError(
                "`engine.num_cpus` and `engine.num_gpus` must be >= 0 and not both 0; got "
                f"{self.num_cpus} and {self.num_gpus}."
            )
        if self.max_retries < 0:
            raise ConfigError(f"`engine.max_retries` must be >= 0; got {self.max_retries}.")
        if self.local_cpus is not None and self.local_cpus < 1:
            raise ConfigError(f"`engine.local_cpus` must be >= 1; got {self.local_cpus}.")
        return self

    @property
    def threads(self) -> int:
        """Torch/OpenMP threads of one task: its CPUs (at least one)."""
        return max(1, int(self.num_cpus))
