"""Ctrl-C stops at once: the CLI skips the interpreter's slow teardown, and a `--engine flower`
audit (whose ServerApp runs in a thread SIGINT never reached) stops instead of hanging."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import fedleak

SRC = os.path.dirname(os.path.dirname(fedleak.__file__))
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
    "OMP_NUM_THREADS": "1",
}


def test_interrupted_command_exits_130_without_teardown() -> None:
    """After the command unwound, `main` exits 130 at once: atexit work (here a marker, in real
    runs PyTorch's and Ray's teardown, seconds on a busy machine) is skipped."""
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('TEARDOWN', flush=True))\n"
        "import fedleak.catalogue as c\n"
        "def stop():\n"
        "    raise KeyboardInterrupt\n"
        "c.datasets = stop\n"
        "from fedleak.cli.app import main\n"
        "sys.argv = ['fedleak', 'datasets']\n"
        "main()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert out.returncode == 130, out.stderr
    assert "interrupted: results written so far are kept" in out.stderr
    assert "TEARDOWN" not in out.stdout and "Traceback" not in out.stderr


def test_ordinary_exit_keeps_the_teardown() -> None:
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('TEARDOWN', flush=True))\n"
        "from fedleak.cli.app import main\n"
        "sys.argv = ['fedleak', 'attacks', 'no-such-attack']\n"
        "main()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert out.returncode == 2 and "TEARDOWN" in out.stdout


def _default_sigint() -> None:
    """Ctrl-C as a terminal delivers it: a shell that starts a job in the background without job
    control (``cmd &`` in a script, as some CI runners do) passes SIGINT on ignored, and an
    ignored Ctrl-C stays ignored by design."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def sigint_handler():
    """Python's own SIGINT handler in this process for the test, whatever the runner set."""
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_sigint_reaches_the_server_thread(sigint_handler) -> None:
    """The handler raises KeyboardInterrupt in the registered thread as well as in this one."""
    pytest.importorskip("flwr")
    from fedleak.integrations.flower.engine import _stop_server_on_sigint

    started, stopped = threading.Event(), threading.Event()
    body: list[int] = []

    def server() -> None:
        body.append(threading.get_ident())
        started.set()
        try:
            for _ in range(3000):  # 30 s at most; Python code, as an attack loop is
                time.sleep(0.01)
        except KeyboardInterrupt:
            stopped.set()

    thread = threading.Thread(target=server, daemon=True)
    thread.start()
    assert started.wait(10)
    before = signal.getsignal(signal.SIGINT)
    flwr_level = logging.getLogger("flwr").level
    stop = _stop_server_on_sigint(body)
    try:
        with pytest.raises(KeyboardInterrupt), stop:
            signal.raise_signal(signal.SIGINT)
            time.sleep(5)  # the handler runs before this returns
    finally:
        logging.getLogger("flwr").setLevel(flwr_level)
    thread.join(10)
    assert stopped.is_set() and stop.interrupted
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.slow
def test_flower_audit_stops_on_sigint(tmp_path: Path) -> None:
    """Old code: the ServerApp thread kept attacking, then waited for stopped clients forever."""
    pytest.importorskip("flwr")
    cfg = tmp_path / "audit.yaml"
    cfg.write_text(
        "seed: 0\n"
        "data: {name: digits, size: 8}\n"
        "model: {name: mlp}\n"
        "federation:\n"
        "  rounds: 2\n"
        "  clients: [{images: 2, batch_size: 2}, {images: 2, batch_size: 2}]\n"
        "audit: {every: 1, clients: [0, 1], attack: inverting-gradients,"
        " options: {iterations: 100000}}\n"
    )
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedleak", "audit", str(cfg), "--engine", "flower",
         "--out", str(out), "--no-report"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
        start_new_session=True, preexec_fn=_default_sigint,
    )
    try:
        deadline = time.monotonic() + 240
        while not (out / "config.json").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "the audit never started"
            time.sleep(0.2)
        time.sleep(3)  # training or the first attack under way, in the ServerApp's thread
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C: the whole process group
        _, err = proc.communicate(timeout=120)  # old code: never returned
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # this process if it hung; Ray's leftovers
        proc.wait(10)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: results written so far are kept" in err
    assert "Traceback" not in err, err[-2000:]
