"""One run per folder: a second run on the same --out stops at once, naming the first."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedleak.errors import ConfigError
from fedleak.report import RunLock


def test_second_lock_in_another_process_is_refused(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from fedleak.report import RunLock; "
         f"lock = RunLock({str(tmp_path)!r}); print('held', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        expected = f"in use by another fedleak run \\(pid {holder.pid}\\)"
        with pytest.raises(ConfigError, match=expected):
            RunLock(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    RunLock(tmp_path).release()  # a killed run leaves nothing locked


def test_lock_is_released_when_the_run_ends(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        assert (tmp_path / ".fedleak.lock").read_text().strip() == str(os.getpid())
    RunLock(tmp_path).release()


def test_audit_refuses_a_folder_in_use(tmp_path: Path) -> None:
    from fedleak.audit import load_config, run_audit

    cfg = load_config(None, ["federation.rounds=1"])
    out = tmp_path / "run"
    with RunLock(out), pytest.raises(ConfigError, match="in use by another fedleak run"):
        run_audit(cfg, out)
    assert not (out / "config.json").exists()  # nothing written by the refused run


def test_failed_attack_never_touches_an_existing_run(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedleak.cli.app import app

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"command": "attack"}\n')
    (out / "metrics.json").write_text("{}\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    runner = CliRunner()
    for args in (["--num-images", "0"], ["--num-images", "1", "--option", "nope=1"],
                 ["--num-images", "1", "--overwrite", "--attack", "no-such-attack"]):
        r = runner.invoke(app, ["--quiet", "attack", *args, "--out", str(out)])
        assert r.exit_code == 2, r.output
    r = runner.invoke(app, ["--quiet", "attack", "--num-images", "1", "--out", str(out)])
    assert r.exit_code == 2 and "--overwrite" in r.output
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".fedleak.lock"} == before
