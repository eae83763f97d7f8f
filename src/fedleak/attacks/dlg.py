"""DLG (Zhu et al. 2019), made robust: labels first, L-BFGS with a line search, restarts.

Plain DLG optimizes dummy images and soft labels jointly with L-BFGS on the L2 gradient
distance and often stalls or diverges. Here labels are recovered first (iDLG for one image, the
bias-corrected count for a batch) unless the threat model grants them or ``joint_labels=True``;
L-BFGS uses a strong-Wolfe line search; a restart that diverges, stalls or ends above
``restart_above`` is
followed by a fresh one (up to ``restarts``), and the restart with the lowest gradient
distance wins. A start whose loss or gradient goes NaN/inf is discarded and redrawn (a bounded
number of times); none finite raises :class:`~fedleak.errors.AttackDivergedError`.
``iterations`` counts L-BFGS iterations; the loss history has one value per 20-iteration
L-BFGS call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fedleak.attacks.base import Attack, AttackInputs, Checkpoint, Reconstruction, register_attack
from fedleak.attacks.fit import FitTerms
from fedleak.attacks.optimize import RETRIES
from fedleak.attacks.simulate import UpdateSimulator, gradient_distance, pseudo_gradient
from fedleak.errors import AttackDivergedError, ConfigError


@register_attack("dlg")
@dataclass(frozen=True)
class DLG(Attack):
    """Deep Leakage from Gradients: L2 gradient matching with L-BFGS.

    Knowledge: architecture and the number of images (level C: training details); labels are
    recovered from the update unless granted. FedAvg updates are matched via the pseudo-gradient
    unless ``replay=True``.

    Options:
        iterations: L-BFGS iterations per restart.
        restarts: independent starts, run one after another; the lowest attack loss wins.
        tolerance: stop a restart once its gradient distance is below this.
        restart_above: a restart ending above this distance counts as stuck.
        lr: L-BFGS step size. history_size: L-BFGS memory.
        metric: "l2" (DLG's distance) or "l2-layer" (per-layer normalized L2).
        joint_labels: optimize soft labels with the images (DLG) instead of using the
            granted or recovered ones.
        replay: match FedAvg deltas by replaying the local steps, not the pseudo-gradient.
    """

    iterations: int = 1500
    restarts: int = 3
    tolerance: float = 1e-7
    restart_above: float = 1e-2
    lr: float = 1.0
    history_size: int = 100
    metric: str = "l2-layer"
    joint_labels: bool = False
    replay: bool = False

    requires = frozenset({"architecture", "training_details"})

    def _setup(
        self, inputs: AttackInputs
    ) -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], Callable[..., torch.Tensor]]:
        """The attack loss ``(x, y) -> (R,)`` and the normalized residual of a simulated update:
        shared by reconstruct and objective_at."""
        update = inputs.update
        mode = "replay" if (self.replay and update.kind == "delta") else "gradient"
        training = update.training
        bn_mode = training.bn_mode if training else "eval"
        # L-BFGS needs one objective: dropout masks stay fixed through the run
        sim = UpdateSimulator(inputs.model, update, mode=mode, bn_mode=bn_mode, masks="per-restart")
        target = dict(update.tensors) if mode == "replay" else pseudo_gradient(update)
        norm2 = sum(float(t.pow(2).sum()) for t in target.values()) or 1.0

        def distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return gradient_distance(sim(x, y), target, metric=self.metric)

        def residual(d: torch.Tensor) -> torch.Tensor:
            """The distance normalized: per-tensor mean (l2-layer), relative (l2), cosine."""
            if self.metric == "l2-layer":
                return d / len(target)
            return d / norm2 if self.metric == "l2" else d

        return distance, residual

    def objective_at(
        self, inputs: AttackInputs, images: torch.Tensor, labels: torch.Tensor | None
    ) -> FitTerms:
        """The gradient distance at ``images`` with hard ``labels`` (the joint search's soft
        labels are evaluated at their argmax, the labels the attack reports)."""
        distance, residual = self._setup(inputs)
        y = labels if labels is not None else inputs.labels
        if y is None:
            raise ConfigError("dlg's objective needs labels: give them or grant them.")
        x = images.reshape(1, inputs.num_images, *inputs.image_shape).detach()
        with torch.no_grad():
            loss = distance(x, y.reshape(1, -1).long())
            return FitTerms(objective=float(loss[0]), residual=float(residual(loss)[0]))

    def reconstruct(self, inputs: AttackInputs) -> Reconstruction:
        """Run L-BFGS restarts; ``iterations`` counts L-BFGS iterations per restart.

        A restart whose loss or image gradient goes NaN/inf is redone from a fresh draw (up to
        ``RETRIES`` times); if no restart stays finite the attack raises AttackDivergedError.
        """
        if self.iterations < 1 or self.restarts < 1:
            raise ConfigError(
                f"`iterations` and `restarts` of dlg must be >= 1; got {self.iterations}, "
                f"{self.restarts}."
            )
        distance, _ = self._setup(inputs)
        gen = inputs.generator()
        n, shape, k = inputs.num_images, inputs.image_shape, inputs.num_classes
        joint = self.joint_labels or inputs.labels is None
        start = time.perf_counter()
        results = []
        done = 0
        retried = 0
        for _attempt in range(self.restarts * (RETRIES + 1)):
            if len(results) >= self.restarts:
                break
            x = torch.rand((1, n, *shape), generator=gen, device=gen.device).requires_grad_(True)
            variables = [x]
            if joint:
                y = torch.randn((1, n, k), generator=gen, device=gen.device).requires_grad_(True)
                variables.append(y)
            else:
                y = inputs.labels.reshape(1, n)  # type: ignore[union-attr]
            inner = 20  # L-BFGS iterations per step() call: its history needs room to build
            opt = torch.optim.LBFGS(
                variables,
                lr=self.lr,
                max_iter=inner,
                history_size=self.history_size,
                line_search_fn="strong_wolfe",
            )
            bad = [False]

            def closure() -> torch.Tensor:
                opt.zero_grad(set_to_none=True)  # noqa: B023 (closure runs inside this loop)
                loss = distance(x, y).sum()  # noqa: B023
                loss.backward()
                finite = bool(torch.isfinite(loss)) and all(
                    v.grad is None or bool(torch.isfinite(v.grad).all())
                    for v in variables  # noqa: B023
                )
                bad[0] = bad[0] or not finite  # noqa: B023
                return loss

            history: list[torch.Tensor] = []
            n_iter, prev = 0, float("inf")
            while n_iter < self.iterations:
                loss = opt.step(closure).detach()
                if bad[0]:
                    break
                history.append(loss)
                now = opt.state[x].get("n_iter", 0)
                lv = float(loss)
                # L-BFGS ends a call early on a flat stretch; give up only if a call brings
                # no progress at all
                stalled = now - n_iter < inner and not lv < prev * (1 - 1e-6)
                n_iter, prev = now, min(prev, lv)
                if inputs.progress is not None:
                    inputs.progress(done + n_iter, lv)
                if inputs.callback is not None and (
                    len(history) % max(1, inputs.checkpoint_every // inner) == 0
                ):
                    inputs.callback(Checkpoint(done + n_iter, lv, x.detach()[0].clamp(0, 1)))
                if lv < self.tolerance or stalled:
                    break
            done += n_iter
            if bad[0]:  # NaN/inf loss or gradient: this start cannot be trusted, draw anew
                retried += 1
                continue
            # the line search leaves the final iterate unevaluated: score it once
            with torch.no_grad():
                final = float(distance(x, y).sum())
            if not math.isfinite(final) or not bool(torch.isfinite(x).all()):
                retried += 1
                continue
            results.append((final, x.detach().clone(), y.detach().clone(), history))
            if final < self.restart_above:
                break
        if not results:
            raise AttackDivergedError(
                f"attack 'dlg' diverged: the loss or image gradient went NaN/inf in all "
                f"{retried} starts; refusing to return an unoptimized candidate."
            )
        losses = [r[0] for r in results]
        best = min(range(len(results)), key=lambda i: losses[i])
        _, bx, by, hist = results[best]
        hist_values = torch.stack(hist).tolist() if hist else []
        labels = by[0].argmax(-1) if joint else by[0]
        return Reconstruction(
            images=bx[0].clamp(0, 1),
            labels=labels,
            attack=self.name,
            threat_level=inputs.threat.level,
            loss_history=hist_values,
            restart_losses=losses,
            restart_images=torch.cat([r[1] for r in results]).clamp(0, 1),
            best_restart=best,
            iterations=done,
            seconds=time.perf_counter() - start,
            label_method="joint" if joint else inputs.label_method,
            extras={"retried": retried},
        )
