"""Attack-strength rows of ``benchmarks/attack_quality.py`` (issue 16), each with its target.

* ``spear``: an MLP (Normalize-Flatten-Linear(1024, 256)-ReLU-Linear(256, 10)) on lfw-faces
  32x32 grey, FedSGD, batch 8 and 16 (labels i mod 10): exact recovery, target >= 60 dB; and
  three refusals that must happen (batch 16 through a 12-unit layer; a tanh layer; a 2-class
  head, whose images share one upstream gradient direction).
* ``generative``: the generative-prior attack (level D) on 4 test-split faces, ConvNet
  32-64-128-128 with BN in eval mode, FedSGD, labels granted, both heads; target >= 20 dB. The
  prior is a 16x16 UNet trained on the 80 train-split faces (never the attacked ones), cached in
  ``--out``; inverting-gradients at its defaults on the same update is printed beside it.
* ``breaching``: the shared harness (``../shared/peer-breaching``, breaching 0.1.2 Inverting
  Gradients at its defaults) side by side with fedleak's inverting-gradients defaults on the
  same model, faces and gradient (labels granted), flatten/gap x batch 1/4, both on 1 thread;
  target: fedleak >= breaching + 2 dB and >= the flat image + 3 dB; and the iterations and
  seconds fedleak needs to reach breaching's PSNR (its ``tv="auto"`` search counted in).

Every row returns (setting, attack, result dict or None, target text, verdict "met"/"missed").
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import fedleak
from fedleak.data import load_dataset
from fedleak.diffusion import UNetConfig
from fedleak.diffusion.prior import load_model, save_model, train_prior
from fedleak.errors import FedleakError
from fedleak.fl import ThreatModel
from fedleak.models import build_model

Row = tuple[str, str, dict[str, Any] | None, str, str]
SIZE = 32
PRIOR_SIZE = 16
PRIOR_STEPS = 1000
PEER = Path(__file__).resolve().parent.parent / ".." / "shared" / "peer-breaching"
PEER_PYTHON = Path("/tmp/peer-venv/bin/python")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # breaching_side_by_side


def _verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def _scored(rec: fedleak.Reconstruction, truth: torch.Tensor, seconds: float) -> dict[str, Any]:
    s = fedleak.score(rec, truth)
    out = {"psnr": s["psnr"], "ssim": s["ssim"], "flat": s["flat_psnr"], "seconds": seconds,
           "iterations": rec.iterations,
           "residual": rec.fit.attack_residual if rec.fit is not None else float("nan")}
    if rec.restart_images is not None and len(rec.restart_images) > 1:  # each restart, scored
        out["restart_psnrs"] = [fedleak.score(x, truth)["psnr"] for x in rec.restart_images]
    return out


def spear_rows() -> list[Row]:
    """Exact recovery at batch 8 and 16, and refusals where exactness fails."""
    faces = load_dataset("lfw-faces", size=SIZE, split="all")
    faces = faces.images[faces.labels == 0]
    rows: list[Row] = []
    for n in (8, 16):
        torch.manual_seed(0)
        model = build_model("mlp", input_shape=(1, SIZE, SIZE), num_classes=10)
        truth, labels = faces[:n].clone(), torch.arange(n) % 10
        update = fedleak.observe(model, truth, labels)
        start = time.perf_counter()
        rec = fedleak.attack("spear", model, update)
        r = _scored(rec, truth, time.perf_counter() - start)
        rows.append((f"mlp-b{n}", "spear", r, ">= 60 dB", _verdict(r["psnr"] >= 60)))
    truth = faces[:16].clone()
    for tag, n, classes, opts in (("mlp-narrow-b16", 16, 10, {"hidden": (12,)}),
                                  ("mlp-tanh-b4", 4, 10, {"activation": "tanh"}),
                                  ("mlp-2class-b8", 8, 2, {})):
        torch.manual_seed(0)
        model = build_model("mlp", input_shape=(1, SIZE, SIZE), num_classes=classes, **opts)
        update = fedleak.observe(model, truth[:n], torch.arange(n) % classes)
        try:
            fedleak.attack("spear", model, update)
            rows.append((tag, "spear", None, "refuses", "missed (returned images)"))
        except FedleakError as exc:
            rows.append((tag, "spear", None, "refuses", f"met: {str(exc)[:70]}..."))
    return rows


def generative_prior(out: Path, log: Any = print) -> torch.nn.Module:
    """The cached 16x16 face prior, trained on the train split's faces if missing."""
    path = out / f"generative_prior_lfw-faces{PRIOR_SIZE}_{PRIOR_STEPS}.pt"
    if path.is_file():
        return load_model(path)
    train = load_dataset("lfw-faces", size=PRIOR_SIZE, split="train")
    public = train.images[train.labels == 0]
    log(f"training the prior on {len(public)} train-split faces, {PRIOR_STEPS} steps -> {path}")
    start = time.perf_counter()
    cfg = UNetConfig(image_size=PRIOR_SIZE, channels=16, mults=(1, 2), num_timesteps=16)
    model = train_prior(public, config=cfg, steps=PRIOR_STEPS, batch_size=32, flip=True,
                        schedule="cosine:16", prediction="v")
    save_model(model, path, info={"data": "lfw-faces", "split": "train", "images": len(public),
                                  "steps": PRIOR_STEPS,
                                  "seconds": round(time.perf_counter() - start, 1)})
    return model


