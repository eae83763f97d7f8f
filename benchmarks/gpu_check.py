"""One script to check fedleak on a GPU: same results as the CPU, and the realistic speed.

Part 1, agreement: every registered attack on a small model (16x16 grey, fixed seeds) runs
on the CPU and on the GPU, ``--seeds`` times each; the devices agree when their mean PSNR
differs by at most ``--tol`` dB (default 2.0), or their seed ranges overlap, or both recovered
the image (>= 40 dB). Why not bit-equal: the attack's random start comes from a per-device
seeded generator (CUDA and CPU streams differ) and GPU kernels sum in another order, so the
runs are draws of the same attack; a real device bug (a tensor left behind, TF32 in the double
backward, a wrong generator) shows as a failure or a gap of many dB. The fit verdict of each
run is printed too.

Part 2, speed: ms per attack iteration of Inverting Gradients (FedAvg replay) in the realistic
seed-000 setting: ResNet-18 with BatchNorm (train mode), 224x224 grey, SGD lr 0.01, one local
epoch, client batch 1 and 8; and 4 batched restarts at batch 1.

On a machine without a GPU it runs the CPU half of part 1 and part 2 on the CPU, and says
that it skipped the GPU. Budget: under 8 minutes on one modern GPU (default settings).

    python benchmarks/gpu_check.py                 # GPU + CPU, default settings
    python benchmarks/gpu_check.py --quick         # tiny settings (a CPU smoke run)
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch

import fedleak
from fedleak.device import resolve_device
from fedleak.fl.threat import ThreatModel
from fedleak.models import build_model

SMALL = (1, 16, 16)
EXACT = 40.0  # dB: above this both runs recovered the image; the gap is rounding


def _image(n: int = 1, shape: tuple[int, ...] = SMALL, seed: int = 1) -> torch.Tensor:
    """Smooth random images in [0, 1] (upsampled noise: what an image looks like, roughly)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, shape[0], shape[1] // 4, shape[2] // 4, generator=g)
    return torch.nn.functional.interpolate(low, size=shape[1:], mode="bilinear",
                                           align_corners=False).clamp(0, 1)


