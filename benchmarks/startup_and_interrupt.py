"""How fast the CLI answers and how fast Ctrl-C stops an audit (issue 17), printed, never asserted.

Part 1: CPU-seconds (user + sys of the child, median of ``--repeats`` runs) of commands that must
answer before any heavy work: ``--help``, the listings, an early error. CPU time, not wall time,
so that other processes on a shared machine barely move it.

Part 2: an audit on a tiny federation (``--engine`` flower and/or local) is sent SIGINT on its
whole process group, as a terminal's Ctrl-C does, once its run folder exists; prints the seconds
from the signal to the process's exit, its exit code and what the run folder kept.

    python benchmarks/startup_and_interrupt.py                      # both parts
    python benchmarks/startup_and_interrupt.py --engines flower local --after 8
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = ["--help", "datasets", "attacks", "attacks inverting-gradients", "audit missing.yaml"]

AUDIT = """seed: 0
data: {name: lfw-faces, size: 32}
model: {name: convnet, options: {head: flatten}}
federation:
  rounds: 3
  clients:
    - {images: 1, batch_size: 1}
    - {images: 4, batch_size: 4}
  train: {protocol: fedavg, lr: 0.05, local_epochs: 1, optimizer: sgd, bn_mode: train}
audit: {every: 1, start: 1, clients: [0, 1], attack: inverting-gradients,
        options: {iterations: 300}, prior: mean}
"""


def fedleak_cmd() -> list[str]:
    """The ``fedleak`` beside this interpreter, else ``python -m fedleak``."""
    exe = Path(sys.executable).with_name("fedleak")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "fedleak"]


def cpu_seconds(args: list[str], env: dict[str, str]) -> float:
    """User + sys CPU-seconds of one child run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def part1(repeats: int, env: dict[str, str]) -> None:
    print(f"[1] CPU-seconds, median of {repeats} (load {os.getloadavg()[0]:.1f})")
    for cmd in COMMANDS:
        runs = [cpu_seconds(fedleak_cmd() + cmd.split(), env) for _ in range(repeats)]
        print(f"  fedleak {cmd:<30} {statistics.median(runs):5.2f} CPU-s  "
              f"(runs {', '.join(f'{r:.2f}' for r in runs)})", flush=True)


def interrupt(engine: str, after: float, env: dict[str, str], tmp: Path) -> None:
    """SIGINT an audit's process group ``after`` s after its run folder appears; time the exit."""
    cfg, out = tmp / "audit.yaml", tmp / f"run-{engine}"
    cfg.write_text(AUDIT)
    shutil.rmtree(out, ignore_errors=True)
    log = (tmp / f"{engine}.log").open("w")
    p = subprocess.Popen(fedleak_cmd() + ["audit", str(cfg), "--engine", engine, "--out",
                                           str(out)], env=env, stdout=log, stderr=log,
                         start_new_session=True)
    while not (out / "config.json").exists():
        if p.poll() is not None:
            print(f"  {engine}: the audit ended before it could be interrupted "
                  f"(exit {p.returncode}; see {log.name})")
            return
        time.sleep(0.1)
    time.sleep(after)
    sent = time.perf_counter()
    os.killpg(p.pid, signal.SIGINT)
    try:
        rc: int | str = p.wait(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        rc = "killed after 240 s"
    seconds = time.perf_counter() - sent
    kept = {f: sum(1 for _ in (out / f).open()) if (out / f).exists() else 0
            for f in ("rounds.jsonl", "leakage.jsonl")}
    print(f"  --engine {engine:<7} SIGINT -> exit {seconds:5.1f} s, exit code {rc}, kept "
          f"{kept['rounds.jsonl']} round(s) and {kept['leakage.jsonl']} attack(s) "
          f"(load {os.getloadavg()[0]:.1f})", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--engines", nargs="*", default=["flower", "local"],
                    help="audit engines to interrupt (none: part 1 only)")
    ap.add_argument("--after", type=float, default=15.0,
                    help="seconds after the run folder appears before SIGINT")
    args = ap.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    part1(args.repeats, env)
    if args.engines:
        print(f"[2] SIGINT to an audit's process group, {args.after:.0f} s into the attacks")
        with tempfile.TemporaryDirectory() as d:
            for engine in args.engines:
                interrupt(engine, args.after, env, Path(d))


if __name__ == "__main__":
    main()
