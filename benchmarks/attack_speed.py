"""How fast the iterative attacks run, per iteration, against a plain training step.

Why: an attack iteration costs a forward, a backward and a double backward (or K of them for a
FedAvg replay); its ratio to one ordinary training step (forward + backward + SGD step on the
same model and batch) says whether the vectorized simulator is doing its job, and R=4 batched
restarts vs. 4 sequential runs says what batching buys. Timings are printed, never asserted.

    python benchmarks/attack_speed.py            # 5 warm-up + 30 timed iterations
    python benchmarks/attack_speed.py --quick    # 2 + 8, for a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import fedleak
from fedleak.attacks import ATTACKS
from fedleak.errors import FedleakError
from fedleak.fl.threat import ThreatModel
from fedleak.models import build_model

MODELS: dict[str, dict[str, Any]] = {
    "convnet": {"input_shape": (1, 32, 32), "num_classes": 2, "head": "flatten"},
    "lenet": {"input_shape": (3, 32, 32), "num_classes": 10},
    "mlp": {"input_shape": (1, 32, 32), "num_classes": 2},
}
# attacks whose restarts are one batched computation (R=4 batched vs. 4 sequential runs)
BATCHED = ("inverting-gradients", "gradinversion", "bn-fedavg", "diffusion-ig", "gidm",
           "gidm-plus")
CLASSIFIER = ["dlg", "inverting-gradients", "gradinversion", "analytic", "bn-fedavg"]


def train_step_ms(loss: Callable[[nn.Module], torch.Tensor], model: nn.Module) -> float:
    """Median ms of one plain SGD training step (forward + backward + step) on a copy."""
    import copy

    net = copy.deepcopy(model).train()
    for p in net.parameters():
        p.requires_grad_(True)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    times = []
    for i in range(5 + 30):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss(net).backward()
        opt.step()
        if i >= 5:
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


@dataclass
class Case:
    """One client situation to time attacks on, with its own plain training step."""

    title: str
    model: nn.Module
    update: fedleak.ClientUpdate
    threat: ThreatModel
    step_ms: float
    attacks: list[str]
    options: dict[str, Any]


def attack_ms(
    name: str,
    model: nn.Module,
    update: fedleak.ClientUpdate,
    threat: ThreatModel,
    warm: int,
    n: int,
    key: str = "iterations",
    **options: Any,
) -> tuple[float, str]:
    """ms per iteration from progress timestamps after ``warm`` iterations (setup excluded).

    ``key`` is the attack's option for the iteration count (GIDM's phase 1: its latent loop).
    """
    stamps: list[tuple[int, float]] = []

    def progress(done: int, _loss: float) -> None:
        stamps.append((done, time.perf_counter()))

    t0 = time.perf_counter()
    rec = fedleak.attack(
        name, model, update, threat=threat, progress=progress, checkpoint_every=warm,
        **{key: warm + n}, **options,
    )
    total = time.perf_counter() - t0
    stamps = [s for s in stamps if s[0] >= warm]
    if len(stamps) >= 2 and stamps[-1][0] > stamps[0][0]:
        (i0, t_0), (i1, t_1) = stamps[0], stamps[-1]
        return 1000 * (t_1 - t_0) / (i1 - i0), ""
    if rec.iterations:  # e.g. DLG converged early: fall back to the whole run
        return 1000 * total / rec.iterations, f"whole run, {rec.iterations} it"
    return float("nan"), "no iterations"


def _classifier_cases(batch: int) -> Iterator[Case]:
    """FedSGD updates of the classifiers (BN in eval mode), and bn-fedavg's FedAvg client."""
    for model_name, spec in MODELS.items():
        torch.manual_seed(0)
        model = build_model(model_name, **spec)
        shape = spec["input_shape"]
        x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(1))
        y = torch.arange(batch) % spec["num_classes"]
        update = fedleak.observe(model, x, y, bn_mode="eval")
        step = train_step_ms(lambda net, x=x, y=y: F.cross_entropy(net(x), y), model)
        names = [n for n in CLASSIFIER if n != "bn-fedavg"]
        if model_name != "mlp":  # analytic inverts a leading fully-connected layer only
            names.remove("analytic")
        yield Case(f"{model_name} {shape} b{batch}", model, update, ThreatModel(labels=y), step,
                   names, {})
        if model_name == "convnet":  # a FedAvg client with BN in train mode: 2 steps of batch b
            x2 = torch.rand(2 * batch, *shape, generator=torch.Generator().manual_seed(2))
            y2 = torch.arange(2 * batch) % spec["num_classes"]
            upd = fedleak.observe(model, x2, y2, protocol="fedavg", batch_size=batch,
                                  local_steps=2, lr=0.01, bn_mode="train", shuffle=False)
            xb, yb = x2[:batch], y2[:batch]
            local = 2 * train_step_ms(lambda net, xb=xb, yb=yb: F.cross_entropy(net(xb), yb),
                                      model)
            yield Case(f"convnet FedAvg K=2 b{batch} (vs 2 steps)", model, upd,
                       ThreatModel(labels=y2), local, ["bn-fedavg", "inverting-gradients"],
                       {"restarts": 1})


