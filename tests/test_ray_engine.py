"""The Ray engine on a real two-node Ray cluster on this machine (loopback), started and stopped
here: same records as the local engine, a killed worker loses no cell, a killed driver resumes.

Every process the cluster starts carries a marker in its environment; the teardown stops those
processes by PID (never ``ray stop``, which would stop other users' clusters too).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch

import fedleak.audit.runner as audit_runner
from fedleak.audit import load_config, run_audit
from fedleak.engines import InlineEngine
from fedleak.errors import ConfigError
from fedleak.report import read_jsonl
from fedleak.sweep import load_sweep_config, run_sweep

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")

TINY = {  # two cells; semantic leakage on, so the classifier travels to the workers
    "data": {"name": "digits", "size": 8, "clients": 2, "images_per_client": 12,
             "test_images": 40},
    "model": {"name": "latent-net", "options": {"width": 2, "pool": 2}},
    "fl": {"rounds": 1, "local_epochs": 1, "batch_size": 6},
    "attack": {"options": {"iterations": 20}, "num_images": 2, "local_epochs": 2},
    "semantic": {"epochs": 1, "options": {"widths": [4], "pool_after": [0]}},
    "defenses": [{"name": "none"}, {"name": "prune", "grid": {"keep": [0.5]}}],
}
AUDIT = {
    "seed": 0,
    "data": {"name": "lfw-faces", "size": 16},
    "model": {"name": "convnet", "options": {"widths": [4, 8], "pool_after": [0]}},
    "federation": {
        "rounds": 2,
        "clients": [{"images": 1, "batch_size": 1}, {"images": 2, "batch_size": 2}],
        "train": {"protocol": "fedavg", "lr": 0.05, "local_epochs": 1},
    },
    "audit": {"clients": "all", "options": {"iterations": 6}},
}
NUMBERS = ("accuracy", "f1", "psnr", "ssim", "mse", "flat_psnr", "semantic_accuracy",
           "label_accuracy", "attack_loss")


def _quiet(_msg):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _marked(marker: str) -> list[int]:
    """PIDs of the processes whose environment carries ``marker`` (ours, by construction)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"FEDLEAK_TEST_RAY={marker}".encode() in env.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _stop(pids: list[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(1.0)


@pytest.fixture(scope="module")
def cluster():
    """A head (1 CPU) and a second node (1 CPU) on 127.0.0.1; yields (address, env, marker)."""
    pytest.importorskip("ray")
    marker = uuid.uuid4().hex
    tmp = tempfile.mkdtemp(prefix="fr", dir="/tmp")  # short: Ray's socket paths must fit
    env = {**os.environ, "FEDLEAK_TEST_RAY": marker, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "RAY_USAGE_STATS_ENABLED": "0"}
    port = _free_port()
    common = ["--num-cpus", "1", "--object-store-memory", "100000000", "--disable-usage-stats",
              "--dashboard-agent-listen-port", str(_free_port()),
              "--dashboard-agent-grpc-port", str(_free_port()),
              "--metrics-export-port", str(_free_port())]
    head = [str(RAY), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
            "--include-dashboard=false", "--dashboard-port", str(_free_port()),
            "--ray-client-server-port", str(_free_port()), "--temp-dir", tmp, *common]
    node = [str(RAY), "start", "--address", f"127.0.0.1:{port}", *common]
    try:
        for cmd in (head, node):
            subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)
        yield f"127.0.0.1:{port}", env, marker
    finally:
        _stop(_marked(marker))
        subprocess.run(["rm", "-rf", tmp], check=False)


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    run_sweep(TINY, out, workers=1, log=_quiet)
    return {r["id"]: r for r in read_jsonl(out / "sweep.jsonl")}


@pytest.fixture(scope="module")
def local_audit(tmp_path_factory):
    """The audit of AUDIT on the local engine, one torch thread (as each Ray task)."""
    tmp = tmp_path_factory.mktemp("audit")
    path = tmp / "audit.json.yaml"
    path.write_text(json.dumps(AUDIT))  # JSON is YAML
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_audit(load_config(path), tmp / "local")
    finally:
        torch.set_num_threads(n)
    return path, tmp / "local"


def ray_config(address: str, base=TINY) -> dict:
    return {**copy.deepcopy(base), "engine": {"name": "ray", "address": address}}


def same_records(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k, ref in want.items():
        for key in NUMBERS:
            if ref.get(key) is not None:
                assert got[k][key] == pytest.approx(ref[key], rel=1e-6, abs=1e-9), (k, key)


def test_missing_ray_names_the_extra(monkeypatch):
    from fedleak.engines import EngineConfig, make_engine

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[ray\]'"):
        make_engine(EngineConfig(name="ray"))


def test_engine_config_is_checked():
    with pytest.raises(ConfigError, match="engine.name"):
        load_sweep_config({**TINY, "engine": {"name": "dask"}})
    with pytest.raises(ConfigError, match="engine.address"):
        load_sweep_config({**TINY, "engine": {"name": "ray", "address": "no port"}})
    with pytest.raises(ConfigError, match="num_cpus"):
        load_sweep_config({**TINY, "engine": {"name": "ray", "num_cpus": 0}})


@pytest.mark.slow
def test_sweep_on_two_nodes_equals_local_and_survives_a_killed_worker(
    cluster, local_sweep, tmp_path
):
    address, _, marker = cluster
    killed: list[int] = []
    statuses: list = []
    stop = threading.Event()

    def kill_first_task() -> None:  # SIGKILL the first worker seen running a cell, once
        while not stop.is_set() and not killed:
            for pid in _marked(marker):
                if _title(pid).startswith("ray::fedleak_task"):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_first_task, daemon=True)
    killer.start()
    try:
        summary = run_sweep(ray_config(address), tmp_path, log=_quiet, status=statuses.append)
    finally:
        stop.set()
        killer.join(5)
    assert killed, "no Ray worker was seen running a cell"
    assert summary["failed"] == [] and summary["ran"] == 2  # the killed cell was rerun
    records = read_jsonl(tmp_path / "sweep.jsonl")
    assert len(records) == 2
    same_records({r["id"]: r for r in records}, local_sweep)
    for r in records:
        assert (tmp_path / r["grid"]).is_file()  # written by the driver from the task's bytes
    place = json.loads((tmp_path / "placement.json").read_text())
    assert {t["task"] for t in place["tasks"]} == set(local_sweep)
    assert killed[0] not in {t["pid"] for t in place["tasks"]}
    assert len(place["nodes"]) == 2  # one cell per one-CPU node
    first, last = statuses[0], statuses[-1]  # what the progress bar shows
    assert (first.total, first.done, first.running, first.queued) == (2, 0, 2, 0)
    assert (last.done, last.running, last.failed) == (2, 0, 0) and last.last_seconds > 0


@pytest.mark.slow
def test_killed_driver_resumes_only_the_missing_cells(cluster, tmp_path):
    address, env, _ = cluster
    cfg = {**ray_config(address), "seeds": [0, 1]}  # four cells, two at a time
    path = tmp_path / "sweep.json.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    out = tmp_path / "run"
    driver = subprocess.Popen(
        [sys.executable, "-m", "fedleak", "-q", "sweep", str(path), "--out", str(out),
         "--no-report"], env={**env, "FEDLEAK_TEST_RAY": "driver"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 150
        while not read_jsonl(out / "sweep.jsonl") and time.monotonic() < deadline:
            assert driver.poll() is None, "the driver ended before writing a cell"
            time.sleep(0.05)
    finally:
        driver.kill()
        driver.wait()
    before = [r["id"] for r in read_jsonl(out / "sweep.jsonl")]
    assert 1 <= len(before) < 4
    # the driver may die between a cell's record and its placement entry, so count the
    # placement entries it left rather than assume one per record
    placed = out / "placement.json"
    n_placed = len(json.loads(placed.read_text())["tasks"]) if placed.is_file() else 0
    summary = run_sweep(path, out, resume=True, log=_quiet)
    assert summary["skipped"] == len(before) and summary["ran"] == 4 - len(before)
    after = [r["id"] for r in read_jsonl(out / "sweep.jsonl")]
    assert after[: len(before)] == before and len(set(after)) == 4
    place = json.loads((out / "placement.json").read_text())
    resumed = [t["task"] for t in place["tasks"]][n_placed:]
    assert sorted(resumed) == sorted(set(after) - set(before))  # only the missing ones ran


def _audit_key(r: dict) -> tuple:
    return r["round"], r.get("client")


def same_audit(got: Path, want: Path) -> None:
    for name in ("leakage.jsonl", "rounds.jsonl"):
        a, b = read_jsonl(got / name), read_jsonl(want / name)
        assert sorted(map(_audit_key, a)) == sorted(map(_audit_key, b)) and b, name
        same_records({_audit_key(r): r for r in a}, {_audit_key(r): r for r in b})


class _SlowRound2(InlineEngine):
    """Runs round 1's attacks at once, holds round 2's, and dies (like a killed driver) when
    the run waits for them: a cluster still busy with the last round's attacks."""

    def _collect(self, block):
        if self._queue and self._queue[0][0][0] == 1:
            return super()._collect(block)
        if block:
            raise KeyboardInterrupt
        return []


def test_killed_audit_driver_loses_no_attack(local_audit, tmp_path, monkeypatch):
    path, ref = local_audit
    out = tmp_path / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as the reference: 8 batched restarts round by thread count
    try:
        with monkeypatch.context() as m:
            m.setattr(audit_runner, "make_engine", lambda cfg, **kw: _SlowRound2())
            with pytest.raises(KeyboardInterrupt):
                run_audit(load_config(path), out)
    finally:
        torch.set_num_threads(n)
    # both rounds trained, but state.pt stays at round 1: round 2's attacks were in flight
    assert [r["round"] for r in read_jsonl(out / "rounds.jsonl")] == [1, 2]
    assert torch.load(out / "state.pt", weights_only=True)["round"] == 1
    assert {r["round"] for r in read_jsonl(out / "leakage.jsonl")} == {1}
    calls = []
    real = audit_runner.audit_update
    monkeypatch.setattr(audit_runner, "audit_update",
                        lambda *a, **k: calls.append(a[1:3]) or real(*a, **k))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_audit(load_config(path), out, resume=True)
    finally:
        torch.set_num_threads(n)
    assert sorted(calls) == [(2, 0), (2, 1)]  # only the missing attacks ran again
    same_audit(out, ref)


@pytest.mark.slow
def test_audit_cli_on_two_nodes_equals_local(cluster, local_audit, tmp_path):
    address, env, _ = cluster
    path, ref = local_audit
    done = subprocess.run(
        [sys.executable, "-m", "fedleak", "audit", str(path), "--out",
         str(tmp_path / "ray"), "--ray-address", address, "--no-report"],
        env={**env, "FEDLEAK_TEST_RAY": "driver"}, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "attacks" in done.stderr and "4 audited updates" in done.stdout  # the cluster bar
    same_audit(tmp_path / "ray", ref)
    state = torch.load(tmp_path / "ray" / "state.pt", weights_only=True)
    assert state["round"] == AUDIT["federation"]["rounds"]
    place = json.loads((tmp_path / "ray" / "placement.json").read_text())
    assert len(place["tasks"]) == 4 and all(t["engine"] == "ray" for t in place["tasks"])
    config = json.loads((tmp_path / "ray" / "config.json").read_text())
    assert config["audit_config"]["engine"]["address"] == address
