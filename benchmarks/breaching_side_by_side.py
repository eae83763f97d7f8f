"""fedleak's Inverting Gradients vs breaching 0.1.2's, side by side on the same problem.

Why: breaching is the reference implementation users compare against; an IG iteration of
fedleak should cost no more than one of breaching on the same model, images and gradient. The
problem comes from the peer harness (``../shared/peer-breaching/setting.py``: untrained ConvNet
32-64-128-128 with BN in eval mode, lfw faces 32x32 grey, one FedSGD gradient, labels given).
breaching runs in its own venv as a subprocess (``run_breaching_threads.py --threads 1``),
fedleak in a fresh subprocess of this venv with 1 thread (same cold start), alternately, so
both see the same machine load.

Three clocks: wall ms/iter (attack wall time / iterations, breaching's definition, setup
included), CPU ms/iter (the process's CPU time over the attack / iterations) and the median
wall time of one step (breaching: its optimizer-step clock; fedleak: its per-iteration
progress calls), which leaves out the one-time setup. The per-iteration figure that is
robust on a busy machine is the marginal CPU cost: every run is repeated with ``--short``
iterations and (CPU(long) - CPU(short)) / (long - short) cancels the setup (imports, model
copies, the first call's warm-up) of both tools. On a shared machine the CPU
clock is the fair one (a 1-thread run's CPU time barely moves when other processes run);
ratios are medians over rounds. PSNR: the harness's metric (Hungarian pairing, [0, 1]).
Also timed: fedleak with 4 batched restarts against 1 restart on the same problem, every
restart to the end (``restarts=4``: compute-bound on one CPU thread, ~R runs) and with
``select_after=0.125`` (only the lowest-loss restart goes on after 1/8 of the iterations);
the last lines print ``4 restarts / 1 run = X.XXx`` per batch on the CPU clock (whole runs,
setup included: what a user waits for), ``--no-breaching`` times only these.
``benchmarks/restart_paths.py`` shows why full restarts stay near R runs on one thread.

    python benchmarks/breaching_side_by_side.py                      # 300 iterations, 3 rounds
    python benchmarks/breaching_side_by_side.py --iterations 100 --rounds 1 --batches 1
    python benchmarks/breaching_side_by_side.py --no-breaching --iterations 250 --short 0
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import fedleak
from fedleak.attacks.inverting import InvertingGradients
from fedleak.fl.threat import ThreatModel
from fedleak.fl.update import ClientUpdate

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PEER = ROOT.parent / "shared" / "peer-breaching"


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def load_setting(peer: Path) -> Any:
    """The harness's setting.py (data, model, gradient, metric), imported from ``peer``."""
    if not (peer / "setting.py").is_file():
        raise SystemExit(f"no peer harness at {peer} (expected setting.py); pass --peer DIR")
    sys.path.insert(0, str(peer))
    import setting  # type: ignore[import-not-found]

    return setting


def run_breaching(peer: Path, python: str, batch: int, head: str, iterations: int,
                  tv: float | None) -> dict[str, Any]:
    """One breaching run (1 thread) as a subprocess; its JSON line plus CPU ms/iter."""
    cmd = [python, str(peer / "run_breaching_threads.py"), "--threads", "1", "--batch",
           str(batch), "--head", head, "--iterations", str(iterations), "--wait-idle", "0",
           "--retries", "0"]
    if tv is not None:
        cmd += ["--tv", repr(tv)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"breaching run failed ({out.returncode}): {out.stderr[-600:]}")
    d = json.loads(out.stdout.strip().splitlines()[-1])
    n = max(1, d["iterations_run"])
    return {"ms": d["ms_per_iter"], "cpu_ms": 1000 * d["own_cpu_cores"] * d["attack_wall_s"] / n,
            "step_ms": d["ms_per_iter_median"], "psnr": d["psnr"], "tv": d["tv"]}


#: inverting-gradients' own ``select_after`` default (what ``restarts=4`` alone runs)
DEFAULT_SELECT_AFTER = InvertingGradients.select_after
TOOLS = {  # name -> (restarts, select_after) of fedleak's inverting-gradients
    "fedleak": (1, None),
    "fedleak R=4": (4, None),
    "fedleak R=4 sel": (4, 0.125),
}


