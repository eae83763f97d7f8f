"""The Ray engine: each unit of work is a Ray task with declared resources, on any cluster.

``RayEngine(address=...)`` connects to a running cluster (``auto`` or ``HOST:PORT``, started
with ``ray start``) or, with no address, starts a local Ray for the run. Every task declares
``num_cpus`` / ``num_gpus`` (Ray places it where they are free and sets its torch threads to its
CPUs); a task whose worker process or node dies is rerun up to ``max_retries`` times, while an
error raised by the task itself is handed back at once (rerunning a seeded unit repeats it).
Ray stays optional: importing this module does not import Ray.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

from fedleak.engines.base import Engine, Finished, run_traced
from fedleak.engines.config import EngineConfig
from fedleak.errors import ConfigError

__all__ = ["RayEngine", "require_ray"]

OBJECT_STORE_BYTES = 100 * 1024 * 1024  # a local Ray's object store; fedleak's tasks are small


def require_ray() -> Any:
    """The ``ray`` module, or a ConfigError naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "the ray engine needs Ray: pip install -e '.[ray]' (the 'flower' extra brings it "
            "too), or use `engine: local`."
        ) from None
    return ray


def fedleak_task(fn: Any, threads: int, args: tuple, kwargs: dict[str, Any]) -> Any:
    """The body of every Ray task (its name shows in ``ps`` as ``ray::fedleak_task``)."""
    return run_traced(fn, threads, args, kwargs)


class RayEngine(Engine):
    """Runs each submitted unit as a Ray task; see the module docstring."""

    name = "ray"

    def __init__(self, cfg: EngineConfig) -> None:
        super().__init__()
        ray = require_ray()
        self._ray = ray
        self.cfg = cfg
        self._owned = False
        if not ray.is_initialized():
            common: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
            # Ray 2.5x warns that it will stop hiding GPUs from num_gpus=0 tasks; not ours to fix
            warnings.filterwarnings("ignore", "Tip: In future versions of Ray", FutureWarning)
            try:
                if cfg.address:
                    ray.init(address=cfg.address, **common)
                else:
                    ray.init(
                        num_cpus=cfg.local_cpus or os.cpu_count() or 1,
                        object_store_memory=OBJECT_STORE_BYTES,
                        include_dashboard=False,
                        # Ray runs workers at niceness 15; a local run's tasks are the user's
                        # own work, at the priority of the command that started them
                        _system_config={"worker_niceness": 0},
                        **common,
                    )
            except ConnectionError as exc:
                raise ConfigError(
                    f"`--ray-address` {cfg.address!r}: no Ray cluster answers there "
                    f"({str(exc).splitlines()[0]}); start one with `ray start --head`, or drop "
                    "the address to start a local Ray."
                ) from None
            self._owned = True
        self._remote = ray.remote(fedleak_task)
        self._options = {
            "num_cpus": cfg.num_cpus,
            "num_gpus": cfg.num_gpus,
            "max_retries": cfg.max_retries,
            "retry_exceptions": False,
        }
        self._refs: dict[Any, Any] = {}
        self._slots = self._count_slots()

    def _count_slots(self) -> int:
        res = self._ray.cluster_resources()
        fits = []
        if self.cfg.num_cpus > 0:
            fits.append(int(res.get("CPU", 0) // self.cfg.num_cpus))
        if self.cfg.num_gpus > 0:
            fits.append(int(res.get("GPU", 0) // self.cfg.num_gpus))
        return max(1, min(fits))

    def slots(self) -> int:
        return self._slots

    def cluster(self) -> dict[str, Any]:
        """The live nodes: id -> {ip, CPU, GPU}."""
        return {
            n["NodeID"]: {
                "ip": n["NodeManagerAddress"],
                "CPU": n["Resources"].get("CPU", 0),
                "GPU": n["Resources"].get("GPU", 0),
            }
            for n in self._ray.nodes()
            if n.get("Alive")
        }

    def submit(self, key, fn, args=(), kwargs=None, *, progress=None) -> None:  # noqa: D102
        ref = self._remote.options(name=f"fedleak_task {key}", **self._options).remote(
            fn, self.cfg.threads, tuple(args), dict(kwargs or {})
        )
        self._refs[ref] = key

    @property
    def in_flight(self) -> list[Any]:
        return list(self._refs.values())

    def _collect(self, block: bool) -> list[Finished]:
        ray = self._ray
        refs = list(self._refs)
        if not refs:
            return []
        ready, rest = ray.wait(refs, num_returns=1 if block else len(refs), timeout=None if block
                               else 0)
        if block and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready = ready + more
        out = []
        for ref in ready:
            key = self._refs.pop(ref)
            try:
                value, place = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # raised by the unit: its own error
                cause = exc.cause if isinstance(exc.cause, Exception) else exc
                out.append(Finished(key, error=cause))
            except ray.exceptions.RayError as exc:  # worker/node died past max_retries
                out.append(Finished(key, error=exc))
            else:
                out.append(Finished(key, value, None, place))
        return out

    def close(self) -> None:
        for ref in list(self._refs):
            self._ray.cancel(ref, force=True)
        self._refs.clear()
        if self._owned:
            self._ray.shutdown()
