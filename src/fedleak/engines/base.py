"""Engines schedule units of work; the runner that submits them writes every result.

An engine takes ``submit(key, fn, args, kwargs)`` and hands back :class:`Finished` items from
``wait()`` as tasks end: the value (or the error) and where it ran. It never touches the run
folder. :class:`InlineEngine` runs each task in this process when it is waited for;
:class:`PoolEngine` runs them in spawned worker processes; ``fedleak.engines.ray.RayEngine``
runs them as Ray tasks on a cluster. The functions submitted are plain module-level functions
taking plain data, so any engine can ship them.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import socket
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Engine",
    "EngineStatus",
    "Finished",
    "InlineEngine",
    "Placement",
    "PlacementLog",
    "PoolEngine",
    "run_traced",
    "with_files",
    "write_files",
]


@dataclass(frozen=True)
class Placement:
    """Where and how long one task ran: the Ray node id (``local`` off Ray), its IP, the pid."""

    node: str
    ip: str
    pid: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Finished:
    """One ended task: its key, its value or error, and where it ran (None if it never ran)."""

    key: Any
    value: Any = None
    error: BaseException | None = None
    placement: Placement | None = None


@dataclass(frozen=True)
class EngineStatus:
    """The progress of a run across the engine: what the CLI's progress bar shows.

    ``running`` counts the tasks in flight that fit the engine's free slots, ``queued`` the
    rest (an engine does not report which of its tasks have started).
    """

    total: int
    done: int
    running: int
    queued: int
    failed: int
    last_seconds: float | None = None


def _where() -> tuple[str, str]:
    """(node id, IP) of this process: the Ray node when inside a Ray worker, else local."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()
    try:
        ip = socket.gethostbyname(socket.gethostname())
    except OSError:
        ip = "127.0.0.1"
    return "local", ip


def run_traced(
    fn: Callable[..., Any], threads: int | None, args: tuple, kwargs: dict[str, Any]
) -> tuple[Any, Placement]:
    """Run ``fn(*args, **kwargs)`` with ``threads`` torch/OpenMP threads (None: unchanged);
    return its value and where it ran."""
    if threads is not None:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    value = fn(*args, **kwargs)
    node, ip = _where()
    return value, Placement(node, ip, os.getpid(), round(time.perf_counter() - t0, 3))


