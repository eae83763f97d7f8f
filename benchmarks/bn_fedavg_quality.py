"""bn-fedavg vs inverting-gradients on a FedAvg client with BatchNorm in train mode.

Setting: built-in ``lfw-faces`` resized to 32x32 grey; the untrained ConvNet (widths 32, 64,
128, 128, max-pool after the 2nd and 3rd block, flatten head, BatchNorm), 2 classes; one
FedAvg client holding 4 face images trains 2 local steps of SGD (lr 0.1) with batch 2 and BN in
train mode, then sends its weight change and BN buffers. Labels are recovered from the update
(the same for every attack); every attack runs the same number of iterations.

Attacks: ``bn-fedavg`` at level C (random start) and level D (prior = mean public face, from the
test split), ``inverting-gradients`` with ``fedavg="pseudo-gradient"`` (and, with
``--ig-replay``, its replay mode). Also: the flat-image PSNR baseline, the prior's PSNR, and the
``analytic`` attack on an MLP with one image (FedSGD).

    python benchmarks/bn_fedavg_quality.py                 # 1000 iterations
    python benchmarks/bn_fedavg_quality.py --quick         # 200 iterations
    python benchmarks/bn_fedavg_quality.py --seeds 0 1 2   # several client draws

Grids go to ``--out`` (default ``benchmarks/out/``; generated files, do not commit).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from fedleak.api import attack, observe, score
from fedleak.attacks import available_attacks
from fedleak.data import load_dataset
from fedleak.fl import ThreatModel
from fedleak.models import build_model
from fedleak.report import save_grid

SHAPE = (1, 32, 32)


def client(seed: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, Any, torch.Tensor]:
    """The global model, the client's 4 faces and labels, its update and the public prior."""
    train = load_dataset("lfw-faces", split="train", size=32)
    public = load_dataset("lfw-faces", split="test", size=32)
    faces = torch.nonzero(train.labels == 0).flatten()
    pick = faces[torch.randperm(len(faces), generator=torch.Generator().manual_seed(seed))[:4]]
    images, labels = train.images[pick], train.labels[pick]
    prior = public.images[public.labels == 0].mean(0)
    torch.manual_seed(seed)
    model = build_model("convnet", input_shape=SHAPE, num_classes=2)
    update = observe(
        model, images, labels, protocol="fedavg", local_steps=2, batch_size=2, lr=0.1,
        bn_mode="train", seed=seed,
    )  # fmt: skip
    return model, images, labels, update, prior


def runs(iterations: int, ig_replay: bool) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(row title, attack, threat level, options) of every attack to compare."""
    out = [
        ("bn-fedavg (C)", "bn-fedavg", "C", {}),
        ("bn-fedavg (D, prior)", "bn-fedavg", "D", {}),
    ]
    if "inverting-gradients" in available_attacks():
        out.append(("IG pseudo-grad", "inverting-gradients", "C", {"fedavg": "pseudo-gradient"}))
        if ig_replay:
            out.append(("IG replay", "inverting-gradients", "C", {"fedavg": "replay"}))
    else:
        print("(inverting-gradients is not registered yet: comparison skipped)")
    return [(t, a, lv, {"iterations": iterations, **o}) for t, a, lv, o in out]


def analytic_mlp() -> float:
    """PSNR of ``analytic`` on the default MLP, one lfw face, FedSGD."""
    data = load_dataset("lfw-faces", split="train", size=32)
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=SHAPE, num_classes=2)
    image, label = data.images[:1], data.labels[:1]
    rec = attack("analytic", model, observe(model, image, label))
    return score(rec, image)["psnr"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="200 iterations")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--ig-replay", action="store_true", help="also IG with replay")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    iterations = 200 if args.quick else args.iterations
    torch.set_num_threads(2)
    totals: dict[str, list[float]] = {}
    for seed in args.seeds:
        model, images, labels, update, prior = client(seed)
        base = score(images, images)["flat_psnr"]
        prior_psnr = score(prior[None].expand_as(images), images)["psnr"]
        print(f"seed {seed}: labels {labels.tolist()}, flat-image PSNR {base:.2f} dB, "
              f"prior PSNR {prior_psnr:.2f} dB")  # fmt: skip
        rows, titles, caps = [images], ["original"], [None]
        for title, name, level, opts in runs(iterations, args.ig_replay):
            threat = ThreatModel(level=level, prior=prior if level >= "D" else None)
            rec = attack(name, model, update, threat=threat, seed=seed, **opts)
            s = score(rec, images, labels=labels)
            totals.setdefault(title, []).append(s["psnr"])
            print(
                f"  {title:22s} PSNR {s['psnr']:6.2f} dB  SSIM {s['ssim']:.3f}  labels "
                f"{rec.labels.tolist() if rec.labels is not None else None} "
                f"({rec.label_method})  {rec.iterations} it in {rec.seconds:.0f} s",
                flush=True,
            )
            order = [r for r, _ in sorted(s["pairing"], key=lambda p: p[1])]
            rows.append(rec.images[order])
            titles.append(title)
            caps.append([f"{p:.1f} dB" for p in s["psnr_per_image"]])
        path = save_grid(
            args.out / f"bn_fedavg_quality_seed{seed}.png", rows, row_titles=titles,
            captions=caps, title=f"FedAvg, BN train, 4 faces, batch 2, 2 steps, {iterations} it",
        )  # fmt: skip
        print(f"  grid: {path}")
    print(f"mean PSNR over seeds {args.seeds} ({iterations} iterations):")
    for title, values in totals.items():
        print(f"  {title:22s} {sum(values) / len(values):6.2f} dB")
    print(f"analytic, MLP, 1 image (FedSGD): PSNR {analytic_mlp():.2f} dB")


if __name__ == "__main__":
    main()
