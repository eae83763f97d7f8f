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
  same model, faces and gradient (labels granted), flatten/gap x batch 1/4; target: fedleak
  >= breaching + 2 dB and >= the flat image + 3 dB.

Every row returns (setting, attack, result dict or None, target text, verdict "met"/"missed").
"""

from __future__ import annotations

import json
import subprocess
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


def _verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def _scored(rec: fedleak.Reconstruction, truth: torch.Tensor, seconds: float) -> dict[str, Any]:
    s = fedleak.score(rec, truth)
    return {"psnr": s["psnr"], "ssim": s["ssim"], "flat": s["flat_psnr"], "seconds": seconds,
            "iterations": rec.iterations}


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


def breaching_rows(victim: Any, iterations: int) -> list[Row]:
    """breaching (shared harness) and fedleak IG defaults on the same problem, 4 settings."""
    script = PEER / "run_breaching.py"
    if not (PEER_PYTHON.is_file() and script.is_file()):
        return [("breaching", "-", None, "", f"harness missing ({PEER_PYTHON}, {script})")]
    faces = load_dataset("lfw-faces", size=SIZE, split="all")
    faces = faces.images[faces.labels == 0]
    rows: list[Row] = []
    for head in ("flatten", "gap"):
        for n in (1, 4):
            # PSNR is deterministic; the harness's wait for an idle machine only matters for
            # its timings, which this comparison does not use
            cmd = [str(PEER_PYTHON), str(script), "--batch", str(n), "--head", head,
                   "--iterations", str(iterations), "--wait-idle", "0", "--retries", "0"]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=PEER, check=False)
            try:
                peer = json.loads(done.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                rows.append((f"{head}-b{n}", "breaching", None, "", f"failed: {done.stderr[-80:]}"))
                continue
            model = victim(head)
            truth, labels = faces[:n].clone(), torch.zeros(n, dtype=torch.long)
            update = fedleak.observe(model, truth, labels, bn_mode="eval")
            start = time.perf_counter()
            rec = fedleak.attack("inverting-gradients", model, update,
                                 threat=ThreatModel(labels=labels), iterations=iterations)
            r = _scored(rec, truth, time.perf_counter() - start)
            b = {"psnr": peer["psnr"], "ssim": float("nan"), "flat": r["flat"],
                 "seconds": peer.get("attack_wall_s", float("nan")), "iterations": iterations}
            rows.append((f"{head}-b{n}", "breaching invertinggradients", b, "", ""))
            ok = r["psnr"] >= peer["psnr"] + 2 and r["psnr"] >= r["flat"] + 3
            rows.append((f"{head}-b{n}", "fedleak inverting-gradients", r,
                         f">= {peer['psnr'] + 2:.2f} and >= {r['flat'] + 3:.2f}", _verdict(ok)))
    return rows


def print_rows(rows: list[Row]) -> None:
    print(f"\n{'setting':<22} {'attack':<30} {'PSNR':>6} {'flat':>6} {'SSIM':>6} {'sec':>7}  "
          "target")
    for sname, tag, r, target, verdict in rows:
        if r is None:
            print(f"{sname:<22} {tag:<30} {'-':>6} {'':>6} {'':>6} {'':>7}  {target} {verdict}")
            continue
        print(f"{sname:<22} {tag:<30} {r['psnr']:6.2f} {r['flat']:6.2f} {r['ssim']:6.3f} "
              f"{r['seconds']:7.1f}  {target} {verdict}")
