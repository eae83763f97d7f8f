"""GradInversion / "See through gradients" (Yin et al. 2021): L2 matching plus image priors.

Why the priors: L2 gradient matching alone is under-determined for batches; GradInversion adds
what the attacker knows about natural images and about the model. The loss per restart is

    grad_weight * ||g(x) - g*||^2  +  bn_weight * sum_l (||mu_l(x) - mu_l|| + ||var_l(x) - var_l||)
    + tv * TV(x) + l2 * ||x - 0.5||^2 + group_consistency * ||x - mean_restarts(x)||

``mu_l, var_l`` are the running statistics of BatchNorm layer l of the GLOBAL model the attacker
holds; ``mu_l(x), var_l(x)`` the batch statistics of the candidates' inputs to that layer.
When the client trained BN in train mode (the usual case), they are read by forward hooks off
the SAME train-mode forward that produces the matched gradient, as in Yin et al.: the features
the gradient came from, normalized by their own batch statistics (FedAvg replay: every local
step's batch, the distances averaged over the steps). A client with BN in eval mode normalized
with the running statistics; there one extra eval-mode forward of all R x N candidates gives
them (about half an iteration more than inverting-gradients). On an
untrained global model those statistics are the init values (0, 1), which describe no data: the
true image scores no better than noise, so the term must stay small next to the gradient term
(published weights 1e-4 : 0.1 inverted the ratio for our scale; see ``grad_weight``).

Group consistency (the paper's multi-seed fusion) pulls each restart toward the pixel-wise mean
of all restarts (detached: a moving consensus target) after ``group_start`` of the run. It adds
to the gradient but not to the loss value that picks the best iterate and restart (that value
would otherwise favour iterates from before the warm-up). No registration: the paper aligns the
restarts before averaging; we average pixels as they are (a simplification). Optional Langevin
noise (std ``langevin``, decayed with the lr schedule) is added after each step, before the
[0, 1] projection.

FedAvg: ``fedavg="replay"`` re-runs the local steps; the delta is divided by lr x steps on
both sides so ``grad_weight`` keeps the scale it has for gradients.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedleak.attacks.base import Attack, AttackInputs, Reconstruction, register_attack
from fedleak.attacks.bn_fedavg import StatsReplay, StepStats
from fedleak.attacks.fit import FitTerms
from fedleak.attacks.inverting import (
    LayerSpec,
    MatchingSetup,
    check_matching,
    clamp_images,
    finish,
    fit_terms,
    normalize_layers,
    restart_chunk,
    retry_images,
    start_matching,
)
from fedleak.attacks.optimize import lr_factor, optimize, total_variation
from fedleak.attacks.simulate import attack_model, gradient_distance
from fedleak.device import generator_for
from fedleak.errors import ConfigError
from fedleak.models.utils import bn_layers

_EPS = 1e-12  # keeps norms differentiable at 0 (e.g. identical restarts from a constant init)


def _norm(t: torch.Tensor) -> torch.Tensor:
    """Per-restart L2 norm of (R, ...) with a finite gradient at zero."""
    return (t.flatten(1).pow(2).sum(1) + _EPS).sqrt()


class BNStatistics:
    """BN-statistics prior: batch mean/var of the candidates at every BN layer vs. running stats.

    Built once per attack: a frozen eval-mode copy of the global model with a forward hook on
    each BatchNorm layer. One forward of all (R * N) candidates gives every restart's statistics;
    since eval-mode BN treats samples independently, folding R into the batch is exact.
    """

    def __init__(self, model: nn.Module) -> None:
        self.net = attack_model(model, "eval")
        self.layers = bn_layers(self.net)
        self.targets = [
            (m.running_mean.detach().clone(), m.running_var.detach().clone())
            for _, m in self.layers
            if m.running_mean is not None and m.running_var is not None
        ]
        self.names = [
            name
            for name, m in self.layers
            if m.running_mean is not None and m.running_var is not None
        ]
        self._seen: list[torch.Tensor] = []
        for _, m in self.layers:
            if m.running_mean is not None:
                m.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        self._seen.append(args[0])

    def __len__(self) -> int:
        return len(self.targets)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(R, N, C, H, W) -> (R,) summed L2 distance of means and variances over BN layers."""
        r, n = images.shape[:2]
        self._seen.clear()
        self.net(images.reshape(r * n, *images.shape[2:]))
        total = images.new_zeros(r)
        for feat, (rm, rv) in zip(self._seen, self.targets, strict=True):
            f = feat.reshape(r, n, feat.shape[1], -1).transpose(1, 2).flatten(2)  # (R, Ch, N*HW)
            mean = f.mean(2)
            var = f.var(2, unbiased=False)
            total = total + _norm(mean - rm) + _norm(var - rv)
        self._seen.clear()
        return total

    def of_steps(self, steps: list[StepStats], layers: list[str]) -> torch.Tensor:
        """(R,) the same distance from batch statistics measured in the client's own forwards.

        ``steps`` holds, per local step, each BN layer's (mean, biased var) of shape
        (R, channels), for the layers named ``layers`` (see :class:`StatsReplay`); the
        distances are averaged over the steps (one step for FedSGD: Yin et al.'s term).
        """
        targets = dict(zip(self.names, self.targets, strict=True))
        total = 0.0
        for stats in steps:
            for name, (mean, var) in zip(layers, stats, strict=True):
                if name in targets:
                    rm, rv = targets[name]
                    total = total + _norm(mean - rm) + _norm(var - rv)
        return total / len(steps)  # type: ignore[return-value]


