"""Rounds per minute and audit cost per round on Flower's Simulation Engine (docs/flower.md).

    python examples/flower/scaling.py --clients 10 50 --rounds 3 --out fedleak-runs/scaling

Each client holds 3 lfw-faces images (16x16), trains one FedAvg epoch of a small ConvNet and
sends its model; Ray runs the clients with one CPU each. Every setting runs twice: without an
audit and with the server attacking one client per round (Inverting Gradients, level C); the
difference per round is the audit's cost. The in-process engine runs the same federation for
reference. Steady-state numbers leave out round 1 (Ray start-up, data loading in the actors).
``--threads 1`` (the default) runs this process's torch single-threaded: on a loaded machine a
2-thread OpenMP pool in the main thread can make an attack 10-30x slower, while Flower's
ServerApp thread and the Ray actors (one CPU each) already run single-threaded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from fedleak.audit import load_config, run_audit
from fedleak.integrations.flower import run_flower_audit
from fedleak.report import read_jsonl


def config(clients: int, rounds: int, audit: bool, iterations: int):
    """The measured federation: ``clients`` x 3 images, one audited client per round or none."""
    return load_config(
        None,
        [
            "data.size=16",
            'model.options={"widths": [8, 16], "pool_after": [0]}',
            f"federation.rounds={rounds}",
            "federation.clients=" + json.dumps([{"images": 3, "batch_size": 3}] * clients),
            'federation.train={"protocol": "fedavg", "lr": 0.05, "local_epochs": 1}',
            "audit.clients=[0]",
            f"audit.start={1 if audit else rounds + 1}",
            f'audit.options={{"iterations": {iterations}}}',
        ],
    )


def measure(engine: str, clients: int, rounds: int, audit: bool, iterations: int, out: Path):
    """Wall time of the run and of each round (from the engine's own round log lines)."""
    shutil.rmtree(out, ignore_errors=True)
    stamps: dict[int, float] = {}

    def log(msg: str) -> None:
        if msg.startswith("round ") and "test accuracy" in msg:
            stamps[int(msg.split()[1].rstrip(":"))] = time.perf_counter()

    cfg = config(clients, rounds, audit, iterations)
    t0 = time.perf_counter()
    if engine == "flower":
        run_flower_audit(cfg, out, log=log)
    else:
        run_audit(cfg, out, log=log)
    total = time.perf_counter() - t0
    ends = [stamps[r] for r in sorted(stamps)]
    steady = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    per_round = sum(steady) / len(steady) if steady else float("nan")
    attacks = [r["seconds"] for r in read_jsonl(out / "leakage.jsonl")]
    return {
        "engine": engine,
        "clients": clients,
        "audit": audit,
        "total_s": round(total, 1),
        "first_round_s": round(ends[0] - t0, 1) if ends else None,
        "steady_round_s": round(per_round, 2),
        "rounds_per_min": round(60 / per_round, 2) if steady else None,
        "attack_s_per_round": round(sum(attacks) / len(attacks), 2) if attacks else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=50, help="attack iterations per audit")
    ap.add_argument("--engines", nargs="+", default=["flower", "in-process"])
    ap.add_argument("--out", type=Path, default=Path("fedleak-runs/scaling"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for n in args.clients:
        for engine in args.engines:
            for audit in (False, True):
                name = f"{engine}-{n}-{'audit' if audit else 'plain'}"
                row = measure(engine, n, args.rounds, audit, args.iterations, args.out / name)
                rows.append(row)
                print(json.dumps(row), flush=True)
    (args.out / "scaling.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
