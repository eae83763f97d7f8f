"""Inverting Gradients on clients that train with drop-path / dropout: how to replay the masks.

    python benchmarks/dropout_replay.py [--iterations 200] [--seeds 1 2 3] [--restarts 1 4]

The client (16x16 grey LFW face, batch 1, FedSGD) runs a net of 3 residual blocks with
drop-path 0.3 (``--dropout P`` adds nn.Dropout(P) before the head). The attacker replays with

- ``off``: the masks switched off (the replay before issue 11; emulated by an attacker model
  whose drop rates are 0, the same weights),
- ``sampled``: train mode, fresh masks every restart and iteration (the default),
- ``per-restart``: one mask set per restart, kept through the run (restarts = hypotheses).

Prints PSNR beside the flat-image PSNR, and the cosine residual of the true image under one
replay draw (what the fit check would see). The truth is used for scoring only.
"""

from __future__ import annotations

import argparse
import copy
import functools

import torch
from torch import nn

import fedleak
import fedleak.attacks.inverting as inverting
from fedleak.attacks.simulate import UpdateSimulator, gradient_distance
from fedleak.data import load_dataset
from fedleak.fl.threat import ThreatModel
from fedleak.metrics import flat_psnr


class Residual(nn.Module):
    """x + drop_path(conv(relu(conv(x)))), the branch dropped per sample in train mode."""

    def __init__(self, channels: int, drop_prob: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.body(x)
        if self.training and self.drop_prob:
            keep = (torch.rand(x.shape[0], 1, 1, 1, device=x.device) >= self.drop_prob).float()
            b = b * keep / (1 - self.drop_prob)
        return x + b


def victim(drop_path: float, dropout: float) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(1, 8, 3, padding=1), nn.ReLU()]
    layers += [Residual(8, drop_path) for _ in range(3)] + [nn.Flatten()]
    layers += [nn.Dropout(dropout)] if dropout else []
    net = nn.Sequential(*layers, nn.Linear(8 * 16 * 16, 2))
    net.input_shape = (1, 16, 16)  # type: ignore[assignment]
    return net


def without_masks(model: nn.Module) -> nn.Module:
    """The same weights with every drop rate 0: a train-mode replay then equals dropout off."""
    net = copy.deepcopy(model)
    for m in net.modules():
        if isinstance(m, Residual):
            m.drop_prob = 0.0
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return net


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3], help="client mask seeds")
    ap.add_argument("--restarts", type=int, nargs="*", default=[1, 4])
    ap.add_argument("--drop-path", type=float, default=0.3)
    ap.add_argument("--dropout", type=float, default=0.0)
    args = ap.parse_args()
    ds = load_dataset("lfw-faces", size=16, split="all")
    x, y = ds.images[ds.labels == 0][:1].clone(), torch.tensor([0])
    flat = float(flat_psnr(x).mean())
    model = victim(args.drop_path, args.dropout)
    print(f"flat-image PSNR {flat:.2f} dB; {args.iterations} iterations")
    print(f"{'seed':>4} {'restarts':>8} {'replay':<12} {'PSNR':>6} {'truth residual':>15}")
    original = inverting.UpdateSimulator
    for seed in args.seeds:
        torch.manual_seed(seed)  # the client's masks
        update = fedleak.observe(model, x, y, bn_mode="eval")
        for restarts in args.restarts:
            for replay in ("off", "sampled", "per-restart"):
                attacker = without_masks(model) if replay == "off" else model
                masks = "per-restart" if replay == "per-restart" else "sampled"
                inverting.UpdateSimulator = functools.partial(original, masks=masks)
                try:
                    rec = fedleak.attack(
                        "inverting-gradients", attacker, update, threat=ThreatModel(labels=y),
                        iterations=args.iterations, restarts=restarts,
                    )
                finally:
                    inverting.UpdateSimulator = original
                sim = UpdateSimulator(attacker, update, mode="gradient", masks=masks)
                res = float(gradient_distance(sim(x[None], y[None]), update.tensors,
                                              metric="cosine"))
                psnr = fedleak.score(rec, x)["psnr"]
                print(f"{seed:>4} {restarts:>8} {replay:<12} {psnr:6.2f} {res:15.4f}", flush=True)


if __name__ == "__main__":
    main()
