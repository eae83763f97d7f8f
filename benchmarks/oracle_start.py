"""Where Inverting Gradients ends from a start near the truth, or from its own consensus (16).

Why: on the global-average-pool rows no setting reaches the targets. This tells an optimizer
that misses the truth's basin (a start at the truth stays there) from an update that does not
pin the images (a start at the truth drifts away, to images that match the update as well or
better). The truth start is an oracle for this diagnostic only: no attack is ever given it.
``--start coarse`` starts at the truth's coarse part alone (does the update lead the matching
to the detail?); ``--start consensus`` from the restarts' consensus the attack reaches alone
(does fitting the update better bring it closer to the truth?); ``--start random`` is the
attack's own start. Each result also gets its error's energy per spatial-frequency band over the
truth's (above 1: detail in the wrong place, worse than none).
Problem: the side-by-side one (``gap_strength.py``: untrained ConvNet 32-64-128-128, BN eval,
the first lfw faces 32x32 grey, FedSGD, labels granted), 1 thread, 1 restart.

    python benchmarks/oracle_start.py --head gap --batch 4 --sigma 0.05 \\
        --variants "" "lr=0.01" "lr=0.01 tv=0"
    python benchmarks/oracle_start.py --head gap --batch 4 --start consensus \\
        --variants "lr=0.01 tv=0 iterations=500"
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator

import torch
from attack_quality import SIZE, victim
from strength_rows import parse_variant

import fedleak
import fedleak.attacks.inverting as inverting
from fedleak.data import load_dataset
from fedleak.fl import ThreatModel


@contextlib.contextmanager
def started_at(images: torch.Tensor, jitter: float = 0.0) -> Iterator[None]:
    """Every restart of inverting-gradients starts at ``images`` (N, C, H, W) inside, each
    plus its own Gaussian noise of std ``jitter`` (seeded; 0: all restarts start alike)."""
    original = inverting.initial_images

    def start(inputs, init, restarts, who):  # noqa: ANN001, ANN202 - same signature
        x = images[None].expand(restarts, *images.shape).clone()
        if jitter:
            noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
            x = (x + jitter * noise).clamp(0, 1)
        return x.to(inputs.device)

    inverting.initial_images = start
    try:
        yield
    finally:
        inverting.initial_images = original


def radius(h: int, w: int) -> torch.Tensor:
    """Each 2-D FFT bin's spatial frequency (cycles/pixel), (h, w)."""
    return torch.fft.fftfreq(h)[:, None].pow(2).add(torch.fft.fftfreq(w)[None].pow(2)).sqrt()


def lowpass(images: torch.Tensor, cutoff: float) -> torch.Tensor:
    """``images`` without their spatial frequencies above ``cutoff`` (cycles/pixel)."""
    r = radius(*images.shape[-2:])
    return torch.fft.ifft2(torch.fft.fft2(images) * (r < cutoff)).real.clamp(0, 1)


BANDS = ((0.0, 0.07), (0.07, 0.15), (0.15, 0.3), (0.3, 1.0))


def band_errors(images: torch.Tensor, truth: torch.Tensor) -> list[tuple[tuple, float]]:
    """Per frequency band: the error's energy over the truth's own (its mean removed).

    Below 1: the band is partly right; about 1: the band is missing; above 1: detail of the
    right size in the wrong place (worse than none).
    """
    r = radius(*truth.shape[-2:])
    err = torch.fft.fft2(images - truth).abs().pow(2)
    ref = torch.fft.fft2(truth - truth.mean((-2, -1), keepdim=True)).abs().pow(2)
    out = []
    for lo, hi in BANDS:
        m = (r >= lo) & (r < hi)
        out.append(((lo, hi), float(err[..., m].sum() / ref[..., m].sum())))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--head", default="gap", choices=["gap", "flatten"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--sigma", type=float, default=0.05, help="noise std added to the truth")
    ap.add_argument("--start", default="truth",
                    choices=["truth", "coarse", "consensus", "consensus-coarse", "random"],
                    help="truth + noise (the oracle), the truth's coarse part alone (spatial "
                         "frequencies below --cutoff cycles/pixel), or the consensus of 8 "
                         "restarts of 250 iterations (seed 0) that the attack reached without "
                         "it (consensus-coarse: its coarse part), or the attack's own random "
                         "start (no oracle)")
    ap.add_argument("--jitter", type=float, default=0.0,
                    help="each restart starts at the start plus its own noise of this std")
    ap.add_argument("--cutoff", type=float, default=0.07, help="for --start coarse")
    ap.add_argument("--split", default="all", choices=["all", "test"],
                    help="all: the side-by-side rows' faces; test: the test split's (the "
                         "generative-prior row's)")
    ap.add_argument("--variants", nargs="*", default=[""],
                    help='option strings, e.g. "" (the default) "lr=0.01 tv=0"; none: print '
                         "the truth's coarse parts only")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    faces = load_dataset("lfw-faces", size=SIZE, split=args.split)
    faces = faces.images[faces.labels == 0]
    model = victim(args.head)
    n = args.batch
    truth, labels = faces[:n].clone(), torch.zeros(n, dtype=torch.long)
    update = fedleak.observe(model, truth, labels, bn_mode="eval")
    print("the truth without its spatial frequencies above c cycles/pixel scores: " + ", ".join(
        f"c {c:g} {fedleak.score(lowpass(truth, c), truth)['psnr']:.2f} dB"
        for c in (0.03, 0.05, 0.07, 0.1, 0.15, 0.2)), flush=True)
    if args.start == "truth":
        noise = torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))
        x0 = (truth + args.sigma * noise).clamp(0, 1)
        what = f"the truth + noise (sigma {args.sigma})"
    elif args.start == "coarse":
        x0, what = lowpass(truth, args.cutoff), f"the truth below {args.cutoff} cycles/pixel"
    elif args.start.startswith("consensus"):
        first = fedleak.attack("inverting-gradients", model, update,
                               threat=ThreatModel(labels=labels), truth=(truth, labels),
                               restarts=8, iterations=250, select="mean", tv_decay=0)
        x0, what = first.images, (f"the consensus of 8 x 250 (residual "
                                  f"{first.fit.attack_residual:.2e})")
        if args.start == "consensus-coarse":
            x0, what = lowpass(x0, args.cutoff), f"{what} below {args.cutoff} cycles/pixel"
    else:
        x0, what = None, "the attack's own random start"
    if args.jitter:
        what += f", each restart + noise {args.jitter:g}"
    print(f"{args.head}-b{n}: start at {what}"
          + (f": {fedleak.score(x0, truth)['psnr']:.2f} dB" if x0 is not None else ""),
          flush=True)
    for variant in args.variants:
        opts = parse_variant(variant)
        start = time.perf_counter()
        with started_at(x0, args.jitter) if x0 is not None else contextlib.nullcontext():
            rec = fedleak.attack("inverting-gradients", model, update,
                                 threat=ThreatModel(labels=labels), truth=(truth, labels), **opts)
        fit = rec.fit
        print(f"  [{variant or 'default'}] ends at {fedleak.score(rec, truth)['psnr']:.2f} dB; "
              f"residual {fit.attack_residual:.2e}, objective {fit.attack_objective:.2e} "
              f"(the truth's {fit.truth_objective:.2e}), {fit.verdict}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        print("    error energy / the truth's, by spatial frequency (cycles/pixel): " + ", ".join(
            f"{lo:g}-{hi:g} {ratio:.2f}" for (lo, hi), ratio in band_errors(rec.images, truth)),
            flush=True)


if __name__ == "__main__":
    main()
