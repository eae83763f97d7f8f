"""The optimization loop shared by the iterative attacks.

Variables carry a leading restart dimension R; the objective returns one loss per restart, so R
restarts run as one vectorized computation. The loop keeps each restart's best candidate by
attack loss (never by ground truth); per iteration it reads back only the R losses and R
finiteness flags (the callback's images only at checkpoints).

Non-finite values are never returned silently: a restart whose loss or variable gradient goes
NaN/inf is not recorded at that iterate, and is restarted from a fresh draw (``fresh``) up to
``retries`` times (its best finite iterate so far is kept); a restart out of retries stops
moving, and when no restart is left with a finite iterate the loop raises
:class:`~fedleak.errors.AttackDivergedError` rather than hand back its random start.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fedleak.attacks.base import AttackInputs, Checkpoint
from fedleak.errors import AttackDivergedError, ConfigError

Variables = dict[str, torch.Tensor]
#: fresh starts per restart after a non-finite loss or gradient, before the restart is given up
RETRIES = 3
#: longest wait between two progress reports, in seconds
PROGRESS_SECONDS = 1.0


@dataclass
class OptimizationResult:
    best: Variables  # each (R, ...), best iterate per restart
    best_loss: torch.Tensor  # (R,)
    history: torch.Tensor  # (iterations, R) loss per iteration
    iterations: int
    seconds: float
    retried: int = 0  # fresh starts after a non-finite loss or gradient, over all restarts
    chunk: int | None = None  # restarts per forward/backward when chunked (None: all at once)


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
    fresh: Callable[[torch.Tensor], Variables] | None = None,
    retries: int = RETRIES,
    who: str = "the attack",
    chunk: int | None = None,
    select_after: float | None = None,
    constants: Variables | None = None,
    before_step: Callable[[Variables, int], None] | None = None,
    summarize: Callable[[Variables, torch.Tensor], torch.Tensor] | None = None,
) -> OptimizationResult:
    """Minimize ``objective`` over ``variables`` with Adam.

    Args:
        signed: Inverting Gradients' trick: Adam on the sign of the gradient.
        project: in-place projection after each step (e.g. clamp images to [0, 1]).
        after_step: in-place update after each step (e.g. Langevin noise).
        decode: maps variables to images (R, N, C, H, W) for checkpoints (default: the
            ``image_key`` variable).
        summarize: ``summarize(best, best_loss)`` -> the checkpoints' images (N, C, H, W) from
            every restart's best variables so far (e.g. their consensus); default: the
            lowest-loss restart's images.
        fresh: ``fresh(idx)`` draws new starting variables for the restarts ``idx`` (leading
            dim ``len(idx)``), used when their loss or gradient goes non-finite; None: such a
            restart is given up at once.
        retries: fresh starts allowed per restart; ``who`` names the attack in the error.

        chunk: restarts per forward/backward (memory); None: all at once. Only for objectives
            whose restarts are independent (the loss of restart i depends on row i alone).
        before_step: called with every running restart's variables (and the iteration) before
            the objective, e.g. to compute a detached consensus over all restarts that each
            chunk then reads (GradInversion's group consistency).
        constants: per-restart tensors (leading dim R) the objective reads but does not
            optimize (e.g. each restart's labels); sliced with the variables for chunks and
            restart selection, and passed to ``objective`` in the same dict.
        select_after: with R > 1, after this fraction of ``iterations`` only the restart with
            the lowest attack loss so far continues (with its Adam state); the others keep
            their best iterate and loss, and NaN history from then on. None: all run to the
            end. Restart-separable objectives only.

    Progress: ``inputs.progress`` is called at every checkpoint and at least every
    :data:`PROGRESS_SECONDS` in between, so a bar moves even when iterations are slow.

    Raises:
        AttackDivergedError: no restart kept a finite loss with finite gradients.
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
    alive = torch.ones(r, dtype=torch.bool, device=dev)
    left = torch.full((r,), retries if fresh is not None else 0, device=dev)
    retried = 0
    decode = decode or (lambda v: v[image_key])
    select_at = None if select_after is None or r == 1 else int(select_after * iterations)
    rows = torch.arange(r, device=dev)  # the restarts still running: all, or the selected one
    const = dict(constants or {})
    start = time.perf_counter()
    shown = start  # when progress was last reported
    done = 0
    for it in range(iterations):
        if it == select_at:
            leaves, opt, rows = _keep_best(leaves, opt, int(best_loss.argmin()))
            const = {k: v[rows.to(v.device)] for k, v in const.items()}
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(schedule, it, iterations, warmup)
        opt.zero_grad(set_to_none=True)
        if before_step is not None:
            with torch.no_grad():
                before_step(leaves, it)
        active = rows.numel()
        if chunk is None or chunk >= active:
            loss = objective({**leaves, **const})  # (R,)
            loss.sum().backward()
        else:  # each chunk's graph is freed before the next one is built
            parts = []
            for s in range(0, active, chunk):
                part = objective({k: v[s : s + chunk] for k, v in {**leaves, **const}.items()})
                part.sum().backward()
                parts.append(part.detach())
            loss = torch.cat(parts)
        with torch.no_grad():
            lv = loss.detach()
            history[it, rows] = lv
            ok = torch.isfinite(lv)
            for v in leaves.values():
                if v.grad is not None:
                    ok &= torch.isfinite(v.grad).flatten(1).all(1)
            running = alive[rows]
            bad = running & ~ok
            ok &= running
            improved = ok & (lv < best_loss[rows])
            best_loss[rows] = torch.where(improved, lv, best_loss[rows])
            for k, v in leaves.items():
                mask = improved.view(-1, *([1] * (v.ndim - 1)))
                best[k][rows] = torch.where(mask, v.detach(), best[k][rows])
            if bool(bad.any()):
                retry = bad & (left[rows] > 0)
                alive[rows] = running & ~(bad & ~retry)
                if bool(retry.any()):
                    local = torch.nonzero(retry).flatten()
                    idx = rows[local]
                    left[idx] -= 1
                    retried += int(idx.numel())
                    _restart_rows(opt, leaves, local, fresh(idx.cpu()))  # type: ignore[misc]
                if not bool(alive.any()):
                    raise AttackDivergedError(
                        f"{who} diverged: the loss or image gradient of every restart went "
                        f"NaN/inf at iteration {it + 1} ({retried} fresh starts tried); refusing "
                        "to return an unoptimized candidate."
                    )
            for v in leaves.values():  # what diverged or was given up does not move
                if v.grad is not None:
                    stop = (~ok).to(v.device).view(-1, *([1] * (v.ndim - 1)))
                    v.grad.masked_fill_(stop, 0.0)
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
        checkpoint = done % inputs.checkpoint_every == 0 or done == iterations
        if inputs.progress is not None and (
            checkpoint or time.perf_counter() - shown >= PROGRESS_SECONDS
        ):
            inputs.progress(done, float(best_loss.min()))
            shown = time.perf_counter()
        if checkpoint:
            current = float(best_loss.min())
            if inputs.callback is not None and bool(torch.isfinite(best_loss).any()):
                with torch.no_grad():
                    if summarize is not None:
                        imgs = summarize(best, best_loss)
                    else:
                        i = int(best_loss.argmin())
                        imgs = decode({k: v[i : i + 1] for k, v in best.items()})[0]
                inputs.callback(Checkpoint(iteration=done, loss=current, images=imgs.detach()))
    if not bool(torch.isfinite(best_loss).any()):
        raise AttackDivergedError(
            f"{who} found no candidate with a finite loss and gradient in {done} iterations "
            f"({retried} fresh starts tried); refusing to return an unoptimized candidate."
        )
    # the final iterate has not been evaluated; the best so far is what we return
    return OptimizationResult(
        best=best,
        best_loss=best_loss,
        history=history[:done],
        iterations=done,
        seconds=time.perf_counter() - start,
        retried=retried,
        chunk=chunk if chunk is not None and chunk < r else None,
    )


def _keep_best(
    leaves: Variables, opt: torch.optim.Adam, i: int
) -> tuple[Variables, torch.optim.Adam, torch.Tensor]:
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
    device = next(iter(leaves.values())).device
    return kept, new, torch.tensor([i], device=device)


def _restart_rows(
    opt: torch.optim.Adam, leaves: Variables, idx: torch.Tensor, new: Variables
) -> None:
    """Put fresh starting values into restarts ``idx`` and clear their Adam moments."""
    for k, v in leaves.items():
        rows = idx.to(v.device)
        v[rows] = new[k].to(device=v.device, dtype=v.dtype)
        if v.grad is not None:
            v.grad[rows] = 0.0
        state = opt.state.get(v)
        if state:
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][rows] = 0.0


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
    """Initial candidates of ``shape`` (R, N, C, H, W).

    "random" (uniform in [0, 1]), "randn" (standard normal), "constant" (0.5) or "prior".
    """
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
    raise ConfigError(
        f"`init` must be 'random', 'randn', 'constant' or 'prior'; got {kind!r}."
    )


def fresh_images(
    kind: str,
    shape: tuple[int, ...],
    seed: int,
    prior: torch.Tensor | None = None,
    noise: float = 0.1,
) -> Callable[[torch.Tensor], Variables]:
    """``fresh`` for :func:`optimize`: new ``images`` for the restarts ``idx``.

    Draws come from their own generator (seeded from ``seed``), so retries never shift the
    main run's random stream; deterministic inits ("constant", "prior") get ``noise`` so a
    retry does not start from the very point that diverged.
    """
    gen = torch.Generator().manual_seed(seed + 7919)  # cpu generator: rare retries, moved

    def draw(idx: torch.Tensor) -> Variables:
        x = init_images(kind, (int(idx.numel()), *shape[1:]), gen, prior)
        if kind in ("constant", "prior") and noise > 0:
            x = (x + noise * torch.randn(x.shape, generator=gen, device=gen.device)).clamp(0, 1)
        return {"images": x}

    return draw
