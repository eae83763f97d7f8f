"""Seed 000's findings, in kind, on built-in data: who leaks, how noise trades leakage for accuracy,
and the client's own check.

    python benchmarks/audit_seed000.py [--quick] [--data medmnist:/path/bloodmnist.npz] [--out DIR]

Prints three tables and writes plots and HTML reports under --out. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from fedleak.audit import load_config, run_audit
from fedleak.report import plot_leakage_vs, read_jsonl, write_report


def audit(config: str, out: Path, overrides: list[str]) -> tuple[list[dict], list[dict], dict]:
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    summary = run_audit(load_config(config, overrides), out)
    summary["wall"] = time.perf_counter() - t
    write_report(out)
    return read_jsonl(out / "leakage.jsonl"), read_jsonl(out / "rounds.jsonl"), summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="300 attack iterations instead of 1000")
    ap.add_argument("--data", default=None, help="data spec (default: the configs' lfw-faces)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/seed000"))
    ap.add_argument("--parts", default="1,2,3", help="which of the three audits to run")
    args = ap.parse_args()
    parts = {int(p) for p in args.parts.split(",")}
    iters = 300 if args.quick else 1000
    common = [f'audit.options={{"iterations": {iters}}}']
    if args.data:
        common.append(f"data.name={args.data}")

    if 1 in parts:
        who_leaks(args, common, iters)
    if 2 in parts:
        noise(args, common)
    if 3 in parts:
        self_check(args, common, iters)


def who_leaks(args: argparse.Namespace, common: list[str], iters: int) -> None:
    """1. Clients with 1..32 images and batch sizes 1..8."""
    recs, rounds, summary = audit("examples/audit-seed000.yaml", args.out / "clients", common)
    print(f"\n1. Leakage per client (FedAvg, BN train mode, {iters} iterations of "
          f"inverting-gradients; {summary['wall']:.0f} s)")
    print(f"{'client':>6} {'images':>6} {'batch':>5} {'steps':>5} {'PSNR':>7} {'flat':>6} "
          f"{'SSIM':>6} {'RDLV':>7}  rounds")
    by_client: dict[int, list[dict]] = {}
    for r in recs:
        by_client.setdefault(r["client"], []).append(r)
    for c, rs in sorted(by_client.items()):
        print(f"{c:>6} {rs[0]['num_images']:>6} {rs[0]['batch_size']:>5} {rs[0]['local_steps']:>5} "
              f"{statistics.mean(x['psnr'] for x in rs):7.2f} "
              f"{statistics.mean(x['flat_psnr'] for x in rs):6.2f} "
              f"{statistics.mean(x['ssim'] for x in rs):6.3f} "
              f"{max(x['rdlv'] for x in rs):7.3f}  {[x['round'] for x in rs]}")
    print("test accuracy per round:", [round(r["accuracy"], 3) for r in rounds])



def noise(args: argparse.Namespace, common: list[str]) -> None:
    """2. Leakage and accuracy against the Gaussian filter's sigma0."""
    print("\n2. Gaussian privacy filter: leakage of the 1-image client vs sigma0")
    print(f"{'sigma0':>7} {'PSNR':>7} {'SSIM':>6} {'RDLV':>7} {'accuracy':>8}")
    all_recs, acc = [], {}
    for s0 in (0.0, 1.0, 5.0, 25.0, 50.0):
        recs, rounds, _ = audit(
            "examples/audit-noise.toml", args.out / f"noise-{s0:g}",
            [*common, f'filters=[{{"name": "gaussian", "options": {{"sigma0": {s0}}}}}]',
             "selfcheck.enabled=false"],
        )
        for r in recs:
            r["sigma0"] = s0
        all_recs += recs
        acc[s0] = rounds[-1]["accuracy"]
        print(f"{s0:7g} {statistics.mean(r['psnr'] for r in recs):7.2f} "
              f"{statistics.mean(r['ssim'] for r in recs):6.3f} "
              f"{max(r['rdlv'] for r in recs):7.3f} {acc[s0]:8.3f}")
    plot = plot_leakage_vs(all_recs, args.out / "leakage_vs_sigma0.png", x="sigma0",
                           metric="rdlv", accuracy=acc)
    print("plot:", plot)



def self_check(args: argparse.Namespace, common: list[str], iters: int) -> None:
    """3. The client's own check, deciding per update."""
    recs, rounds, summary = audit(
        "examples/audit-noise.toml", args.out / "selfcheck",
        [*common, 'filters=[{"name": "gaussian", "options": {"sigma0": 0.0}}]',
         f'selfcheck.options={{"iterations": {iters}}}'],
    )
    checks = read_jsonl(args.out / "selfcheck" / "selfcheck.jsonl")
    print("\n3. The client's own check (withhold when RDLV > 0)")
    print(f"{'round':>5} {'client':>6} {'RDLV':>7} {'SSIM':>6}  decision")
    exact = True
    for c in checks:
        print(f"{c['round']:>5} {c['client']:>6} {c['rdlv']:7.3f} {c['ssim']:6.3f}  "
              f"{'withheld' if c['withheld'] else 'sent'}")
        exact &= c["withheld"] == (c["rdlv"] > 0)
    print(f"withheld exactly the updates above the threshold: {exact}; "
          f"withheld per round: {[r['withheld'] for r in rounds]}")


if __name__ == "__main__":
    main()