def generative_rows(out: Path, victim: Any, quick: bool = False) -> list[Row]:
    """generative-prior vs inverting-gradients on 4 test-split faces, both heads."""
    prior = generative_prior(out)
    test = load_dataset("lfw-faces", size=SIZE, split="test")
    truth, labels = test.images[test.labels == 0][:4].clone(), torch.zeros(4, dtype=torch.long)
    threat = ThreatModel("D", labels=labels)
    opts = {"phase1_iterations": 15, "iterations": 15} if quick else {}
    rows: list[Row] = []
    for head in ("flatten", "gap"):
        model = victim(head)
        update = fedleak.observe(model, truth, labels, bn_mode="eval")
        for name, extra in (("generative-prior", {"prior_model": prior, **opts}),
                            ("inverting-gradients", {"iterations": 30} if quick else {})):
            start = time.perf_counter()
            rec = fedleak.attack(name, model, update, threat=threat, **extra)
            r = _scored(rec, truth, time.perf_counter() - start)
            target = name == "generative-prior"
            rows.append((f"test-faces-{head}-b4", name, r, ">= 20 dB" if target else "",
                         _verdict(r["psnr"] >= 20) if target else ""))
    return rows


def fedleak_run(model: torch.nn.Module, update: fedleak.ClientUpdate, truth: torch.Tensor,
                labels: torch.Tensor, iterations: int | None, every: int = 10,
                attack: str = "inverting-gradients", **options: Any) -> dict[str, Any]:
    """A fedleak attack (labels granted) with the PSNR of its current best every ``every`` its.

    ``iterations`` None: the attack's own default (per restart). The trace holds (iterations,
    PSNR, seconds). Iterations are single-restart iterations:
    with ``tv="auto"`` the candidates' iterations before the selection count too (each
    checkpoint before it counts len(tv_grid) x restarts iterations). Seconds leave out the
    scoring. The truth is used for this report only.
    """
    trace: list[tuple[int, float, float]] = []
    spent = [0.0]
    start = time.perf_counter()

    def callback(c: Any) -> None:
        t = time.perf_counter()
        trace.append((c.iteration, fedleak.score(c.images, truth)["psnr"], t - start - spent[0]))
        spent[0] += time.perf_counter() - t

    if iterations is not None:
        options = {"iterations": iterations, **options}
    rec = fedleak.attack(attack, model, update, threat=ThreatModel(labels=labels),
                         callback=callback, checkpoint_every=every, **options)
    r = _scored(rec, truth, time.perf_counter() - start - spent[0])
    rows, at = int(rec.extras.get("restarts", 1)), rec.extras.get("select_at")
    if at is None:  # every restart runs to the end
        r["trace"] = [(it * rows, p, t) for it, p, t in trace]
    else:
        r["trace"] = [(it + (rows - 1) * min(it, at), p, t) for it, p, t in trace]
    r["tv"] = rec.extras.get("tv")
    return r


def print_mean(tag: str, variant: str, psnrs: list[float]) -> None:
    """One variant's summary line over its seeds: the mean PSNR and each seed's."""
    print(f"{tag} [{variant or 'default'}]: mean {statistics.mean(psnrs):.2f} dB "
          f"({' / '.join(f'{p:.2f}' for p in psnrs)})", flush=True)


def reach(trace: list[tuple[int, float, float]], level: float) -> tuple[int, float] | None:
    """First (iterations, seconds) of a trace at which the PSNR is >= ``level``."""
    return next(((it, t) for it, p, t in trace if p >= level), None)


