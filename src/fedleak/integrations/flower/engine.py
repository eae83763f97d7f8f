"""``run_flower_audit``: the audit of :func:`fedleak.audit.run_audit` on Flower's Simulation Engine.

The ServerApp (:func:`~fedleak.integrations.flower.apps.serve_audit`) runs in this process; each
simulated client is a ClientApp run by a Ray actor with one CPU. The run folder holds the same
files as the in-process engine's: ``config.json``, ``rounds.jsonl``, ``leakage.jsonl``,
``leakage.csv``, ``selfcheck.jsonl``, ``grids/``, ``state.pt`` and ``summary.json``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from fedleak.audit.config import AuditConfig
from fedleak.integrations.flower.apps import check_resume, federation, make_client_app, serve_audit
from fedleak.report import write_json

OBJECT_STORE_BYTES = 100 * 1024 * 1024  # Ray's minimum is 75 MiB; fedleak's models are small


def backend_config(num_cpus: int | None = None) -> dict[str, Any]:
    """Ray settings: one CPU per client, a small object store, no dashboard, quiet logs."""
    cpus = num_cpus or max(1, min(2, os.cpu_count() or 1))
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": cpus,
            "num_gpus": 0,
            "object_store_memory": OBJECT_STORE_BYTES,
            "include_dashboard": False,
            "logging_level": "ERROR",
            "log_to_driver": False,
        },
    }


def run_flower_audit(
    cfg: AuditConfig,
    out: str | Path,
    *,
    resume: bool = False,
    log: Callable[[str], None] = print,
    progress_factory: Any = None,
    num_cpus: int | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Run the audit of ``cfg`` on Flower's Simulation Engine into ``out``; returns the summary.

    Same arguments, outputs and summary as :func:`fedleak.audit.run_audit` (plus
    ``"engine": "flower"``). ``num_cpus``: CPUs Ray may use (default: up to 2), one per client
    running at a time. ``verbose``: keep Flower's INFO logs.
    """
    t0 = time.perf_counter()
    out = Path(out)
    cfg.validate()
    check_resume(out, cfg, resume)  # fail before Ray starts
    federation(cfg)  # load data and check sizes here, once
    result: dict[str, Any] = {}
    server = ServerApp()
    body: list[int] = []  # the id of the thread Flower runs the ServerApp in, while it does
    body_done = threading.Event()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        body.append(threading.get_ident())
        try:
            result["summary"] = serve_audit(
                grid, cfg, out, resume=resume, log=log, progress_factory=progress_factory
            )
        except KeyboardInterrupt:  # raised in this thread by Ctrl-C, see _stop_server_on_sigint
            result["interrupted"] = True
        finally:
            body.clear()
            body_done.set()

    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.WARNING)
    stop = _stop_server_on_sigint(body)
    try:
        with stop:
            run_simulation(
                server_app=server,
                client_app=make_client_app(cfg),
                num_supernodes=len(cfg.federation.clients),
                backend_config=backend_config(num_cpus),  # type: ignore[arg-type]
            )
    except KeyboardInterrupt:
        if stop.interrupted and not body_done.is_set() and "summary" not in result:
            body_done.wait(5.0)  # the body's files are closed before the caller goes on
        raise
    finally:
        if not stop.interrupted:  # else Flower's threads still log the teardown (silenced)
            flwr_logger.setLevel(level)
    if result.get("interrupted"):  # Ctrl-C reached only the ServerApp's thread
        raise KeyboardInterrupt
    if "summary" not in result:
        raise RuntimeError(
            "the Flower simulation ended without finishing the audit; rerun with verbose=True "
            "to see Flower's logs."
        )
    summary = result["summary"]
    summary["seconds"] = round(time.perf_counter() - t0, 1)  # with Ray's start-up, as run_audit
    write_json(out / "summary.json", summary)
    return summary


class _stop_server_on_sigint:  # noqa: N801 - used as a context manager
    """Ctrl-C stops the ServerApp's thread too, at once, as it stops the in-process engine.

    Flower runs the ServerApp (training rounds, attacks, file writes) in a non-daemon thread and
    SIGINT interrupts only the main thread: the audit went on computing, then waited for clients
    Ray no longer ran, and the process never exited. While the body runs, SIGINT raises
    KeyboardInterrupt in its thread as well (at its next Python instruction; every row already
    written stays), and the body returns; then the main thread's KeyboardInterrupt shuts Flower
    and Ray down, with Flower's logs silenced (its threads report the actors Ray took down).
    Only installed from the main thread (signal handlers live there).
    """

    def __init__(self, body: list[int]) -> None:
        self.body = body
        self.previous: Any = None
        self.installed = False
        self.interrupted = False

    def _handler(self, signum: int, frame: Any) -> None:
        self.interrupted = True
        # the teardown's errors (actors that died with Ray, ...) are no news after Ctrl-C
        logging.getLogger("flwr").setLevel(logging.CRITICAL + 1)
        for ident in list(self.body):
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(ident), ctypes.py_object(KeyboardInterrupt)
            )
        if callable(self.previous):
            self.previous(signum, frame)
        else:
            raise KeyboardInterrupt

    def __enter__(self) -> _stop_server_on_sigint:
        if threading.current_thread() is threading.main_thread():
            current = signal.getsignal(signal.SIGINT)
            if current is not signal.SIG_IGN:  # an ignored Ctrl-C stays ignored
                self.previous = current
                signal.signal(signal.SIGINT, self._handler)
                self.installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.installed:
            signal.signal(signal.SIGINT, self.previous or signal.default_int_handler)
