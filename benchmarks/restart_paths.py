"""Where the time of batched restarts goes: one attack iteration of R restarts, four ways.

Why: on one CPU thread 4 batched Inverting-Gradients restarts cost ~3-4 runs of one. This
times one iteration (objective, backward, double backward; no optimizer) on breaching's
side-by-side problem (``../shared/peer-breaching/setting.py``: ConvNet 32-64-128-128, BN eval,
32x32 grey, FedSGD) for:

* ``one``: 1 restart (fedleak's unbatched path),
* ``vmap``: R restarts through ``torch.func.vmap(grad)`` (fedleak's batched path),
* ``vmap-cl``: the same with the model in channels_last,
* ``loop``: R unbatched restarts one after the other,
* ``fold``: ONE gradient of R x B images (wrong for the attack, which needs each restart's own
  parameter gradient: a lower bound for any way of folding restarts into the batch).

If even ``fold`` costs more than 2x ``one``, no batching scheme brings R = 4 full restarts
under 2 runs on one thread: the arithmetic itself grows with R. CPU-time clock, rounds
alternate between the variants (the machine may be shared).

    OMP_NUM_THREADS=1 python benchmarks/restart_paths.py --batch 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fedleak.attacks.optimize import total_variation
from fedleak.attacks.simulate import CosineDistance, UpdateSimulator
from fedleak.fl.update import ClientUpdate

DEFAULT_PEER = Path(__file__).resolve().parents[2] / "shared" / "peer-breaching"


def variants(setting: Any, batch: int, head: str, restarts: int) -> dict[str, Any]:
    """name -> a closure running one iteration's objective and backward."""
    problem = setting.make_problem(batch, head)
    torch.set_num_threads(1)
    model = problem["model"]
    names = [n for n, _ in model.named_parameters()]
    update = ClientUpdate(kind="gradient", tensors=dict(zip(names, problem["gradients"],
                                                            strict=True)), num_samples=batch)
    sim = UpdateSimulator(model, update, mode="gradient")
    sim_cl = UpdateSimulator(model.to(memory_format=torch.channels_last), update,
                             mode="gradient")
    dist = CosineDistance(dict(update.tensors))
    y = problem["y"].reshape(1, -1).long()
    shape = (1, setting.IMAGE_SIZE, setting.IMAGE_SIZE)
    x1 = torch.rand(1, batch, *shape, requires_grad=True)
    xr = torch.rand(restarts, batch, *shape, requires_grad=True)
    xf = torch.rand(1, restarts * batch, *shape, requires_grad=True)

    def step(s: UpdateSimulator, x: torch.Tensor, labels: torch.Tensor) -> None:
        loss = dist(s(x, labels)) + 1e-2 * total_variation(x)
        loss.sum().backward()

    def loop() -> None:
        for r in range(restarts):
            step(sim, xr[r : r + 1], y)

    return {
        "one": lambda: step(sim, x1, y),
        "vmap": lambda: step(sim, xr, y.expand(restarts, -1)),
        "vmap-cl": lambda: step(sim_cl, xr, y.expand(restarts, -1)),
        "loop": loop,
        "fold": lambda: step(sim, xf, y.repeat(1, restarts)),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--head", default="gap", choices=["gap", "flatten"])
    ap.add_argument("--restarts", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="iterations per round and variant")
    ap.add_argument("--peer", type=Path, default=DEFAULT_PEER, help="the peer harness folder")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(args.peer))
    import setting  # type: ignore[import-not-found]

    fns = variants(setting, args.batch, args.head, args.restarts)
    for f in fns.values():  # warm-up
        for _ in range(2):
            f()
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for rnd in range(args.rounds):
        order = list(fns) if rnd % 2 == 0 else list(fns)[::-1]
        for k in order:
            c = time.process_time()
            for _ in range(args.steps):
                fns[k]()
            cpu[k].append(1000 * (time.process_time() - c) / args.steps)
    one = statistics.median(cpu["one"])
    print(f"batch {args.batch}, {args.head} head, R={args.restarts}, 1 thread, CPU ms per "
          f"iteration (median of {args.rounds} alternating rounds x {args.steps} steps)")
    for k, v in cpu.items():
        m = statistics.median(v)
        print(f"  {k:<8} {m:8.1f} ms  {m / one:5.2f}x one restart")


if __name__ == "__main__":
    main()
