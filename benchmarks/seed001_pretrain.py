"""Does the learnable latent perturbation's pre-training train? One line per client.

    python benchmarks/seed001_pretrain.py                       # the CPU recipes' settings
    python benchmarks/seed001_pretrain.py --epochs 10 --tol 0 --lr 1e-3   # the third run's

Pre-trains seed 001's learnable noise (Algorithm 1) for each of the CPU recipe's clients
(MNIST 28x28, 4 x 250 images, latent-net width 16, pool 3, PyTorch's default init) and prints
per client: the epochs run, whether the stop rule fired (``converged``), whether the
pre-training model fits its data (``trained``: local accuracy >= 2x chance), the first epoch
whose loss fell below 2.0 (where it left the initial plateau), the last local accuracy, and
how far the noise moved (mean absolute shift of mu and sigma from 1 and 0.1).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from fedleak.data import load_dataset, partition  # noqa: E402
from fedleak.defenses import LatentPerturbation  # noqa: E402
from fedleak.models import build_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=60, help="pretrain_epochs (the cap)")
    ap.add_argument("--lr", type=float, default=3e-4, help="pretrain_lr")
    ap.add_argument("--noise-lr", type=float, default=1e-2, help="pretrain_noise_lr")
    ap.add_argument("--tol", type=float, default=0.005, help="pretrain_tol (0: every epoch)")
    ap.add_argument("--clients", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    train = load_dataset("mnist-5k", size=28, split="train")
    parts = partition(train.labels, 4, scheme="sizes", sizes=[250] * 4, seed=a.seed)
    torch.manual_seed(a.seed)
    model = build_model("latent-net", input_shape=train.image_shape, num_classes=10, width=16,
                        pool=3, init="default")
    for c in a.clients:
        d = LatentPerturbation(noise="learnable", mean=1.0, std=0.1, lam=1.0,
                               pretrain_epochs=a.epochs, pretrain_lr=a.lr,
                               pretrain_noise_lr=a.noise_lr, pretrain_tol=a.tol)
        t0 = time.perf_counter()
        d.pretrain(model, train.images[parts[c]], train.labels[parts[c]], client_id=str(c),
                   seed=a.seed + c)
        log = d.pretrain_log[str(c)]
        left = next((i + 1 for i, v in enumerate(log["loss"]) if v < 2.0), None)
        print(json.dumps({
            "client": c, "epochs": log["epochs"], "converged": log["converged"],
            "trained": log["trained"], "left_plateau_epoch": left,
            "accuracy": round(log["accuracy"][-1], 3), "loss": round(log["loss"][-1], 3),
            "mean_shift": round(log["mean_shift"][-1], 3),
            "std_shift": round(log["std_shift"][-1], 3),
            "std_range": [round(v, 3) for v in log["std_range"]],
            "seconds": round(time.perf_counter() - t0, 1),
        }))


if __name__ == "__main__":
    main()
