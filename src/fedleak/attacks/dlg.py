"""DLG (Zhu et al. 2019), made robust: labels first, L-BFGS with a line search, restarts.

Plain DLG optimizes dummy images and soft labels jointly with L-BFGS on the L2 gradient
distance and often stalls or diverges. Here labels are recovered first (iDLG for one image, the
bias-corrected count for a batch) unless the threat model grants them or ``joint_labels=True``;
L-BFGS uses a strong-Wolfe line search; a restart that diverges, stalls or ends above
``restart_above`` is
followed by a fresh one (up to ``restarts``), and the restart with the lowest gradient
distance wins. ``iterations`` counts L-BFGS iterations; the loss history has one value per
20-iteration L-BFGS call.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from fedleak.attacks.base import Attack, AttackInputs, Checkpoint, Reconstruction, register_attack
from fedleak.attacks.simulate import UpdateSimulator, gradient_distance, pseudo_gradient
from fedleak.errors import ConfigError


@register_attack("dlg")
@dataclass(frozen=True)
class DLG(Attack):
    """Deep Leakage from Gradients: L2 gradient matching with L-BFGS.

    Knowledge: architecture and the number of images (level C: training details); labels are
    recovered from the update unless granted. FedAvg updates are matched via the pseudo-gradient
    unless ``replay=True``.
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

    def reconstruct(self, inputs: AttackInputs) -> Reconstruction:
        """Run L-BFGS restarts; ``iterations`` counts L-BFGS iterations per restart."""
        if self.iterations < 1 or self.restarts < 1:
            raise ConfigError(
                f"`iterations` and `restarts` of dlg must be >= 1; got {self.iterations}, "
                f"{self.restarts}."
            )
        update = inputs.update
        mode = "replay" if (self.replay and update.kind == "delta") else "gradient"
        training = update.training
        bn_mode = training.bn_mode if training else "eval"
        sim = UpdateSimulator(inputs.model, update, mode=mode, bn_mode=bn_mode)
        target = dict(update.tensors) if mode == "replay" else pseudo_gradient(update)
        gen = inputs.generator()
        n, shape, k = inputs.num_images, inputs.image_shape, inputs.num_classes
        joint = self.joint_labels or inputs.labels is None
        start = time.perf_counter()
        results = []
        done = 0
        for _ in range(self.restarts):
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

            def closure() -> torch.Tensor:
                opt.zero_grad(set_to_none=True)  # noqa: B023 (closure runs inside this loop)
                loss = gradient_distance(sim(x, y), target, metric=self.metric).sum()  # noqa: B023
                loss.backward()
                return loss

            history: list[torch.Tensor] = []
            n_iter, prev = 0, float("inf")
            while n_iter < self.iterations:
                loss = opt.step(closure).detach()
                history.append(loss)
                now = opt.state[x].get("n_iter", 0)
                lv = float(loss)
                # L-BFGS ends a call early on a flat stretch; give up only if a call brings
                # no progress at all (or diverges)
                stalled = now - n_iter < inner and not lv < prev * (1 - 1e-6)
                n_iter, prev = now, min(prev, lv)
                if inputs.progress is not None:
                    inputs.progress(done + n_iter, lv)
                if inputs.callback is not None and (
                    len(history) % max(1, inputs.checkpoint_every // inner) == 0
                ):
                    inputs.callback(Checkpoint(done + n_iter, lv, x.detach()[0].clamp(0, 1)))
                if not math.isfinite(lv) or lv < self.tolerance or stalled:
                    break
            done += n_iter
            # the line search leaves the final iterate unevaluated: score it once
            with torch.no_grad():
                final = float(gradient_distance(sim(x, y), target, metric=self.metric).sum())
            if not math.isfinite(final):
                final = float("inf")
            results.append((final, x.detach().clone(), y.detach().clone(), history))
            if final < self.restart_above:
                break
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
            best_restart=best,
            iterations=done,
            seconds=time.perf_counter() - start,
            label_method="joint" if joint else inputs.label_method,
        )
