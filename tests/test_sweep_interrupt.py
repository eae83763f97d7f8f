"""A sweep stopped mid-run (SIGINT or SIGKILL) resumes with --resume: no cell lost, none run
twice, and the same results as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fedleak.report import read_jsonl

CONFIG = {
    "data": {"name": "digits", "size": 8, "clients": 2, "images_per_client": 12,
             "test_images": 40},
    "model": {"name": "latent-net", "options": {"width": 2, "pool": 2}},
    "fl": {"rounds": 1, "local_epochs": 1, "batch_size": 6},
    "attack": {"options": {"iterations": 10}, "num_images": 2, "local_epochs": 2},
    "semantic": {"epochs": 1, "options": {"widths": [4], "pool_after": [0]}},
    "defenses": [{"name": "none"}, {"name": "prune", "grid": {"keep": [0.1, 0.5, 0.9]}}],
}
# what depends on the machine, not on the cell: wall times


def _stable(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.endswith("seconds")}


def _run(config: Path, out: Path, *extra: str, sig: int | None = None) -> int:
    """Run the sweep CLI; with ``sig``, send it once the first cell is on disk."""
    cmd = [sys.executable, "-m", "fedleak", "--quiet", "sweep", str(config), "--out", str(out),
           "--workers", "1", "--no-report", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                        signal.SIG_DFL))
    try:
        if sig is None:
            return proc.wait(timeout=600)
        deadline = time.monotonic() + 600
        while not read_jsonl(out / "sweep.jsonl"):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        proc.send_signal(sig)
        sent = time.monotonic()
        rc = proc.wait(timeout=60)
        if sig == signal.SIGINT:
            assert time.monotonic() - sent < 30  # it stops, it does not finish the sweep
        return rc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _cells(out: Path) -> dict[str, dict]:
    records = read_jsonl(out / "sweep.jsonl")
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), f"a cell ran twice: {ids}"
    return {r["id"]: _stable(r) for r in records}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    root = tmp_path_factory.mktemp("sweep-ref")
    config = root / "sweep.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    assert _run(config, root / "ref") == 0
    return config, _cells(root / "ref")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_interrupted_sweep_resumes_to_the_same_results(reference, tmp_path, sig) -> None:
    config, expected = reference
    out = tmp_path / "run"
    rc = _run(config, out, sig=sig)
    assert rc in (130, -signal.SIGKILL, 1, 2)  # interrupted or killed
    partial = _cells(out)
    assert 0 < len(partial) < len(expected)
    assert _run(config, out, "--resume") == 0
    final = _cells(out)
    assert final.keys() == expected.keys()
    assert final == expected
