"""Restart selection: the attack-loss pick vs the consistency pick, against the best restart.

Why: the attack returns one of R restarts and must choose without the truth. This measures how
far each rule's pick falls below the best restart (known here only because the benchmark knows
the truth; the rules never see it). Setting: breaching's side-by-side problem (untrained ConvNet
32-64-128-128, BN eval, lfw-faces 32x32 grey, FedSGD, labels granted), inverting-gradients at
its defaults, ``--restarts`` restarts per seed, ``--seeds`` seeds.

Each restart is one seeded single-restart run (seed * R + r), so every restart's image, loss
and PSNR is known and every rule is applied to the same R candidates
(:func:`fedleak.attacks.selection.pick_restart`, exactly what ``select=`` does inside the
attack). ``mean`` picks no restart: its row scores the consensus of all R
(:func:`fedleak.attacks.selection.consensus`, what ``select="mean"`` returns), so its gap is
negative where the consensus beats the best restart. ``residual`` (not an attack option) picks
the lowest matching residual, i.e. the attack loss without its TV term. Per-restart results go
to ``--out``/restart_selection.json.

    python benchmarks/restart_selection.py                  # gap head, batch 1, 5 seeds x 4
    python benchmarks/restart_selection.py --quick          # 100 iterations, 2 seeds

``--select-after 0.125 0.25`` instead compares successive selection with full restarts: per
seed one batched run with every restart to the end (loss pick), one run per fraction with
``select_after`` (all restarts for that share of the iterations, then only the lowest-loss one),
and 1 restart (the full run's restarts are R seeded single runs: their mean PSNR is what one
restart gets; restart 0 starts from the same draw as the 1-restart run of that seed). The
attack never sees the truth; the PSNRs are scored afterwards. Results go to
``--out``/select_after.json.

    python benchmarks/restart_selection.py --select-after 0.125 0.25 --iterations 500
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import fedleak
from fedleak.attacks.selection import SELECTIONS, consensus, pick_restart
from fedleak.fl import ThreatModel

TARGET_GAP_DB = 0.5  # mean gap to the best restart the consistency pick must stay within


def main(argv: list[str] | None = None) -> None:
    from attack_quality import client_data, victim  # same model and faces as the quality rows

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--head", default="gap", choices=["gap", "flatten"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--restarts", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="100 iterations, 2 seeds")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    ap.add_argument("--select-after", type=float, nargs="+", default=None, metavar="FRAC",
                    help="compare select_after=FRAC with full restarts and 1 restart")
    ap.add_argument("--layer-weights", default="equal", choices=["equal", "linear"])
    ap.add_argument("--device", default="cpu", help="where the attacks run (default cpu)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.iterations, args.seeds = 100, 2
    args.out.mkdir(parents=True, exist_ok=True)
    model = victim(args.head)
    truth, labels = client_data(args.batch, False)
    update = fedleak.observe(model, truth, labels, bn_mode="eval")
    threat = ThreatModel(labels=labels)
    if args.select_after:
        compare_select_after(args, model, update, threat, truth)
        return
    print(f"{args.head} head, batch {args.batch}, {args.seeds} seeds x {args.restarts} restarts, "
          f"{args.iterations} iterations (inverting-gradients defaults, labels granted)")
    rules = (*SELECTIONS, "residual")
    rows, gaps = [], {s: [] for s in rules}
    for seed in range(args.seeds):
        images, losses, residuals, psnrs = [], [], [], []
        for r in range(args.restarts):
            start = time.perf_counter()
            rec = fedleak.attack(
                "inverting-gradients", model, update, threat=threat,
                seed=seed * args.restarts + r, iterations=args.iterations,
            )
            images.append(rec.images)
            losses.append(rec.restart_losses[0])
            residuals.append(rec.fit.attack_residual)
            psnrs.append(fedleak.score(rec, truth)["psnr"])
            print(f"  seed {seed} restart {r}: loss {losses[-1]:.5f} residual "
                  f"{residuals[-1]:.2e} psnr {psnrs[-1]:.2f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
        stack, loss_t = torch.stack(images), torch.tensor(losses)
        picks = {s: pick_restart(stack, loss_t, s) for s in SELECTIONS if s != "mean"}
        picks["residual"] = int(torch.tensor(residuals).argmin())  # matching alone, no TV
        scored = {s: psnrs[i] for s, i in picks.items()}
        # "mean" returns no restart but the consensus of all of them (labels granted: the same)
        agreed = consensus(stack, labels.expand(len(stack), -1), loss_t)
        scored["mean"] = fedleak.score(agreed, truth)["psnr"]
        best = max(psnrs)
        for s in rules:
            gaps[s].append(best - scored[s])
        rows.append({"seed": seed, "losses": losses, "residuals": residuals, "psnr": psnrs,
                     "picks": picks, "consensus_psnr": scored["mean"]})
        print(f"seed {seed}: best {best:.2f} | " + " | ".join(
            f"{s} {scored[s]:.2f} (gap {best - scored[s]:.2f})" for s in rules), flush=True)
    print()
    for s in rules:
        mean = sum(gaps[s]) / len(gaps[s])
        mark = "met" if mean <= TARGET_GAP_DB else "missed"
        print(f"{s:>12}: mean gap to the best restart {mean:.2f} dB "
              f"(target <= {TARGET_GAP_DB} dB: {mark})")
    path = args.out / "restart_selection.json"
    path.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                "rows": rows}, indent=1))
    print(f"per-restart results -> {path}")


def compare_select_after(args: argparse.Namespace, model: torch.nn.Module, update: object,
                         threat: ThreatModel, truth: torch.Tensor) -> None:
    """PSNR of full restarts (loss pick) vs ``select_after`` fractions vs 1 restart, per seed."""
    print(f"{args.head} head, batch {args.batch}, {args.seeds} seeds, {args.restarts} restarts, "
          f"{args.iterations} iterations, layer_weights {args.layer_weights}, device "
          f"{args.device} (inverting-gradients defaults otherwise, labels granted)", flush=True)
    names = ["full", *(f"select {f:g}" for f in args.select_after), "1 restart (mean)",
             "1 restart (r0)"]
    table: dict[str, list[float]] = {n: [] for n in names}
    seconds: dict[str, list[float]] = {n: [] for n in names[:-2]}
    rows = []
    for seed in range(args.seeds):
        runs = [("full", None), *((f"select {f:g}", f) for f in args.select_after)]
        row: dict[str, object] = {"seed": seed}
        for name, frac in runs:
            start = time.perf_counter()
            rec = fedleak.attack(
                "inverting-gradients", model, update, threat=threat, seed=seed,
                iterations=args.iterations, restarts=args.restarts, select_after=frac,
                layer_weights=args.layer_weights, device=args.device,
            )
            seconds[name].append(time.perf_counter() - start)
            table[name].append(fedleak.score(rec, truth)["psnr"])
            row[name] = {"psnr": table[name][-1], "pick": rec.best_restart,
                         "losses": rec.restart_losses}
            if frac is None:  # each restart of the full run is one seeded single run
                each = [fedleak.score(img, truth)["psnr"] for img in rec.restart_images]
                row["restart_psnr"] = each
                table["1 restart (mean)"].append(statistics.mean(each))
                table["1 restart (r0)"].append(each[0])
        rows.append(row)
        print(f"seed {seed}: " + " | ".join(f"{n} {table[n][-1]:.2f}" for n in names), flush=True)
    print()
    full = statistics.mean(table["full"])
    for n in names:
        mean = statistics.mean(table[n])
        t = f", {statistics.mean(seconds[n]):.1f} s/run" if n in seconds else ""
        print(f"{n:>18}: mean PSNR {mean:6.2f} dB ({mean - full:+.2f} vs full){t}")
    path = args.out / "select_after.json"
    path.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                "rows": rows}, indent=1))
    print(f"per-seed results -> {path}")


if __name__ == "__main__":
    main()
