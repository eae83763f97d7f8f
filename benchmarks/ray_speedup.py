"""Speed-up of the Ray engine over the sequential (local) audit, and the Ray per-task overhead.

One small audit (lfw-faces 16x16, a small convnet, 4 clients x 2 rounds = 8 attacks) runs with
``engine: local`` (the attacks one after the other, one torch thread) and with ``engine: ray``
on a local Ray of ``--cpus`` CPUs (one CPU and one torch thread per attack), alternating, so a
busy machine slows both alike. The federation itself is the same sequential work in both.
Ray is started once, before the runs: its start-up and the workers' first imports are timed
apart (``cold``), not in the speed-up. The per-task overhead is the round trip of a task that
does nothing (submit, schedule, run, fetch), one at a time and many in flight.

    OMP_NUM_THREADS=1 python benchmarks/ray_speedup.py [--repeats 2] [--iterations 60]

Prints a table; the numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fedleak.audit import load_config, run_audit
from fedleak.engines import EngineConfig
from fedleak.engines.ray import OBJECT_STORE_BYTES, RayEngine, require_ray


def audit_config(engine: str, iterations: int) -> dict:
    return {
        "seed": 0,
        "data": {"name": "lfw-faces", "size": 16},
        "model": {"name": "convnet", "options": {"widths": [8, 16], "pool_after": [0]}},
        "federation": {
            "rounds": 2,
            "clients": [{"images": 2, "batch_size": 2} for _ in range(4)],
            "train": {"protocol": "fedavg", "lr": 0.05, "local_epochs": 1},
        },
        "audit": {"clients": "all", "options": {"iterations": iterations}},
        "engine": {"name": engine},
    }


def run_once(engine: str, iterations: int, root: Path) -> tuple[float, float]:
    """Wall seconds of one audit, and the sum of its attacks' own seconds."""
    out = Path(tempfile.mkdtemp(prefix=f"{engine}-", dir=root))
    path = out / "audit.yaml"
    import json

    path.write_text(json.dumps(audit_config(engine, iterations)))
    cfg = load_config(path)
    t0 = time.perf_counter()
    run_audit(cfg, out / "run")
    wall = time.perf_counter() - t0
    from fedleak.report import read_jsonl

    attacks = sum(r["seconds"] for r in read_jsonl(out / "run" / "leakage.jsonl"))
    return wall, attacks


def noop() -> int:
    """A task that does nothing (but report its niceness): its round trip is Ray's own cost."""
    return os.nice(0)


def overhead(engine: RayEngine, n: int) -> tuple[float, float]:
    """Per-task seconds: one task at a time (latency), and ``n`` in flight (throughput)."""
    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        engine.submit(("one", i), noop)
        while engine.in_flight:
            engine.wait()
        lat.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(n):
        engine.submit(("many", i), noop)
    while engine.in_flight:
        engine.wait()
    return statistics.median(lat), (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--tasks", type=int, default=50)
    ap.add_argument("--niceness", type=int, default=0,
                    help="Ray workers' niceness (Ray's own default is 15; the local engine runs "
                    "at the caller's, 0 here: the default compares like with like)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ray = require_ray()
    root = Path(tempfile.mkdtemp(prefix="ray-speedup-"))
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    ray.init(num_cpus=args.cpus, object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False,
             logging_level=logging.ERROR, log_to_driver=False,
             _system_config={"worker_niceness": args.niceness})
    started = time.perf_counter() - t0
    engine = RayEngine(EngineConfig(name="ray"))  # joins the Ray started above
    try:
        t0 = time.perf_counter()
        for i in range(args.cpus):  # the workers' first import of torch and fedleak
            engine.submit(("warm", i), noop)
        nice = set()
        while engine.in_flight:
            nice |= {f.value for f in engine.wait()}
        warm = time.perf_counter() - t0
        cold_wall, _ = run_once("ray", args.iterations, root)  # workers import the attacks
        rows = []
        for _ in range(args.repeats):
            rows.append(("local", *run_once("local", args.iterations, root)))
            rows.append(("ray", *run_once("ray", args.iterations, root)))
        latency, per_task = overhead(engine, args.tasks)
    finally:
        engine.close()
        ray.shutdown()
    print(f"machine: {os.cpu_count()} cores, load average {load0:.1f} at the start and "
          f"{os.getloadavg()[0]:.1f} at the end (others' jobs share the cores); "
          f"Ray CPUs {args.cpus}; "
          f"8 attacks x {args.iterations} iterations per audit")
    try:
        autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        autogroup = False
    note = ("on: busy sessions share the cores equally, so one session gains little from "
            "parallel tasks while the others are busy") if autogroup else "off"
    print(f"Ray workers' niceness {sorted(nice)} (this process {os.nice(0)}); "
          f"kernel autogroup {note}")
    print(f"Ray start {started:.1f} s; first tasks (worker start) {warm:.1f} s; "
          f"first Ray audit (cold workers) {cold_wall:.1f} s")
    print(f"{'run':>6} {'engine':>6} {'wall s':>8} {'attack s (sum)':>15}")
    for i, (eng, wall, att) in enumerate(rows):
        print(f"{i // 2 + 1:>6} {eng:>6} {wall:>8.1f} {att:>15.1f}")
    local = [w for e, w, _ in rows if e == "local"]
    on_ray = [w for e, w, _ in rows if e == "ray"]
    ratios = [a / b for a, b in zip(local, on_ray, strict=True)]
    busy = [a / w for e, w, a in rows if e == "ray"]
    print(f"attacks in flight on Ray (attack seconds / wall): "
          f"{', '.join(f'{b:.2f}' for b in busy)}")
    print(f"speed-up local/ray per pair: {', '.join(f'{r:.2f}x' for r in ratios)}; "
          f"median {statistics.median(ratios):.2f}x")
    print(f"Ray per-task overhead: {latency * 1e3:.1f} ms round trip one at a time, "
          f"{per_task * 1e3:.1f} ms per task with {args.tasks} in flight")


if __name__ == "__main__":
    main()
