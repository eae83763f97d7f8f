"""CPU speed of the seed-001 recipe's work in NCHW vs channels-last layout, and eval batch sizes.

Why ``fedleak.device.fast_layout`` and ``fedleak.fl.predict``'s CPU batch of 64 exist: this
prints, at one thread (a sweep worker's setting), the seconds of one FedAvg client (2 epochs of
250 MNIST images, Adam), one DP-SGD client (Opacus), a 1,000-image evaluation at several batch
sizes and 100 iterations of Inverting Gradients on a 5-step FedAvg update, in both layouts, and
their ratios. Timings only; nothing is asserted.

    python benchmarks/cpu_layout.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from pathlib import Path

import torch
import yaml

import fedleak
from fedleak.defenses.dpsgd import DPSGD
from fedleak.fl import ThreatModel, local_update, predict
from fedleak.models import build_model
from fedleak.sweep.cell import load_data
from fedleak.sweep.config import SweepConfig

RECIPE = Path(__file__).resolve().parents[1] / "examples" / "sweep-seed001-cpu-quick.yaml"


def best_of(fn, repeats: int) -> float:
    """The fastest of ``repeats`` runs (the least disturbed by other work on the machine)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    cfg = SweepConfig.from_dict(yaml.safe_load(RECIPE.read_text()))
    train, test = load_data(cfg, 0)
    x, y = train.images[:250], train.labels[:250]
    torch.manual_seed(0)
    base = build_model(cfg.model.name, input_shape=train.image_shape,
                       num_classes=train.num_classes, **cfg.model.options)
    last = copy.deepcopy(base).to(memory_format=torch.channels_last)
    nets = {"nchw": base, "channels-last": last}
    fedavg = {"protocol": "fedavg", "local_epochs": 2, "batch_size": 32, "lr": 3e-4,
              "optimizer": "adam"}
    probe = local_update(base, x[:1], y[:1], protocol="fedavg", local_epochs=5, batch_size=1,
                         lr=1e-4)
    threat = ThreatModel("C", labels=y[:1])
    rows: dict[str, dict[str, float]] = {}
    for name, net in nets.items():
        r = rows[name] = {}
        r["FedAvg client"] = best_of(
            lambda net=net: local_update(net, x, y, **fedavg), args.repeats)
        r["DP-SGD client"] = best_of(
            lambda net=net: DPSGD(noise_multiplier=0.001)(net, x, y, **fedavg), args.repeats)
        for b in (32, 64, 512):
            r[f"eval 1000, batch {b}"] = best_of(
                lambda net=net, b=b: predict(net, test.images[:1000], b), args.repeats)
        r["IG 100 iterations"] = best_of(lambda net=net: fedleak.attack(
            "inverting-gradients", net, probe, threat=threat, num_images=1, seed=0,
            iterations=100, fedavg="pseudo-gradient", tv=0.01), args.repeats)
    print(f"{'work (1 thread, best of ' + str(args.repeats) + ')':34} {'nchw s':>8} "
          f"{'ch-last s':>10} {'speed-up':>9}")
    for key in rows["nchw"]:
        a, b = rows["nchw"][key], rows["channels-last"][key]
        print(f"{key:34} {a:8.2f} {b:10.2f} {a / b:8.2f}x")


if __name__ == "__main__":
    main()