def run_fedleak_subprocess(peer: Path, batch: int, head: str, iterations: int, tool: str,
                           tv: float | None) -> dict[str, Any]:
    """One fedleak run in a fresh process of this interpreter (1 thread)."""
    cmd = [sys.executable, __file__, "--worker", tool, "--peer", str(peer), "--batches",
           str(batch), "--head", head, "--iterations", str(iterations)]
    if tv is not None:
        cmd += ["--tv", repr(tv)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"fedleak run failed ({out.returncode}): {out.stderr[-600:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_fedleak(setting: Any, batch: int, head: str, iterations: int, restarts: int,
                tv: float | None, select_after: float | None = None) -> dict[str, Any]:
    """One fedleak IG run (1 thread) on the harness's problem."""
    problem = setting.make_problem(batch, head)  # sets the harness's threads: reset below
    torch.set_num_threads(1)
    model = problem["model"]
    names = [n for n, _ in model.named_parameters()]
    update = ClientUpdate(kind="gradient", tensors=dict(zip(names, problem["gradients"],
                                                            strict=True)), num_samples=batch)
    options: dict[str, Any] = {"iterations": iterations, "restarts": restarts,
                               "select_after": select_after}
    if tv is not None:
        options["tv"] = tv
    stamps: list[float] = []  # one per iteration, like breaching's optimizer-step clock

    def progress(_done: int, _loss: float) -> None:
        stamps.append(time.perf_counter())

    setting.seed_attack()
    t0, c0 = time.perf_counter(), _cpu_s()
    rec = fedleak.attack("inverting-gradients", model, update,
                         threat=ThreatModel(labels=problem["y"]), num_images=batch,
                         image_shape=(1, setting.IMAGE_SIZE, setting.IMAGE_SIZE),
                         progress=progress, checkpoint_every=1, **options)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    n = max(1, rec.iterations)
    steps = [1000 * (b - a) for a, b in zip(stamps, stamps[1:], strict=False)]
    return {"ms": 1000 * wall / n, "cpu_ms": 1000 * cpu / n,
            "step_ms": statistics.median(steps) if steps else float("nan"),
            "psnr": setting.psnr_hungarian(rec.images, problem["x"])["psnr"],
            "tv": rec.extras.get("tv")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians)")
    ap.add_argument("--short", type=int, default=None,
                    help="iterations of the short runs (default: iterations // 5; 0: none)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--head", default="gap", choices=["gap", "flatten"])
    ap.add_argument("--tv", type=float, default=None,
                    help="TV weight for both tools (default: each tool's own IG default)")
    ap.add_argument("--peer", type=Path, default=DEFAULT_PEER, help="the peer harness folder")
    ap.add_argument("--peer-python", default=os.environ.get("PEER_PYTHON",
                                                            "/tmp/peer-venv/bin/python"))
    ap.add_argument("--no-breaching", action="store_true",
                    help="time fedleak's restarts only (4 restarts / 1 run), no breaching runs")
    ap.add_argument("--tools", nargs="+", choices=list(TOOLS), default=list(TOOLS),
                    help="fedleak variants to time (default all; 'fedleak' is always run)")
    ap.add_argument("--worker", choices=sorted(TOOLS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    setting = load_setting(args.peer)
    if args.worker:  # one fedleak run, one JSON line
        restarts, select_after = TOOLS[args.worker]
        print(json.dumps(run_fedleak(setting, args.batches[0], args.head, args.iterations,
                                     restarts, args.tv, select_after)))
        return
    if not args.no_breaching and not Path(args.peer_python).exists():
        raise SystemExit(f"no breaching venv python at {args.peer_python} (see the harness "
                         "README: bash setup.sh); pass --peer-python")
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, {args.iterations} iterations, head "
          f"{args.head}, {args.rounds} alternating round(s)", flush=True)
    short = args.iterations // 5 if args.short is None else args.short
    runs: dict[tuple[int, str], list[dict[str, Any]]] = {}
    variants = [t for t in TOOLS if t == "fedleak" or t in args.tools]
    for rnd in range(args.rounds):
        for b in args.batches:
            order = [*([] if args.no_breaching else ["breaching"]), *variants]
            if rnd % 2:
                order.reverse()
            for tool in order:
                def one(n: int, b: int = b, tool: str = tool) -> dict[str, Any]:
                    if tool == "breaching":
                        return run_breaching(args.peer, args.peer_python, b, args.head, n,
                                             args.tv)
                    return run_fedleak_subprocess(args.peer, b, args.head, n, tool, args.tv)

                r = one(args.iterations)
                r["marginal_cpu_ms"] = float("nan")
                if 0 < short < args.iterations:
                    q = one(short)
                    r["marginal_cpu_ms"] = ((r["cpu_ms"] * args.iterations - q["cpu_ms"] * short)
                                            / (args.iterations - short))
                runs.setdefault((b, tool), []).append(r)
                print(f"  round {rnd} batch {b} {tool:<16} {r['ms']:7.1f} wall-ms/it "
                      f"{r['cpu_ms']:7.1f} cpu-ms/it {r['marginal_cpu_ms']:7.1f} marginal-cpu-ms "
                      f"{r['step_ms']:7.1f} median-step-ms  "
                      f"PSNR {r['psnr']:.2f} dB", flush=True)

    def med(b: int, tool: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[(b, tool)])

    def ratio(b: int, num: str, den: str, key: str) -> float:
        return statistics.median(n[key] / d[key] for n, d in zip(runs[(b, num)], runs[(b, den)],
                                                                 strict=True))

    tools = [*([] if args.no_breaching else ["breaching"]), *variants]
    print("\nbatch tool              wall ms/it  cpu ms/it  marginal cpu  step ms  PSNR dB   TV")
    for b in args.batches:
        for tool in tools:
            tv = runs[(b, tool)][0]["tv"]
            print(f"{b:5d} {tool:<16} {med(b, tool, 'ms'):11.1f} {med(b, tool, 'cpu_ms'):10.1f} "
                  f"{med(b, tool, 'marginal_cpu_ms'):13.1f} {med(b, tool, 'step_ms'):8.1f} "
                  f"{med(b, tool, 'psnr'):8.2f}  {tv}")
    print("\nratios (median over rounds of per-round ratios)")
    for b in args.batches:
        if args.no_breaching:
            break
        print(f"batch {b}: fedleak / breaching per iteration: wall "
              f"{ratio(b, 'fedleak', 'breaching', 'ms'):.2f}x, cpu "
              f"{ratio(b, 'fedleak', 'breaching', 'cpu_ms'):.2f}x, marginal cpu "
              f"{ratio(b, 'fedleak', 'breaching', 'marginal_cpu_ms'):.2f}x, median step "
              f"{ratio(b, 'fedleak', 'breaching', 'step_ms'):.2f}x")
    for b in args.batches:
        for tool in [t for t in ("fedleak R=4", "fedleak R=4 sel") if t in variants]:
            print(f"batch {b}: {tool} / fedleak 1 restart: wall "
                  f"{ratio(b, tool, 'fedleak', 'ms'):.2f}x, cpu "
                  f"{ratio(b, tool, 'fedleak', 'cpu_ms'):.2f}x, marginal cpu "
                  f"{ratio(b, tool, 'fedleak', 'marginal_cpu_ms'):.2f}x, median step "
                  f"{ratio(b, tool, 'fedleak', 'step_ms'):.2f}x")
    if len(variants) > 1:
        print("\nbatched restarts, CPU clock (the robust one on a shared machine; median over "
              "alternating rounds of per-round ratios):")
    for b in args.batches:
        for tool, what in (("fedleak R=4", "every restart to the end"),
                           ("fedleak R=4 sel", "select_after=0.125")):
            if tool not in variants:
                continue
            mark = "  <- restarts=4 default" if TOOLS[tool][1] == DEFAULT_SELECT_AFTER else ""
            print(f"batch {b}: 4 restarts / 1 run = {ratio(b, tool, 'fedleak', 'cpu_ms'):.2f}x "
                  f"({what}){mark}")


if __name__ == "__main__":
    main()
