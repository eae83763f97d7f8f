"""Where units of work run: in this process, in a process pool, or as Ray tasks on a cluster.

The runners (:func:`fedleak.audit.run_audit`, :func:`fedleak.sweep.run_sweep`) build their
units (an audited attack, a sweep cell), submit them to the engine of ``cfg.engine`` and write
every result themselves, so each engine yields the same files, records and resume rule.
"""

from __future__ import annotations

from typing import Any

from fedleak.engines.base import (
    Engine,
    EngineStatus,
    Finished,
    InlineEngine,
    Placement,
    PlacementLog,
    PoolEngine,
    run_traced,
    with_files,
    write_files,
)
from fedleak.engines.config import ENGINE_KEY, EngineConfig

__all__ = [
    "ENGINE_KEY",
    "Engine",
    "EngineConfig",
    "EngineStatus",
    "Finished",
    "InlineEngine",
    "Placement",
    "PlacementLog",
    "PoolEngine",
    "make_engine",
    "run_traced",
    "with_files",
    "write_files",
]


def make_engine(cfg: EngineConfig, *, workers: int = 1, progress_factory: Any = None) -> Engine:
    """The engine ``cfg`` names: ``local`` (inline, or a pool of ``workers`` processes) or
    ``ray`` (which needs the ``ray`` extra)."""
    if cfg.name == "ray":
        from fedleak.engines.ray import RayEngine

        return RayEngine(cfg)
    if workers > 1:
        return PoolEngine(workers)
    return InlineEngine(progress_factory)