def small_cases(quick: bool) -> dict[str, Callable[[], tuple[Any, ...]]]:
    """attack name -> builder of (model, update, threat, options, truth images)."""
    it = 5 if quick else 200

    def classifier(name: str) -> tuple[Any, ...]:
        torch.manual_seed(0)
        if name == "analytic":
            model = build_model("mlp", input_shape=SMALL, num_classes=4)
            x, y = _image(), torch.tensor([2])
            return model, fedleak.observe(model, x, y), ThreatModel(), {}, x
        model = build_model("convnet", input_shape=SMALL, num_classes=2, widths=(8, 16),
                            pool_after=(0,))
        x, y = _image(), torch.tensor([1])
        if name == "bn-fedavg":
            x, y = _image(2), torch.tensor([0, 1])
            upd = fedleak.observe(model, x, y, protocol="fedavg", lr=0.1, local_steps=2,
                                  batch_size=1, seed=3)
            return model, upd, ThreatModel(labels=y), {"iterations": it}, x
        upd = fedleak.observe(model, x, y, bn_mode="eval")
        opts = {"iterations": max(2, it // 2) if name == "dlg" else it}
        return model, upd, ThreatModel(labels=y), opts, x

    def diffusion(name: str) -> tuple[Any, ...]:
        from fedleak.diffusion import UNet, UNetConfig, diffusion_update

        cfg = UNetConfig(image_size=16, channels=8, groups=4, num_timesteps=16)
        torch.manual_seed(0)
        model, prior = UNet(cfg), UNet(cfg).eval()
        x, t = _image(), torch.tensor([5])
        if name == "diffusion-ig":
            upd = diffusion_update(model, x, t=t, share_noise=True)
            return model, upd, ThreatModel("D"), {"iterations": it}, x
        p = {"prior_model": prior, "phase1_iterations": max(2, it // 4),
             "phase2_iterations": max(2, it // 4)}
        if name == "gidm":
            return model, diffusion_update(model, x, t=t, share_noise=True), ThreatModel("D"), p, x
        upd = diffusion_update(model, x, t=t, share_noise=False)
        return model, upd, ThreatModel("D"), {**p, "t": t.tolist()}, x

    def newer(name: str) -> tuple[Any, ...]:
        torch.manual_seed(0)
        if name == "spear":  # a leading linear+ReLU layer, 10 classes, FedSGD, batch 4
            model = build_model("mlp", input_shape=SMALL, num_classes=10)
            x, y = _image(4), torch.tensor([1, 3, 5, 7])
            return model, fedleak.observe(model, x, y), ThreatModel(), {}, x
        if name == "inverting-gradients-latent":
            model = build_model("latent-net", input_shape=SMALL, num_classes=2, width=4, pool=2)
            x, y = _image(1), torch.tensor([1])
            return model, fedleak.observe(model, x, y), ThreatModel(labels=y), {
                "iterations": it, "latent": "sample"}, x
        model = build_model("convnet", input_shape=SMALL, num_classes=2, widths=(8, 16),
                            pool_after=(0,))
        if name == "fedavg-epochs":  # 2 local epochs, reshuffled, batches of 1
            x, y = _image(2), torch.tensor([0, 1])
            upd = fedleak.observe(model, x, y, protocol="fedavg", lr=0.1, local_epochs=2,
                                  batch_size=1, seed=3)
            return model, upd, ThreatModel(labels=y), {"iterations": it, "restarts": 1}, x
        from fedleak.diffusion import UNetConfig, train_prior  # generative-prior

        cfg = UNetConfig(image_size=16, channels=8, mults=(1, 2), groups=4, num_timesteps=16)
        public = _image(16, seed=7)  # the prior's public data: never the attacked image
        prior = train_prior(public, config=cfg, steps=2 if quick else 100, batch_size=8)
        x, y = _image(1), torch.tensor([1])
        upd = fedleak.observe(model, x, y, bn_mode="eval")
        return model, upd, ThreatModel("D", labels=y), {
            "prior_model": prior, "phase1_iterations": max(2, it // 4), "iterations": it,
            "restarts": 1, "ddim_steps": 2 if quick else 4}, x

    classifiers = ("analytic", "bn-fedavg", "dlg", "gradinversion", "inverting-gradients")
    cases: dict[str, Callable[[], tuple[Any, ...]]] = {}
    for name in fedleak.available_attacks():
        if name in classifiers:
            cases[name] = lambda n=name: classifier(n)
        elif name in ("diffusion-ig", "gidm", "gidm-plus"):
            cases[name] = lambda n=name: diffusion(n)
        elif name in ("fedavg-epochs", "generative-prior", "inverting-gradients-latent", "spear"):
            cases[name] = lambda n=name: newer(n)
    return cases


def part1(devices: list[torch.device], quick: bool, tol: float, seeds: int,
          only: list[str] | None = None) -> list[dict[str, Any]]:
    print(f"\n[1] every attack on a small model, seeds 0..{seeds - 1}, on "
          f"{', '.join(map(str, devices))}; agreement: the mean PSNR over the seeds differs by "
          f"<= {tol} dB, or the devices' seed ranges overlap, or both are >= {EXACT} dB")
    rows = []
    missing = sorted(set(fedleak.available_attacks()) - set(small_cases(quick)))
    for name, build in small_cases(quick).items():
        if only and name not in only:
            continue
        row: dict[str, Any] = {"attack": name}
        for dev in devices:
            psnrs, verdicts, t0 = [], [], time.perf_counter()
            for seed in range(seeds):
                model, update, threat, options, truth = build()
                rec = fedleak.attack(name, model, update, threat=threat, device=dev, seed=seed,
                                     truth=(truth, None), **options)
                psnrs.append(fedleak.score(rec, truth)["psnr"])
                verdicts.append(rec.fit.verdict if rec.fit is not None else "-")
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            row[dev.type] = {"psnr": [round(v, 2) for v in psnrs],
                             "mean": round(sum(psnrs) / seeds, 2), "fit": verdicts,
                             "seconds": round(time.perf_counter() - t0, 2)}
        if len(devices) > 1:
            a, b = row["cpu"], row["cuda"]
            overlap = min(a["psnr"]) <= max(b["psnr"]) and min(b["psnr"]) <= max(a["psnr"])
            row["agree"] = bool(abs(a["mean"] - b["mean"]) <= tol or overlap
                                or min(a["psnr"] + b["psnr"]) >= EXACT)
        print(f"  {name:27s} " + "  ".join(
            f"{d}: PSNR {v['psnr']} (mean {v['mean']:.2f}) fit {sorted(set(v['fit']))} "
            f"{v['seconds']:.1f} s" for d, v in row.items() if isinstance(v, dict))
              + (f"  agree={row['agree']}" if "agree" in row else ""), flush=True)
        rows.append(row)
    if missing:
        print(f"  no small case for {missing}: add one to benchmarks/gpu_check.py")
    return rows


def ms_per_iteration(model: torch.nn.Module, update: Any, threat: ThreatModel, dev: torch.device,
                     warm: int, n: int, **options: Any) -> tuple[float, float]:
    """(wall, process CPU) ms per IG iteration from progress stamps after ``warm`` iterations.

    The CPU clock is the fair one for a CPU run on a shared machine (it barely moves when
    other processes compete); it counts every thread, so it is the CPU's cost, not its speed.
    """
    stamps: list[tuple[int, float, float]] = []

    def progress(done: int, _loss: float) -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        stamps.append((done, time.perf_counter(), time.process_time()))

    fedleak.attack("inverting-gradients", model, update, threat=threat, device=dev,
                   iterations=warm + n, checkpoint_every=1, progress=progress, **options)
    (i0, t0, c0), (i1, t1, c1) = next(s for s in stamps if s[0] >= warm), stamps[-1]
    k = max(1, i1 - i0)
    return 1000 * (t1 - t0) / k, 1000 * (c1 - c0) / k


def part2(dev: torch.device, quick: bool) -> list[dict[str, Any]]:
    size = 224
    batches = (1,) if quick else (1, 8)
    warm, n = (1, 2) if quick else (3, 10)
    print(f"\n[2] realistic seed-000 setting on {dev}: ResNet-18 (BN, train mode), {size}x{size} "
          f"grey, SGD lr 0.01, 1 local epoch; IG with FedAvg replay, ms per iteration "
          f"({warm} warm-up + {n} timed)")
    rows = []
    torch.manual_seed(0)
    model = build_model("resnet18", input_shape=(1, size, size), num_classes=2).to(dev)
    for b in batches:
        x = _image(b, (1, size, size))
        y = torch.arange(b) % 2
        upd = fedleak.observe(model, x, y, protocol="fedavg", lr=0.01, local_epochs=1,
                              batch_size=b, bn_mode="train", seed=0)
        threat = ThreatModel(labels=y)
        for restarts in ((1, 4) if b == 1 else (1,)):
            ms, cpu = ms_per_iteration(model, upd, threat, dev, warm, n, restarts=restarts)
            rows.append({"device": str(dev), "batch": b, "restarts": restarts, "ms_per_iter": ms,
                         "cpu_ms_per_iter": cpu})
            print(f"  batch {b}, {restarts} restart(s): {ms:9.1f} ms/iteration (wall), "
                  f"{cpu:9.1f} ms CPU time", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="the GPU to check (auto: the first)")
    ap.add_argument("--quick", action="store_true", help="tiny settings (smoke run)")
    ap.add_argument("--tol", type=float, default=2.0, help="PSNR agreement tolerance (dB)")
    ap.add_argument("--seeds", type=int, default=3, help="attack seeds per device in part 1")
    ap.add_argument("--only", nargs="+", default=None, help="part 1: these attacks alone")
    ap.add_argument("--skip-realistic", action="store_true", help="part 1 only")
    ap.add_argument("--realistic-only", action="store_true", help="part 2 only")
    ap.add_argument("--cpu-realistic", action="store_true",
                    help="with a GPU, also time part 2 on the CPU (slow)")
    ap.add_argument("--json", default=None, help="write all rows to this file")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    gpu = resolve_device(args.device)
    cpu = torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if gpu.type == "cpu":
        print("GPU: none found (device 'auto' resolved to the CPU): the GPU half is SKIPPED; "
              "running the CPU half only")
        devices = [cpu]
    else:
        name = torch.cuda.get_device_name(gpu) if gpu.type == "cuda" else gpu.type
        print(f"GPU: {gpu} ({name})")
        devices = [cpu, gpu]
    agreement = [] if args.realistic_only else part1(devices, args.quick, args.tol, args.seeds,
                                                       args.only)
    out: dict[str, Any] = {"agreement": agreement}
    if not args.skip_realistic:
        where = [gpu] if gpu.type != "cpu" else [cpu]
        if args.cpu_realistic and gpu.type != "cpu":
            where.append(cpu)
        out["speed"] = [r for dev in where for r in part2(dev, args.quick)]
    bad = [r["attack"] for r in out["agreement"] if r.get("agree") is False]
    if len(devices) > 1:
        print(f"\nagreement: {'all attacks agree' if not bad else 'DISAGREE: ' + ', '.join(bad)}")
    else:
        print("\nagreement: not checked (no GPU); every attack ran on the CPU")
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
