"""DLG with its default settings on single 32x32 real photos (issue: PSNR >= 30 dB).

    python benchmarks/dlg_quality.py

Two victims: fedleak's DLG LeNet (sigmoid, DLG's uniform init) and a user's own similar module
with PyTorch's default init (passed as a plain nn.Sequential). FedSGD gradient of one image;
labels by iDLG. Prints PSNR/SSIM beside the flat-image baseline, iterations and seconds.
"""

from __future__ import annotations

import time

import torch
from skimage import data, transform

import fedleak
from fedleak.models import build_model

PHOTOS = {"astronaut": data.astronaut, "chelsea": data.chelsea, "coffee": data.coffee}


def users_lenet() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 12, 5, stride=2, padding=2), torch.nn.Sigmoid(),
        torch.nn.Conv2d(12, 12, 5, stride=2, padding=2), torch.nn.Sigmoid(),
        torch.nn.Conv2d(12, 12, 5, stride=1, padding=2), torch.nn.Sigmoid(),
        torch.nn.Flatten(), torch.nn.Linear(768, 10),
    )


def main() -> None:
    print(f"{'victim':<14} {'photo':<10} {'PSNR':>6} {'flat':>6} {'SSIM':>6} {'label':>5} "
          f"{'iters':>6} {'sec':>6}")
    for victim in ("fedleak-lenet", "user-module"):
        for name, load in PHOTOS.items():
            img = transform.resize(load(), (32, 32), anti_aliasing=True)
            x = torch.tensor(img, dtype=torch.float32).permute(2, 0, 1)[None]
            y = torch.tensor([3])
            torch.manual_seed(1)
            model = (
                build_model("lenet", input_shape=(3, 32, 32), num_classes=10)
                if victim == "fedleak-lenet" else users_lenet()
            )
            update = fedleak.observe(model, x, y)
            t = time.perf_counter()
            rec = fedleak.attack("dlg", model, update, image_shape=(3, 32, 32))
            sec = time.perf_counter() - t
            s = fedleak.score(rec, x, labels=y)
            print(f"{victim:<14} {name:<10} {s['psnr']:6.2f} {s['flat_psnr']:6.2f} "
                  f"{s['ssim']:6.3f} {s['label_accuracy']:5.0%} {rec.iterations:6d} {sec:6.1f}")


if __name__ == "__main__":
    main()
