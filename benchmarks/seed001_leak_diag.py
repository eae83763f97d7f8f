"""Does the undefended seed-001 model leak? One batch, one seed, the fit check's verdict.

    python benchmarks/seed001_leak_diag.py --width 16 --batch 1          # leaks (about 23 dB)
    python benchmarks/seed001_leak_diag.py --width 4 --batch 8           # does not (about 5 dB)

Trains latent-net (no noise; Table I shape, pool 3, 28x28 MNIST) undefended for ``--rounds``
FedAvg rounds as the CPU recipe does (4 clients x 250 images, 2 local epochs of Adam 1e-3), has
client 0 send its update on ``--batch`` images (5 local SGD epochs at lr 1e-4, or one FedSGD
gradient with ``--fedsgd``) and attacks it with Inverting Gradients (granted labels). Prints
one JSON line: client accuracy, PSNR against a flat image's, SSIM and the fit check
(``fits`` / ``attack-underfit`` / ``approximate-replay``, with the attack's and the truth's
residuals): a truth residual near 0 says the replay is exact, so a low PSNR is the optimizer's
or the model's, not a simulation bug.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import fedleak  # noqa: E402
from fedleak.data import load_dataset, partition  # noqa: E402
from fedleak.fl import ClientData, ThreatModel, federate  # noqa: E402
from fedleak.models import build_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6, help="FL rounds before the probe (0: none)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--pool", type=int, default=3)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--tv", type=float, default=0.01)
    ap.add_argument("--init", default="random", help="the attack's starting images")
    ap.add_argument("--model-init", default="he", choices=["he", "default"],
                    help="latent-net's weight init (default: PyTorch's, a plain implementation)")
    ap.add_argument("--restarts", type=int, default=1)
    ap.add_argument("--fedsgd", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid", default=None, help="save the originals/reconstructions PNG here")
    a = ap.parse_args()
    torch.set_num_threads(1)
    train = load_dataset("mnist-5k", size=a.size, split="train")
    test = load_dataset("mnist-5k", size=a.size, split="test")
    parts = partition(train.labels, 4, scheme="sizes", sizes=[250] * 4, seed=a.seed)
    clients = [ClientData(train.images[i], train.labels[i]) for i in parts]
    torch.manual_seed(a.seed)
    model = build_model("latent-net", input_shape=train.image_shape, num_classes=10,
                        width=a.width, pool=a.pool, init=a.model_init)
    t0 = time.perf_counter()
    if a.rounds:
        fl = {"protocol": "fedavg", "local_epochs": 2, "batch_size": 32, "lr": 1e-3,
              "optimizer": "adam"}
        for _ in federate(model, clients, rounds=a.rounds, train=fl, seed=a.seed):
            pass
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        acc = float((model(test.images[:1000]).argmax(1) == test.labels[:1000]).float().mean())
    x, y = clients[0].images[: a.batch], clients[0].labels[: a.batch]
    if a.fedsgd:
        update, opts = fedleak.observe(model, x, y, protocol="fedsgd"), {}
    else:
        update = fedleak.observe(model, x, y, protocol="fedavg", local_epochs=5,
                                 batch_size=a.batch, lr=1e-4, optimizer="sgd")
        opts = {"fedavg": "pseudo-gradient"}
    t0 = time.perf_counter()
    rec = fedleak.attack(
        "inverting-gradients", model, update, threat=ThreatModel("C", labels=y),
        num_images=a.batch, seed=a.seed, truth=(x, y), iterations=a.iterations, tv=a.tv,
        init=a.init, restarts=a.restarts, **opts,
    )
    sc = fedleak.score(rec, x, labels=y)
    print(json.dumps({
        **vars(a), "accuracy": round(acc, 3), "train_s": round(train_s, 1),
        "attack_s": round(time.perf_counter() - t0, 1), "psnr": round(sc["psnr"], 2),
        "flat_psnr": round(sc["flat_psnr"], 2), "ssim": round(sc["ssim"], 3),
        "fit": rec.fit.to_dict() if rec.fit is not None else None,
    }))
    if a.grid:
        from fedleak.report import save_grid

        pairs = sc["pairing"]
        save_grid(a.grid, [x[[o for _, o in pairs]], rec.images[[r for r, _ in pairs]]],
                  row_titles=["original", "reconstruction"])


if __name__ == "__main__":
    main()