def _diffusion_cases(batch: int) -> Iterator[Case]:
    """A 16x16 UNet client (FedSGD), noise shared (diffusion-ig, gidm) or private (gidm-plus)."""
    from fedleak.diffusion import NoiseSchedule, UNet, UNetConfig, diffusion_loss, diffusion_update

    sched = NoiseSchedule("cosine", 16)
    torch.manual_seed(0)
    model = UNet(UNetConfig(num_timesteps=16))
    prior = UNet(UNetConfig(num_timesteps=16)).eval()  # timing only: an untrained stand-in
    prior.diffusion_meta = {"prediction": "v", "schedule": sched.spec}
    x = torch.rand(batch, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.arange(batch) % 16
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    shared = diffusion_update(model, x, t=t, epsilon=eps, share_noise=True, schedule=sched)
    private = diffusion_update(model, x, t=t, epsilon=eps, share_noise=False, schedule=sched)
    step = train_step_ms(lambda net: diffusion_loss(net, x, t, eps, sched, "v"), model)
    level_d = ThreatModel("D")
    yield Case(f"unet (1, 16, 16) b{batch}", model, shared, level_d, step, ["diffusion-ig"], {})
    yield Case(f"unet (1, 16, 16) b{batch}, through 8 DDIM steps", model, shared, level_d, step,
               ["gidm"], {"prior_model": prior, "phase2_iterations": 0})
    yield Case(f"unet (1, 16, 16) b{batch}, private noise, t given", model, private, level_d,
               step, ["gidm-plus"], {"prior_model": prior, "phase2_iterations": 0,
                                     "t": t.tolist()})


def run(
    quick: bool, batch: int, attacks: list[str] | None, threads: int | None
) -> list[dict[str, Any]]:
    warm, n = (2, 8) if quick else (5, 30)
    if threads:
        torch.set_num_threads(threads)
    rows: list[dict[str, Any]] = []
    for case in [*_classifier_cases(batch), *_diffusion_cases(batch)]:
        print(f"\n{case.title}: plain training step {case.step_ms:.1f} ms")
        for name in case.attacks:
            if attacks and name not in attacks:
                continue
            if name not in ATTACKS:
                print(f"  {name}: not registered, skipped")
                continue
            cls = ATTACKS.get(name)
            row: dict[str, Any] = {"model": case.title.split()[0], "attack": name,
                                   "case": case.title, "step_ms": case.step_ms}
            opts = dict(case.options)
            try:
                key = next((k for k in ("iterations", "phase1_iterations") if k in cls.options()),
                           None)
                if key is None:  # closed form: one solve, no iterations
                    t = time.perf_counter()
                    fedleak.attack(name, case.model, case.update, threat=case.threat)
                    row.update(ms=1000 * (time.perf_counter() - t), note="one-shot, total ms")
                else:
                    # DLG reports progress once per 20 L-BFGS iterations: time whole calls
                    w, k = (20, 40 if n > 10 else 20) if name == "dlg" else (warm, n)
                    opts.setdefault("restarts", 1)
                    ms, note = attack_ms(name, case.model, case.update, case.threat, w, k, key,
                                         **opts)
                    row.update(ms=ms, note=note)
                    if name in BATCHED and "restarts" in cls.options() and opts["restarts"] == 1:
                        r4, _ = attack_ms(name, case.model, case.update, case.threat, w, k, key,
                                          **{**opts, "restarts": 4})
                        row.update(r4_batched=r4, r4_sequential=4 * ms)
            except FedleakError as exc:
                row.update(ms=float("nan"), note=f"n/a: {str(exc)[:70]}")
            rows.append(row)
            print(_format(row), flush=True)
    return rows


def _format(row: dict[str, Any]) -> str:
    ms = row["ms"]
    ratio = ms / row["step_ms"] if ms == ms else float("nan")
    text = f"  {row['attack']:<20} {ms:8.1f} ms/it  x{ratio:5.1f} train step"
    if "r4_batched" in row:
        text += (
            f"  | R=4 batched {row['r4_batched']:7.1f} ms/it vs 4 sequential "
            f"{row['r4_sequential']:7.1f} ms/it (x{row['r4_sequential'] / row['r4_batched']:.2f})"
        )
    if row.get("note"):
        text += f"  [{row['note']}]"
    return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 warm-up + 8 timed iterations")
    ap.add_argument("--batch", type=int, default=1, help="client batch size (default 1)")
    ap.add_argument("--attacks", nargs="*", help="attack names (default: all registered)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = run(args.quick, args.batch, args.attacks, args.threads)
    print("\nmodel    attack                 ms/it  x step  R=4 batched  4 sequential  speed-up")
    for r in rows:
        ms = r["ms"]
        ratio = ms / r["step_ms"] if ms == ms else float("nan")
        b, s = r.get("r4_batched"), r.get("r4_sequential")
        extra = f"{b:11.1f}  {s:12.1f}  x{s / b:6.2f}" if b else f"{'-':>11}  {'-':>12}  {'-':>7}"
        print(f"{r['model']:<8} {r['attack']:<20} {ms:7.1f}  {ratio:6.1f}  {extra}  {r['case']}")


if __name__ == "__main__":
    main()