def breaching_rows(victim: Any, iterations: int, threads: int = 1,
                   heads: tuple[str, ...] = ("flatten", "gap"),
                   batches: tuple[int, ...] = (1, 4),
                   variants: tuple[str, ...] = ()) -> list[Row]:
    """breaching (shared harness) and fedleak IG defaults on the same problem, 4 settings.

    breaching runs ``iterations``; fedleak its own defaults, or what a variant sets (e.g.
    "restarts=8 iterations=250 select=mean tv_decay=0": the restarts' consensus). Both run on
    ``threads`` threads (breaching in its own venv through the harness's
    ``run_breaching_threads.py``, reused from ``breaching_side_by_side.run_breaching``). Each
    fedleak row also says at which iteration, and after how many seconds, fedleak first
    reached breaching's PSNR (search included). ``variants`` adds fedleak runs with other
    options ("tv=auto", "attack=fedleak-fan", "attack=fedleak-fan lookahead=0", ...).
    """
    import breaching_side_by_side as bsbs

    script = PEER / "run_breaching_threads.py"
    if not (PEER_PYTHON.is_file() and script.is_file()):
        return [("breaching", "-", None, "", f"harness missing ({PEER_PYTHON}, {script})")]
    torch.set_num_threads(threads)
    faces = load_dataset("lfw-faces", size=SIZE, split="all")
    faces = faces.images[faces.labels == 0]
    rows: list[Row] = []
    for head in heads:
        for n in batches:
            try:
                peer = bsbs.run_breaching(PEER, str(PEER_PYTHON), n, head, iterations, None)
            except SystemExit as exc:
                rows.append((f"{head}-b{n}", "breaching", None, "", f"failed: {str(exc)[-80:]}"))
                continue
            model = victim(head)
            truth, labels = faces[:n].clone(), torch.zeros(n, dtype=torch.long)
            update = fedleak.observe(model, truth, labels, bn_mode="eval")
            b = {"psnr": peer["psnr"], "ssim": float("nan"), "flat": float("nan"),
                 "seconds": peer["cpu_ms"] * iterations / 1000, "iterations": iterations}
            rows.append((f"{head}-b{n}", "breaching invertinggradients", b, "", ""))
            for variant in ("", *variants):
                opts = parse_variant(variant)
                r = fedleak_run(model, update, truth, labels, opts.pop("iterations", None),
                                **opts)
                b["flat"] = r["flat"]
                r["reach"] = reach(r["trace"], peer["psnr"])
                r["breaching"], r["variant"] = peer["psnr"], variant or "default"
                ok = r["psnr"] >= peer["psnr"] + 2 and r["psnr"] >= r["flat"] + 3
                rows.append((f"{head}-b{n}", f"fedleak {variant or 'default'}", r,
                             f">= {peer['psnr'] + 2:.2f} and >= {r['flat'] + 3:.2f}",
                             _verdict(ok)))
                print(f"  {head}-b{n} {variant or 'default'}: {r['psnr']:.2f} dB (breaching "
                      f"{peer['psnr']:.2f}, flat {r['flat']:.2f}), tv {r['tv']}, "
                      f"{r['seconds']:.0f} s, reach {r['reach']}", flush=True)
    return rows


def parse_variant(text: str) -> dict[str, Any]:
    """"tv=auto attack=fedleak-fan lookahead=0" -> options (numbers parsed, else strings)."""
    out: dict[str, Any] = {}
    for item in text.split():
        key, _, value = item.partition("=")
        try:
            out[key] = int(value)
        except ValueError:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
    return out


def print_targets(rows: list[Row]) -> None:
    """The issue-16 targets table: one line per setting with breaching and fedleak side by side."""
    fed = [(s, r) for s, tag, r, _, _ in rows if r is not None and "breaching" in r]
    if not fed:
        return
    print(f"\n{'setting':<12} {'fedleak':<28} {'breaching':>9} {'fedleak':>8} {'flat':>6} "
          f"{'tv':>6} {'>= b+2':>8} {'>= flat+3':>9} {'reach b: it':>11} {'s (1 thr)':>9}")
    for s, r in fed:
        b, p, flat = r["breaching"], r["psnr"], r["flat"]
        hit = r["reach"]
        tv = f"{r['tv']:g}" if isinstance(r["tv"], float) else str(r["tv"])
        print(f"{s:<12} {r['variant']:<28} {b:9.2f} {p:8.2f} {flat:6.2f} {tv:>6} "
              f"{_verdict(p >= b + 2):>8} {_verdict(p >= flat + 3):>9} "
              f"{hit[0] if hit else 'never':>11} {f'{hit[1]:.1f}' if hit else '-':>9}")


def print_rows(rows: list[Row]) -> None:
    print(f"\n{'setting':<22} {'attack':<30} {'PSNR':>6} {'flat':>6} {'SSIM':>6} {'sec':>7}  "
          "target")
    for sname, tag, r, target, verdict in rows:
        if r is None:
            print(f"{sname:<22} {tag:<30} {'-':>6} {'':>6} {'':>6} {'':>7}  {target} {verdict}")
            continue
        print(f"{sname:<22} {tag:<30} {r['psnr']:6.2f} {r['flat']:6.2f} {r['ssim']:6.3f} "
              f"{r['seconds']:7.1f}  {target} {verdict}")
