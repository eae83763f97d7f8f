"""Seed 001's defense study on CPU: run the default sweep and compare the defenses.

    python benchmarks/defense_study.py                        # examples/sweep-default.yaml
    python benchmarks/defense_study.py --quick                # fewer cells, fewer iterations
    python benchmarks/defense_study.py --out RUN --resume     # continue an interrupted study

Prints each defense's privacy-utility curve (one row per hyperparameter value), checks that the
undefended baseline leaks (PSNR and SSIM above a flat image's, semantic accuracy above chance),
and compares latent perturbation with DP-SGD and BiDO at matched client accuracy on MSE, PSNR
and semantic leakage (the paper claims +12.4 % MSE and -12.5 % attacker classification accuracy
at about 90 % client accuracy). It reports what it measures, whichever way it goes.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from fedleak.report import read_jsonl  # noqa: E402
from fedleak.sweep import load_sweep_config, run_sweep  # noqa: E402

LATENT = ("latent-fixed", "latent-learnable")
BASELINES = ("dp-sgd", "bido")
MEASURES = ("mse", "psnr", "ssim", "semantic_accuracy")


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def curves(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per defense: one point per params (seeds averaged), sorted by accuracy."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["defense"], repr(sorted(r["params"].items())))].append(r)
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (defense, _), rs in groups.items():
        point = {"params": rs[0]["params"], "seeds": len(rs)}
        for key in ("accuracy", "f1", *MEASURES, "flat_psnr", "epsilon"):
            point[key] = _mean([r.get(key) for r in rs])
        out[defense].append(point)
    for pts in out.values():
        pts.sort(key=lambda p: p["accuracy"])
    return dict(out)


def at_accuracy(points: list[dict[str, Any]], target: float, key: str) -> float | None:
    """``key`` linearly interpolated at client accuracy ``target`` (None outside the curve)."""
    pts = [p for p in points if p.get(key) is not None]
    if not pts:
        return None
    for a, b in zip(pts, pts[1:], strict=False):
        lo, hi = a["accuracy"], b["accuracy"]
        if lo <= target <= hi:
            t = 0.0 if hi == lo else (target - lo) / (hi - lo)
            return a[key] + t * (b[key] - a[key])
    exact = [p[key] for p in pts if abs(p["accuracy"] - target) < 1e-9]
    return exact[0] if exact else None


def _fmt(v: Any, spec: str = ".3f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def print_curves(cv: dict[str, list[dict[str, Any]]]) -> None:
    print("\n== Privacy-utility curve per defense (seeds averaged) ==")
    head = f"{'defense':<20} {'params':<38} {'acc':>6} {'F1':>6} {'MSE':>7} {'PSNR':>6} "
    print(head + f"{'SSIM':>6} {'sem.acc':>7} {'eps':>8}")
    for d in sorted(cv, key=lambda s: (s != "none", s)):
        for p in cv[d]:
            params = ",".join(f"{k}={v}" for k, v in p["params"].items()) or "-"
            print(
                f"{d:<20} {params[:38]:<38} {_fmt(p['accuracy']):>6} {_fmt(p['f1']):>6} "
                f"{_fmt(p['mse'], '.4f'):>7} {_fmt(p['psnr'], '.2f'):>6} {_fmt(p['ssim']):>6} "
                f"{_fmt(p['semantic_accuracy'], '.2f'):>7} {_fmt(p['epsilon'], '.2f'):>8}"
            )


def print_baseline(
    cv: dict[str, list[dict[str, Any]]], chance: float, clf_acc: float | None
) -> None:
    print("\n== Does the undefended baseline leak? ==")
    if "none" not in cv:
        print("no `none` cell in this sweep")
        return
    p = cv["none"][0]
    print(
        f"undefended: PSNR {_fmt(p['psnr'], '.2f')} dB vs {_fmt(p['flat_psnr'], '.2f')} dB for a "
        f"flat image; SSIM {_fmt(p['ssim'])}; semantic accuracy "
        f"{_fmt(p['semantic_accuracy'], '.2f')} vs chance {chance:.2f} (the classifier scores "
        f"{_fmt(clf_acc)} on real test images)"
    )
    semantic = (p["semantic_accuracy"] or 0) >= 3 * chance
    pixels = (p["psnr"] or 0) > (p["flat_psnr"] or 0)
    print(
        "verdict: semantic leakage "
        + ("YES (at least 3x chance)" if semantic else "no (below 3x chance)")
        + "; pixel leakage "
        + ("YES (PSNR above a flat image's)" if pixels else
           "no by PSNR (below a flat image's: noisy backgrounds cost PSNR; look at the grid)")
    )


def print_matched(cv: dict[str, list[dict[str, Any]]]) -> None:
    """Latent perturbation vs each baseline where both curves reach the same accuracy."""
    print("\n== At matched client accuracy: latent perturbation vs DP-SGD and BiDO ==")
    if not any(d in cv for d in LATENT) or not any(d in cv for d in BASELINES):
        print("needs latent-* and dp-sgd/bido curves")
        return
    for ld in (d for d in LATENT if d in cv):
        for bd in (d for d in BASELINES if d in cv):
            a_pts, b_pts = cv[ld], cv[bd]
            lo = max(a_pts[0]["accuracy"], b_pts[0]["accuracy"])
            hi = min(a_pts[-1]["accuracy"], b_pts[-1]["accuracy"])
            if lo <= hi:  # the highest accuracy both curves reach, interpolated along each
                va = {k: at_accuracy(a_pts, hi, k) for k in MEASURES}
                vb = {k: at_accuracy(b_pts, hi, k) for k in MEASURES}
                where = f"at client accuracy {hi:.3f} (interpolated)"
            else:  # disjoint accuracy ranges: the nearest points of each curve
                above = b_pts[0]["accuracy"] > a_pts[-1]["accuracy"]  # baseline more accurate
                va, vb = (a_pts[-1], b_pts[0]) if above else (a_pts[0], b_pts[-1])
                where = (f"at the nearest points (client accuracy {va['accuracy']:.3f} vs "
                         f"{vb['accuracy']:.3f}")
                # one point per curve is what the stop rule gives: matched up to its overshoot
                where += "; the stop rule's points)" if len(a_pts) == len(b_pts) == 1 else ")"
            parts = []
            if va["mse"] and vb["mse"]:
                parts.append(f"MSE {va['mse']:.4f} vs {vb['mse']:.4f} "
                             f"({100 * (va['mse'] - vb['mse']) / vb['mse']:+.1f} %)")
            if va["psnr"] is not None and vb["psnr"] is not None:
                parts.append(f"PSNR {va['psnr']:.2f} vs {vb['psnr']:.2f} dB "
                             f"({va['psnr'] - vb['psnr']:+.2f})")
            if va["semantic_accuracy"] is not None and vb["semantic_accuracy"] is not None:
                diff = 100 * (va["semantic_accuracy"] - vb["semantic_accuracy"])
                parts.append(f"attacker classification accuracy {va['semantic_accuracy']:.2f} vs "
                             f"{vb['semantic_accuracy']:.2f} ({diff:+.1f} points)")
            print(f"{ld} vs {bd} {where}: " + "; ".join(parts))


# --- issue 12: matched utility, intervals, attacker knowledge --------------------------------

from fedleak.report.study import (  # noqa: E402  (the study's statistics live in the library)
    KNOWLEDGE_LABEL,
    attackers,
    plot_study,
    study_points,
)


def _pm(v: float | None, ci: float | None, spec: str) -> str:
    if v is None:
        return "-"
    return format(v, spec) + (f"±{format(ci, spec)}" if ci is not None else "")


def print_study(records: list[dict[str, Any]], out: Path, chance: float) -> None:
    """The issue-12 study: per attacker, every setting with intervals, matched comparison, plots."""
    knowledge = attackers(records)
    if not knowledge:
        return
    targets = sorted({r["target_accuracy"] for r in records if r.get("target_accuracy")})
    if targets:
        best: dict[str, float] = {}
        for r in records:
            best[r["defense"]] = max(best.get(r["defense"], 0.0), r.get("accuracy") or 0.0)
        missed = sorted({f"{r['defense']}#{r['seed']} ({r.get('accuracy', 0):.3f} after "
                         f"{r.get('rounds_trained')} rounds)"
                         for r in records if r.get("reached_target") is False})
        print(f"\nstop rule: train until client accuracy >= {targets} (cap: the config's "
              f"fl.rounds); cells that missed it: {', '.join(missed) or 'none'}; the highest "
              f"accuracy every method reaches (min over methods of its best cell): "
              f"{min(best.values()):.3f}")
    seeds = sorted({r["seed"] for r in records})
    print(f"\n== Study: seeds {seeds}, batches per cell "
          f"{max(r.get('batches', 1) for r in records)}; mean ± 95 % interval ==")
    lat = [r for r in records if r.get("noise_latent_ratio")]
    if lat:
        print("noise / latent RMS ratio: this run "
              + ", ".join(f"{r['defense']}#{r['seed']} {r['noise_latent_ratio']:.2f}"
                          for r in lat[:6])
              + f"; a plain default-init encoder at the configured values "
              f"{_mean([r.get('noise_latent_ratio_plain') for r in lat]):.2f}")
    for r in records:
        log = r.get("noise_pretrain")
        if log:
            acc = log.get("accuracy") or [None]  # runs before the accuracy curve lack it
            every = max(1, len(log["loss"]) // 12)
            print(f"learned noise {r['defense']}#{r['seed']}: {log['epochs']} epochs "
                  f"(converged {log['converged']}, model trained {log.get('trained', '-')}, "
                  f"local accuracy {_fmt(acc[-1], '.2f')}), mean moved "
                  f"{log['mean_shift'][-1]:.3f} (max {log['mean_shift_max']:.3f}), std moved "
                  f"{log['std_shift'][-1]:.3f} (max {log['std_shift_max']:.3f}), std range "
                  f"{log['std_range'][0]:.3f}-{log['std_range'][1]:.3f}; loss every {every} "
                  "epochs " + " ".join(f"{v:.3f}" for v in log["loss"][::every]))
    for know in knowledge:
        pts = study_points(records, know)
        print(f"\n-- attacker: {KNOWLEDGE_LABEL[know]} --")
        print(f"{'defense':<18} {'params':<30} {'acc':>11} {'rnds':>4} {'reach':>5} "
              f"{'MSE':>15} {'PSNR':>12} {'SSIM':>11} {'attacker acc':>12} {'eps':>8}")
        for d in sorted(pts, key=lambda s: (s != "none", s)):
            for p in pts[d]:
                params = ",".join(f"{k}={v}" for k, v in p["params"].items()) or "-"
                acc = _pm(p["accuracy"], p["accuracy_ci"], ".3f")
                reach = "-" if p["reached"] is None else f"{p['reached']:.2f}"
                print(f"{d:<18} {params[:30]:<30} {acc:>11} {_fmt(p['rounds'], '.1f'):>4} "
                      f"{reach:>5} "
                      f"{_pm(p['mse'], p['mse_ci'], '.4f'):>15} "
                      f"{_pm(p['psnr'], p['psnr_ci'], '.2f'):>12} "
                      f"{_pm(p['ssim'], p['ssim_ci'], '.3f'):>11} "
                      f"{_pm(p['semantic_accuracy'], p['semantic_accuracy_ci'], '.2f'):>12} "
                      f"{_fmt(p['epsilon'], '.1f'):>8}")
        if "none" in pts:
            p = pts["none"][0]
            leaks = (p["semantic_accuracy"] or 0) >= 3 * chance or (p["psnr"] or 0) > (
                p["flat_psnr"] or 0)
            print(f"undefended at this budget: PSNR {_fmt(p['psnr'], '.2f')} vs flat "
                  f"{_fmt(p['flat_psnr'], '.2f')}, attacker accuracy "
                  f"{_fmt(p['semantic_accuracy'], '.2f')} (chance {chance:.2f}): "
                  + ("LEAKS" if leaks else "does NOT leak at this budget"))
        print_matched(pts)
        _plot_study(pts, out, know)


def _plot_study(pts: dict[str, list[dict[str, Any]]], out: Path, know: str) -> None:
    """MSE and attacker accuracy against client accuracy, one curve per method (PNG)."""
    for key in ("mse", "semantic_accuracy"):
        path = plot_study(pts, out / f"study_{key}_{know}.png", key=key, knowledge=know)
        print(f"plot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "examples" / "sweep-default.yaml"))
    ap.add_argument("--out", default=str(ROOT / "fedleak-runs" / "defense-study"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--quick", action="store_true",
                    help="fewer cells and attack iterations (a smoke run of the study)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set attack.round=6")
    ap.add_argument("--only", default=None, metavar="LABELS",
                    help="comma-separated defense labels to keep (e.g. none,latent-fixed,bido)")
    ap.add_argument("--first", action="store_true",
                    help="keep only each defense's first grid value")
    ap.add_argument("--report", nargs="+", default=None, metavar="RUN",
                    help="only report: read sweep.jsonl of these run folders (e.g. one per "
                    "seed) together, run nothing")
    args = ap.parse_args()
    if args.report:
        report_only([Path(p) for p in args.report])
        return
    torch.set_num_threads(1)
    overrides = list(args.set)
    if args.quick:
        overrides += ["fl.rounds=2", "attack.options.iterations=100", "semantic.epochs=3"]
    cfg = load_sweep_config(args.config, overrides)
    if args.only:
        keep = set(args.only.split(","))
        cfg.defenses = [d for d in cfg.defenses if (d.label or d.name) in keep]
    if args.quick or args.first:  # one point per curve
        for spec in cfg.defenses:
            spec.grid = {k: v[-1:] if args.quick else v[:1] for k, v in spec.grid.items()}
    cfg = cfg.validate()
    t0 = time.perf_counter()
    summary = run_sweep(cfg, args.out, resume=args.resume, workers=args.workers)
    print(f"\nsweep: {summary['ran']} cells run, {summary['skipped']} skipped, "
          f"{len(summary['failed'])} failed, {time.perf_counter() - t0:.0f} s; out: {args.out}")
    records = read_jsonl(Path(args.out) / "sweep.jsonl")
    cv = curves(records)
    from fedleak.data import load_dataset

    k = load_dataset(cfg.data.name, size=cfg.data.size, channels=cfg.data.channels).num_classes
    print_curves(cv)
    print_baseline(cv, 1.0 / k, classifier_accuracy([Path(args.out)]))
    print_matched(cv)
    print_study(records, Path(args.out), 1.0 / k)


def classifier_accuracy(runs: list[Path]) -> float | None:
    """Mean test accuracy of the runs' attacker classifiers (one per seed; saved beside their
    weights), None for runs made before it was saved."""
    import json

    accs = [json.loads(p.read_text())["test_accuracy"]
            for run in runs for p in sorted((run / "classifiers").glob("*.json"))]
    return sum(accs) / len(accs) if accs else None


def report_only(runs: list[Path]) -> None:
    """The tables and plots of finished runs (several folders: e.g. one per seed)."""
    import json

    records = [r for run in runs for r in read_jsonl(run / "sweep.jsonl")]
    cfg = json.loads((runs[0] / "config.json").read_text())["sweep_config"]
    from fedleak.data import load_dataset

    d = cfg["data"]
    k = load_dataset(d["name"], size=d["size"], channels=d["channels"]).num_classes
    cv = curves(records)
    print_curves(cv)
    print_baseline(cv, 1.0 / k, classifier_accuracy(runs))
    print_matched(cv)
    print_study(records, runs[0], 1.0 / k)


if __name__ == "__main__":
    main()
