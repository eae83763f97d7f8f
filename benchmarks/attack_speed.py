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
}
# attacks whose restarts are one batched computation (R=4 batched vs. 4 sequential runs)
BATCHED = ("inverting-gradients", "gradinversion", "bn-fedavg")
FIRST = ("dlg", "inverting-gradients", "gradinversion")


def train_step_ms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, warm: int, n: int) -> float:
    """Median ms of one plain SGD training step (forward + backward + step) on a copy."""
    import copy

    net = copy.deepcopy(model).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    times = []
    for i in range(warm + n):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
        if i >= warm:
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def attack_ms(
    name: str,
    model: nn.Module,
    update: fedleak.ClientUpdate,
    threat: ThreatModel,
    warm: int,
    n: int,
    **options: Any,
) -> tuple[float, str]:
    """ms per iteration from progress timestamps after ``warm`` iterations (setup excluded)."""
    stamps: list[tuple[int, float]] = []

    def progress(done: int, _loss: float) -> None:
        stamps.append((done, time.perf_counter()))

    t0 = time.perf_counter()
    rec = fedleak.attack(
        name, model, update, threat=threat, progress=progress, checkpoint_every=warm,
        iterations=warm + n, **options,
    )
    total = time.perf_counter() - t0
    stamps = [s for s in stamps if s[0] >= warm]
    if len(stamps) >= 2 and stamps[-1][0] > stamps[0][0]:
        (i0, t_0), (i1, t_1) = stamps[0], stamps[-1]
        return 1000 * (t_1 - t_0) / (i1 - i0), ""
    if rec.iterations:  # e.g. DLG converged early: fall back to the whole run
        return 1000 * total / rec.iterations, f"whole run, {rec.iterations} it"
    return float("nan"), "no iterations"


def run(
    quick: bool, batch: int, attacks: list[str] | None, threads: int | None
) -> list[dict[str, Any]]:
    warm, n = (2, 8) if quick else (5, 30)
    if threads:
        torch.set_num_threads(threads)
    names = attacks or [*FIRST, *sorted(set(ATTACKS.names()) - set(FIRST))]
    rows: list[dict[str, Any]] = []
    for model_name, spec in MODELS.items():
        torch.manual_seed(0)
        model = build_model(model_name, **spec)
        shape = spec["input_shape"]
        x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(1))
        y = torch.arange(batch) % spec["num_classes"]
        update = fedleak.observe(model, x, y, bn_mode="eval")
        threat = ThreatModel(labels=y)
        step = train_step_ms(model, x, y, warm, max(n, 20))
        print(f"\n{model_name} {shape}, batch {batch}: plain training step {step:.1f} ms")
        for name in names:
            if name not in ATTACKS:
                print(f"  {name}: not registered, skipped")
                continue
            cls = ATTACKS.get(name)
            row: dict[str, Any] = {"model": model_name, "attack": name, "step_ms": step}
            try:
                if "iterations" not in cls.options():  # closed form: one solve, no iterations
                    t = time.perf_counter()
                    fedleak.attack(name, model, update, threat=threat)
                    row.update(ms=1000 * (time.perf_counter() - t), note="one-shot, total ms")
                else:
                    # DLG reports progress once per 20 L-BFGS iterations: time whole calls
                    w, k = (20, 40 if n > 10 else 20) if name == "dlg" else (warm, n)
                    ms, note = attack_ms(name, model, update, threat, w, k, restarts=1)
                    row.update(ms=ms, note=note)
                    if name in BATCHED and "restarts" in cls.options():
                        r4, _ = attack_ms(name, model, update, threat, w, k, restarts=4)
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
        print(f"{r['model']:<8} {r['attack']:<20} {ms:7.1f}  {ratio:6.1f}  {extra}")


if __name__ == "__main__":
    main()
