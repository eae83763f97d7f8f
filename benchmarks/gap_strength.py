"""Inverting Gradients' variants on the issue-16 rows over several attack seeds (issue 16).

Why: single runs at batch 4 move by up to 4 dB between attack seeds, so a variant is compared
with the default on the same seeds, and the mean and each seed's PSNR are printed. The problem
is the side-by-side one (``strength_rows.breaching_rows``: untrained ConvNet 32-64-128-128 with
BN in eval mode, the first lfw faces 32x32 grey, FedSGD, labels granted), 1 thread. breaching's
PSNR is not rerun here (it is deterministic on 1 thread: see ``attack_quality.py
--breaching``). The truth scores the result only.

    python benchmarks/gap_strength.py --head gap --batch 1 --seeds 0 1 2 \\
        --variants "" "feature_match=1"
"""

from __future__ import annotations

import argparse

import torch
from attack_quality import SIZE, victim
from strength_rows import fedleak_run, parse_variant, print_mean

import fedleak
from fedleak.data import load_dataset


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--head", default="gap", choices=["gap", "flatten"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--iterations", type=int, default=None,
                    help="per restart (default: the attack's own, 1,000 for "
                         "inverting-gradients)")
    ap.add_argument("--variants", nargs="+", default=[""],
                    help='option strings, e.g. "" (the default) "feature_match=1 lr=0.03"')
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    faces = load_dataset("lfw-faces", size=SIZE, split="all")
    faces = faces.images[faces.labels == 0]
    model = victim(args.head)
    n = args.batch
    truth, labels = faces[:n].clone(), torch.zeros(n, dtype=torch.long)
    update = fedleak.observe(model, truth, labels, bn_mode="eval")
    for variant in args.variants:
        opts = {k: {"True": True, "False": False}.get(v, v) if isinstance(v, str) else v
                for k, v in parse_variant(variant).items()}  # "signed=False" is a bool
        psnrs = []
        for seed in args.seeds:
            its = opts.get("iterations", args.iterations)  # a variant's own count wins
            rest = {k: v for k, v in opts.items() if k != "iterations"}
            r = fedleak_run(model, update, truth, labels, its, every=100, seed=seed, **rest)
            psnrs.append(r["psnr"])
            each = r.get("restart_psnrs")
            spread = (f"; restarts {min(each):.2f}-{max(each):.2f}, best {max(each):.2f}"
                      if each else "")
            print(f"  {args.head}-b{n} [{variant or 'default'}] seed {seed}: {r['psnr']:.2f} dB "
                  f"(flat {r['flat']:.2f}{spread}; residual {r['residual']:.2e}) "
                  f"{r['seconds']:.0f} s", flush=True)
        print_mean(f"{args.head}-b{n}", variant, psnrs)


if __name__ == "__main__":
    main()
