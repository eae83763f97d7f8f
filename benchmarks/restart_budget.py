"""Inverting Gradients' restart budgets on a FedAvg client with BN in train mode (issue 16).

Why: the consensus of 8 short restarts (``restarts=8 iterations=250 select=mean tv_decay=0``)
beats one restart of 1,000 iterations on the FedSGD side-by-side rows (``gap_strength.py``),
but an audit's clients train locally with BN in train mode, where the replayed optimization is
harder. This prints both budgets (and any other variant) on such a client, so a default is
judged on both kinds of update. Setting: the audit example's model (ConvNet 32-64-128-128,
flatten head, lfw-faces 32x32 grey, untrained), ``--images`` faces of label 0 (seed s takes
faces 4s, 4s+1, ...), one local epoch of SGD at lr 0.05 on one batch, BN in train mode,
replayed by the attack; labels granted; 1 thread. ``--client lenet-fedsgd``: LeNet, FedSGD,
``--images`` images drawn at random (seed s) from all lfw-faces (faces and non-faces). The
truth scores the result only.

    python benchmarks/restart_budget.py --images 1 --seeds 0 1 \\
        --variants "" "restarts=8 iterations=250 select=mean tv_decay=0"
"""

from __future__ import annotations

import argparse
import time

import torch
from strength_rows import parse_variant, print_mean

import fedleak
from fedleak.data import load_dataset
from fedleak.fl import ThreatModel
from fedleak.models import build_model


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--client", default="fedavg-bntrain",
                    choices=["fedavg-bntrain", "lenet-fedsgd"])
    ap.add_argument("--images", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--variants", nargs="+", default=[""],
                    help='option strings, e.g. "" (the default) "restarts=8 iterations=250"')
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = load_dataset("lfw-faces", size=32, split="all")
    faces = data.images[data.labels == 0]
    n = args.images
    for variant in args.variants:
        opts = parse_variant(variant)
        psnrs = []
        for seed in args.seeds:
            if args.client == "lenet-fedsgd":
                pick = torch.randperm(len(data.images),
                                      generator=torch.Generator().manual_seed(seed))[:n]
                x, y = data.images[pick].clone(), data.labels[pick].clone()
                torch.manual_seed(seed)
                model = build_model("lenet", input_shape=(1, 32, 32), num_classes=2)
                update = fedleak.observe(model, x, y)
            else:
                x, y = faces[4 * seed: 4 * seed + n].clone(), torch.zeros(n, dtype=torch.long)
                torch.manual_seed(seed)
                model = build_model("convnet", input_shape=(1, 32, 32), num_classes=2,
                                    head="flatten")
                update = fedleak.observe(model, x, y, protocol="fedavg", lr=0.05,
                                         batch_size=n, local_epochs=1, bn_mode="train")
            start = time.perf_counter()
            rec = fedleak.attack("inverting-gradients", model, update,
                                 threat=ThreatModel(labels=y), seed=seed, **opts)
            seconds = time.perf_counter() - start
            psnrs.append(fedleak.score(rec, x)["psnr"])
            print(f"  {args.client}-b{n} [{variant or 'default'}] seed {seed}: "
                  f"{psnrs[-1]:.2f} dB, residual {rec.fit.attack_residual:.2e}, "
                  f"{seconds:.0f} s", flush=True)
        print_mean(f"{args.client}-b{n}", variant, psnrs)


if __name__ == "__main__":
    main()