def with_files(
    fn: Callable[..., Any], inputs: dict[str, bytes], *args: Any
) -> tuple[Any, dict[str, bytes]]:
    """Run ``fn(*args, folder)`` in a scratch folder holding ``inputs`` (relative path ->
    bytes); return its value and the files it wrote there, for the caller to write.

    A worker on another machine shares no disk with the driver: what a unit reads from the
    run folder travels in, what it writes travels back.
    """
    with tempfile.TemporaryDirectory(prefix="fedleak-task-") as tmp:
        root = Path(tmp)
        write_files(root, inputs)
        value = fn(*args, str(root))
        outputs = {
            str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file() and str(p.relative_to(root)) not in inputs
        }
    return value, outputs


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (relative path -> bytes) under ``folder``, each atomically."""
    for rel, data in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)


class Engine(ABC):
    """Schedules tasks; ``wait`` hands back the finished ones. Use as a context manager."""

    name = "engine"

    def __init__(self) -> None:
        self.done = 0
        self.failed = 0
        self.last_seconds: float | None = None

    @abstractmethod
    def submit(
        self,
        key: Any,
        fn: Callable[..., Any],
        args: tuple = (),
        kwargs: dict[str, Any] | None = None,
        *,
        progress: tuple[str, int] | None = None,
    ) -> None:
        """Schedule ``fn(*args, **kwargs)`` under ``key``. ``progress``: (label, iterations)
        for an engine that can show a task's own progress bar (the inline one)."""

    @property
    @abstractmethod
    def in_flight(self) -> list[Any]:
        """Keys submitted and not yet handed back by ``wait``."""

    @abstractmethod
    def _collect(self, block: bool) -> list[Finished]: ...

    def slots(self) -> int:
        """How many tasks can run at once."""
        return 1

    def wait(self, block: bool = True) -> list[Finished]:
        """Finished tasks; ``block``: wait for at least one when any is in flight."""
        out = self._collect(block)
        for f in out:
            if f.error is None:
                self.done += 1
            else:
                self.failed += 1
            if f.placement is not None:
                self.last_seconds = f.placement.seconds
        return out

    def status(self, total: int, before: int = 0) -> EngineStatus:
        """Progress with ``before`` units already done by an earlier run (resume)."""
        n = len(self.in_flight)
        running = min(n, self.slots())
        return EngineStatus(
            total, before + self.done, running, n - running, self.failed, self.last_seconds
        )

    def close(self) -> None:  # noqa: B027 - most engines hold nothing
        """Release workers (and a Ray started here)."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InlineEngine(Engine):
    """Runs each task in this process, one at a time, when ``wait`` is called."""

    name = "local"

    def __init__(self, progress_factory: Any = None) -> None:
        super().__init__()
        self._queue: deque[tuple[Any, Callable[..., Any], tuple, dict, Any]] = deque()
        self.progress_factory = progress_factory

    def submit(self, key, fn, args=(), kwargs=None, *, progress=None) -> None:  # noqa: D102
        self._queue.append((key, fn, args, dict(kwargs or {}), progress))

    @property
    def in_flight(self) -> list[Any]:
        return [item[0] for item in self._queue]

    def _collect(self, block: bool) -> list[Finished]:
        if not self._queue:
            return []
        key, fn, args, kwargs, progress = self._queue.popleft()
        ctx = None
        if progress is not None and self.progress_factory is not None:
            ctx = self.progress_factory(*progress)
            kwargs["progress"] = ctx.__enter__()
        try:
            value, place = run_traced(fn, None, args, kwargs)
        except Exception as exc:  # noqa: BLE001 - the runner decides what a failure means
            return [Finished(key, error=exc)]
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)
        return [Finished(key, value, None, place)]


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


class PoolEngine(Engine):
    """Runs tasks in ``workers`` spawned processes (fresh interpreters, one torch thread)."""

    name = "local"

    def __init__(self, workers: int) -> None:
        super().__init__()
        self.workers = workers
        self._pool = cf.ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_one_thread,
        )
        self._futures: dict[cf.Future, Any] = {}

    def submit(self, key, fn, args=(), kwargs=None, *, progress=None) -> None:  # noqa: D102
        fut = self._pool.submit(run_traced, fn, 1, tuple(args), dict(kwargs or {}))
        self._futures[fut] = key

    @property
    def in_flight(self) -> list[Any]:
        return list(self._futures.values())

    def slots(self) -> int:
        return self.workers

    def _collect(self, block: bool) -> list[Finished]:
        if not self._futures:
            return []
        ready, _ = cf.wait(
            self._futures, timeout=None if block else 0, return_when=cf.FIRST_COMPLETED
        )
        out = []
        for fut in ready:
            key = self._futures.pop(fut)
            exc = fut.exception()
            if exc is not None:
                out.append(Finished(key, error=exc))
            else:
                value, place = fut.result()
                out.append(Finished(key, value, None, place))
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class PlacementLog:
    """``placement.json`` in the run folder: where each task ran, per task and per node.

    Rewritten after every task, kept across resumes (a task run twice is listed twice).
    """

    def __init__(self, out: Path, engine: str) -> None:
        import json

        self.path = out / "placement.json"
        old = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.tasks: list[dict[str, Any]] = list(old.get("tasks", []))
        self.engine = engine

    def add(self, f: Finished) -> None:
        """Record one ended task and rewrite the file."""
        from fedleak.report import write_json

        entry: dict[str, Any] = {"task": f.key, "engine": self.engine, "ok": f.error is None}
        if f.placement is not None:
            entry |= f.placement.to_dict()
        self.tasks.append(entry)
        nodes: dict[str, dict[str, Any]] = {}
        for t in self.tasks:
            if "node" not in t:
                continue
            n = nodes.setdefault(t["node"], {"ip": t["ip"], "tasks": 0, "seconds": 0.0})
            n["tasks"] += 1
            n["seconds"] = round(n["seconds"] + t["seconds"], 3)
        write_json(self.path, {"nodes": nodes, "tasks": self.tasks})
