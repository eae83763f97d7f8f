"""The optimization loop shared by the iterative attacks.

Variables carry a leading restart dimension R; the objective returns one loss per restart, so R
restarts run as one vectorized computation. The loop keeps each restart's best candidate by
attack loss (never by ground truth), syncs with the host only at checkpoints, and stops early on
a non-finite loss in every restart.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fedleak.attacks.base import AttackInputs, Checkpoint
from fedleak.errors import ConfigError

Variables = dict[str, torch.Tensor]


@dataclass
class OptimizationResult:
    best: Variables  # each (R, ...), best iterate per restart
    best_loss: torch.Tensor  # (R,)
    history: torch.Tensor  # (iterations, R) loss per iteration
    iterations: int
    seconds: float


def lr_factor(schedule: str | None, it: int, total: int, warmup: int = 0) -> float:
    """Learning-rate multiplier: Geiping's step decay (x0.1 at 3/8, 5/8, 7/8) or warm-up+cosine."""
    if warmup and it < warmup:
        return (it + 1) / warmup
    if schedule in (None, "constant"):
        return 1.0
    if schedule == "step":
        return 0.1 ** sum(it >= m * total / 8 for m in (3, 5, 7))
    if schedule == "cosine":
        t = (it - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * t))
    raise ConfigError(f"`schedule` must be 'step', 'cosine' or 'constant'; got {schedule!r}.")


def optimize(
    variables: Variables,
    objective: Callable[[Variables], torch.Tensor],
    inputs: AttackInputs,
    *,
    iterations: int,
    lr: float,
    signed: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    schedule: str | None = "step",
    warmup: int = 0,
    project: Callable[[Variables], None] | None = None,
    after_step: Callable[[Variables, int], None] | None = None,
    image_key: str = "images",
    decode: Callable[[Variables], torch.Tensor] | None = None,
    chunk: int | None = None,
    select_after: float | None = None,
) -> OptimizationResult:
    """Minimize ``objective`` over ``variables`` with Adam.

    Args:
        signed: Inverting Gradients' trick: Adam on the sign of the gradient.
        project: in-place projection after each step (e.g. clamp images to [0, 1]).
        after_step: in-place update after each step (e.g. Langevin noise).
        decode: maps variables to images (R, N, C, H, W) for checkpoints (default: the
            ``image_key`` variable).
        chunk: restarts per forward/backward (memory); None: all at once. Only for objectives
            whose restarts are independent (the loss of restart i depends on row i alone).
        select_after: with R > 1, after this fraction of ``iterations`` only the restart with
            the lowest attack loss so far continues (with its Adam state); the others keep
            their best iterate and loss, and NaN history from then on. None: all run to the
            end. Restart-separable objectives only.
    """
    if iterations < 1:
        raise ConfigError(f"`iterations` must be >= 1; got {iterations}.")
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in variables.items()}
    opt = torch.optim.Adam(list(leaves.values()), lr=lr, betas=betas)
    r = next(iter(leaves.values())).shape[0]
    dev = next(iter(leaves.values())).device
    history = torch.full((iterations, r), float("nan"), device=dev)
    best = {k: v.detach().clone() for k, v in leaves.items()}
    best_loss = torch.full((r,), float("inf"), device=dev)
    decode = decode or (lambda v: v[image_key])
    select_at = None if select_after is None or r == 1 else int(select_after * iterations)
    sel = slice(None)  # the restarts still running: all, or the selected one
    start = time.perf_counter()
    done = 0
    for it in range(iterations):
        if it == select_at:
            leaves, opt, sel = _keep_best(leaves, opt, int(best_loss.argmin()))
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(schedule, it, iterations, warmup)
        opt.zero_grad(set_to_none=True)
        if chunk is None or chunk >= r:
            loss = objective(leaves)  # (R,)
            loss.sum().backward()
        else:  # each chunk's graph is freed before the next one is built
            parts = []
            for s in range(0, r, chunk):
                part = objective({k: v[s : s + chunk] for k, v in leaves.items()})
                part.sum().backward()
                parts.append(part.detach())
            loss = torch.cat(parts)
        with torch.no_grad():
            lv = loss.detach()
            history[it, sel] = lv
            improved = lv < best_loss[sel]  # NaN compares False: a diverged restart keeps its best
            best_loss[sel] = torch.where(improved, lv, best_loss[sel])
            for k, v in leaves.items():
                mask = improved.view(-1, *([1] * (v.ndim - 1)))
                best[k][sel] = torch.where(mask, v.detach(), best[k][sel])
            if signed:
                for v in leaves.values():
                    if v.grad is not None:
                        v.grad.sign_()
        opt.step()
        with torch.no_grad():
            if after_step is not None:
                after_step(leaves, it)
            if project is not None:
                project(leaves)
        done = it + 1
        if done % inputs.checkpoint_every == 0 or done == iterations:
            finite = torch.isfinite(lv)
            current = float(best_loss.min())
            if inputs.progress is not None:
                inputs.progress(done, current)
            if inputs.callback is not None:
                i = int(best_loss.argmin())
                with torch.no_grad():
                    imgs = decode({k: v[i : i + 1] for k, v in best.items()})[0]
                inputs.callback(Checkpoint(iteration=done, loss=current, images=imgs.detach()))
            if not bool(finite.any()):
                history = history[:done]
                break
    # the final iterate has not been evaluated; the best so far is what we return
    return OptimizationResult(
        best=best,
        best_loss=best_loss,
        history=history[:done],
        iterations=done,
        seconds=time.perf_counter() - start,
    )


def _keep_best(
    leaves: Variables, opt: torch.optim.Adam, i: int
) -> tuple[Variables, torch.optim.Adam, slice]:
    """Continue restart ``i`` alone: its current iterate and its slice of Adam's state."""
    kept = {k: v.detach()[i : i + 1].clone().requires_grad_(True) for k, v in leaves.items()}
    group = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    new = torch.optim.Adam(list(kept.values()), **group)
    for old_leaf, new_leaf in zip(leaves.values(), kept.values(), strict=True):
        state = opt.state.get(old_leaf, {})
        new.state[new_leaf] = {
            name: (t if name == "step" or t.ndim == 0 else t[i : i + 1].clone())
            for name, t in state.items()
        }
    return kept, new, slice(i, i + 1)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV (mean absolute neighbour difference), per restart: (R, N, C, H, W) -> (R,)."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(1).mean(1)
    return dx + dy


def init_images(
    kind: str,
    shape: tuple[int, ...],
    generator: torch.Generator,
    prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """Initial candidates of ``shape`` (R, N, C, H, W): "random", "constant" (0.5) or "prior"."""
    if kind == "random":
        return torch.rand(shape, generator=generator, device=generator.device)
    if kind == "constant":
        return torch.full(shape, 0.5, device=generator.device)
    if kind == "prior":
        if prior is None:
            raise ConfigError(
                "`init='prior'` needs a prior image: give ThreatModel(level='D', prior=...)."
            )
        return prior.to(generator.device).reshape(1, 1, *shape[2:]).expand(shape).clone()
    if kind == "randn":
        return torch.randn(shape, generator=generator, device=generator.device)
    raise ConfigError(f"`init` must be 'random', 'constant' or 'prior'; got {kind!r}.")