def train_mode_stats(inputs: AttackInputs, setup: MatchingSetup) -> StatsReplay:
    """The setup's simulator, recording BN batch statistics of the forwards it differentiates.

    Matches what ``setup.simulator`` computes: the client's replay for ``"replay"``, one
    gradient over the selected tensors for FedSGD and the pseudo-gradient.
    """
    update = inputs.update
    if setup.fedavg_mode != "replay":  # one gradient on all candidates
        sub = {k: update.tensors[k] for k in setup.target}
        update = update.replace(kind="gradient", tensors=sub)
    return StatsReplay(inputs.model, update)


@register_attack("gradinversion")
@dataclass(frozen=True)
class GradInversion(Attack):
    """GradInversion: L2 gradient matching + BN statistics + TV + L2 + group consistency.

    Knowledge: architecture and training details (level C); the BN running statistics come from
    the global model the attacker already holds. ``init="prior"`` also needs level D.

    Options (defaults measured on lfw-faces 32x32, see the module docstring):
        iterations, restarts, lr, schedule ("step", "cosine"), signed: the Adam loop; signed
            (Geiping's trick) by default: plain Adam stalled at batch 4 (15.8 vs 27.2 dB).
        grad_weight: weight of the L2 gradient distance (published 1e-4 for ResNet-50 on
            ImageNet; 100 here, where the distance starts at ~1-3 and the BN term at ~37).
        bn_weight: weight of BN-statistics matching (published 0.1; 0 disables it).
        tv: total variation weight; 1.0 = 1e-2 of grad_weight, as for inverting-gradients
            (published 1e-4, which at grad_weight 100 is no prior at all: 18.0 vs 27.2 dB).
        l2: image L2 weight on ||x - 0.5||^2 (published 1e-6).
        langevin: std of the Gaussian noise added after each step, decayed with the schedule.
        group_consistency: weight of ||x_r - mean over restarts|| (needs restarts > 1).
        group_start: fraction of the run before group consistency switches on (warm-up).
        init, layers, layer_weights, fedavg: as for ``inverting-gradients``.
    """

    iterations: int = 1000
    restarts: int = 1
    lr: float = 0.1
    schedule: str = "step"
    signed: bool = True
    grad_weight: float = 100.0
    bn_weight: float = 0.1
    tv: float = 1.0
    l2: float = 1e-6
    langevin: float = 0.0
    group_consistency: float = 0.0
    group_start: float = 0.5
    init: str = "random"
    layers: LayerSpec = None
    layer_weights: str = "equal"
    fedavg: str = "replay"

    requires = frozenset({"architecture", "training_details"})

    def __post_init__(self) -> None:
        weights = ("grad_weight", "bn_weight", "tv", "l2", "langevin", "group_consistency")
        check_matching(self, **{k: getattr(self, k) for k in weights})
        if not (isinstance(self.group_start, int | float) and 0 <= self.group_start <= 1):
            raise ConfigError(
                f"`group_start` of attack {self.name!r} must be in [0, 1]; "
                f"got {self.group_start!r}."
            )
        object.__setattr__(self, "layers", normalize_layers(self.layers, f"attack {self.name!r}"))

    def _objective(
        self,
        inputs: AttackInputs,
        setup: MatchingSetup,
        y: torch.Tensor,
        state: dict[str, Any] | None = None,
        first: dict[str, Any] | None = None,
        last: dict[str, Any] | None = None,
    ):  # noqa: ANN202
        """The attack loss ``x -> (objective, residual)``, (R,) each: the one function that
        :meth:`reconstruct` minimizes and :meth:`objective_at` evaluates. ``residual`` is the
        gradient distance relative to the target's (weighted) squared norm. ``state["it"]``
        switches group consistency on, ``state["center"]`` (if set) is the detached mean image
        of all restarts (chunks see only their own); ``first``/``last`` collect the BN term
        (diagnostics: each call appends to ``last["bn_parts"]``, see :meth:`reconstruct`).
        ``labels`` (R, N) default ``y``: a chunk passes its restarts' labels."""
        sim, weights = setup.simulator, setup.weights
        state = {"it": 0} if state is None else state
        first = {} if first is None else first
        last = {} if last is None else last
        scale = 1.0
        training = inputs.update.training
        if setup.fedavg_mode == "replay" and training is not None:
            scale = 1.0 / (training.lr * training.local_steps)  # delta -> gradient scale
        target = {k: v * scale for k, v in setup.target.items()}
        norm2 = sum(weights[k] * float(t.pow(2).sum()) for k, t in target.items()) or 1.0
        bn = BNStatistics(inputs.model) if self.bn_weight > 0 else None
        if bn is not None and len(bn) == 0:
            bn = None  # no BatchNorm layer: nothing to match
        # train-mode BN: statistics from the forward that makes the matched gradient (Yin et al.)
        stats_sim = train_mode_stats(inputs, setup) if bn and setup.bn_mode == "train" else None
        gw, bw, tv, l2 = self.grad_weight, self.bn_weight, self.tv, self.l2
        gc = self.group_consistency if self.restarts > 1 else 0.0
        warm = int(self.group_start * self.iterations)
        last["bn_layers"] = torch.tensor(0 if bn is None else len(bn))
        last["bn_train_forward"] = torch.tensor(stats_sim is not None)

        def objective(
            x: torch.Tensor, labels: torch.Tensor | None = None
        ) -> tuple[torch.Tensor, torch.Tensor]:
            yy = y if labels is None else labels
            steps: list[StepStats] = []
            if stats_sim is not None:
                sim_out, steps = stats_sim(x, yy)
            else:
                sim_out = sim(x, yy)
            if scale != 1.0:
                sim_out = {k: t * scale for k, t in sim_out.items()}
            match = gradient_distance(sim_out, target, metric="l2", weights=weights)
            loss = gw * match
            if bn is not None:
                bn_loss = bn.of_steps(steps, stats_sim.layers) if stats_sim else bn(x)
                loss = loss + bw * bn_loss
                last.setdefault("bn_parts", []).append(bn_loss.detach())
            if tv:
                loss = loss + tv * total_variation(x)
            if l2:
                loss = loss + l2 * (x - 0.5).flatten(1).pow(2).sum(1)
            if gc and state["it"] >= warm:
                # steers the images but stays out of the loss value: otherwise the best-iterate
                # tracking would prefer iterates from before the warm-up, when the term was 0
                center = state.get("center")
                if center is None:
                    center = x.detach().mean(0, keepdim=True)
                group = gc * _norm(x - center)
                loss = loss + (group - group.detach())
            return loss, match / norm2

        return objective

    def objective_at(
        self, inputs: AttackInputs, images: torch.Tensor, labels: torch.Tensor | None
    ) -> FitTerms:
        """The full GradInversion loss at ``images`` (group consistency adds no value at R=1);
        residual: the L2 gradient distance relative to the target's squared norm."""
        return fit_terms(
            self, inputs, images, labels, lambda setup, y: self._objective(inputs, setup, y)
        )

    def reconstruct(self, inputs: AttackInputs) -> Reconstruction:
        """Optimize R restarts at once; the lowest final attack loss wins."""
        start = time.perf_counter()
        x0, y, setup = start_matching(self, inputs)
        gc = self.group_consistency if self.restarts > 1 else 0.0
        state: dict[str, Any] = {"it": 0}
        # per-iteration terms of the current batch, for the BN-decrease diagnostics in extras
        first: dict[str, Any] = {}
        last: dict[str, Any] = {}
        f = self._objective(inputs, setup, y, state, first, last)
        bn_count = int(last.pop("bn_layers"))
        train_forward = bool(last.pop("bn_train_forward"))

        def objective(v: dict[str, torch.Tensor]) -> torch.Tensor:
            return f(v["images"], v["labels"])[0]  # labels: this chunk's restarts'

        warm = int(self.group_start * self.iterations)

        def before_step(v: dict[str, torch.Tensor], it: int) -> None:
            # group consistency's target over ALL restarts, so chunks pull toward the same one
            state["center"] = v["images"].mean(0, keepdim=True) if gc and it >= warm else None

        noise_gen = generator_for(inputs.device, inputs.seed + 1)
        chunk = restart_chunk(inputs, self.restarts)

        def after_step(v: dict[str, torch.Tensor], it: int) -> None:
            state["it"] = it + 1
            parts = last.pop("bn_parts", None)  # this iteration's BN term, chunk by chunk
            if parts:
                last["bn"] = torch.cat(parts)
                first.setdefault("bn", last["bn"])
            if self.langevin:
                std = self.langevin * lr_factor(self.schedule, it, self.iterations)
                x = v["images"]
                x.add_(torch.randn(x.shape, generator=noise_gen, device=x.device) * std)

        res = optimize(
            {"images": x0}, objective, inputs, iterations=self.iterations, lr=self.lr,
            signed=self.signed, schedule=self.schedule, project=clamp_images(),
            after_step=after_step, fresh=retry_images(inputs, self.init, self.restarts),
            who=f"attack {self.name!r}", chunk=chunk, constants={"labels": y},
            before_step=before_step,
        )
        bn_source = "none" if not bn_count else ("train-forward" if train_forward else "eval")
        extras = {
            **setup.extras,
            "restarts": self.restarts,
            "init": self.init,
            "bn_layers_matched": bn_count,
            "bn_statistics": bn_source,
            "group_consistency": gc,
            "retried": res.retried,
        }
        if res.chunk:  # restarts per forward, when the memory budget split them
            extras["restart_chunk"] = res.chunk
        if bn_count and first:
            extras["bn_loss_first"] = first["bn"].tolist()
            extras["bn_loss_last"] = last["bn"].tolist()
        return finish(self, inputs, res, y, start, extras)
