"""BN-FedAvg (Hatamizadeh et al., "Do gradient inversion attacks make FL unsafe?", seed 000).

A FedAvg client that trains with BatchNorm in train mode sends, besides its weight change, the
running statistics after its K local steps. Their change from the global model reveals the
(weighted mean) batch mean and variance of the client's data at every BN layer
(:mod:`fedleak.attacks.bnstats`). The attack minimizes, over candidate images x (R restarts as
a leading vmapped dimension)::

    update_weight * D(replay(x), delta)              # the client's K local steps, replayed
  + bn_weight * sum_layers w_l (||mu(x) - mu*||_2 + ||var(x) - var*||_2)   # w_1 = bn_first
  + tv_weight * TV(x) + l2_weight * mean_i ||x_i - 0.5||_2
  + prior_weight * mean((x - prior)^2)               # only with a prior image (level D)

with Adam (lr 0.1, betas (0.9, 0.9)), linear warm-up then cosine decay, images clamped to
[0, 1], starting from the prior image (level D) or random noise.

Choices, and what differs from the public code:

* Update matching replays the K local steps differentiably from the *fixed* global
  parameters on every iteration (no detached state, no drift of the simulated model: the
  published code's update term carried no gradient and its simulated model changed across
  iterations). Distance ``metric``: ``"l2"`` is the squared error divided by the target's
  squared norm (scale-free, so one weight fits any lr, K and model); ``"cosine"`` is
  1 - cosine similarity. ``update_weight`` defaults to 1 on the relative scale (see the
  benchmark in ``benchmarks/bn_fedavg_quality.py``; the paper's 1e-3 was tuned for ResNet-18
  gradients of 224x224 X-rays and leaves the term negligible here).
* The candidate statistics are recorded *during the replay* at each local step k, with that
  step's parameters and batch, and combined with the same weights m (1 - m)^(K - k) as the
  running buffers, in PyTorch's unbiased variance scale: exact for any batch sizes, so the
  true images give zero BN loss when the replay reproduces the client's batch order.
* The first BN layer's term is weighted ``bn_first`` (10, DeepInversion's
  ``first_bn_multiplier``, on which the paper's code builds): its statistics are the ones
  closest to the pixels, but their norms are ~10x smaller than those of deeper layers.
* The client's batch order is unknown and the replay puts candidate i in slot i's batch, so
  restarts (a vmapped leading dimension) cycle through the distinct spreads of the labels over
  the local batches (:func:`fedleak.attacks.labels.label_arrangements`); the restart with the
  lowest attack loss wins.
* The prior term is ours (the paper only starts from the prior); set ``prior_weight=0`` to
  drop it. With a prior the start is prior + ``init_noise`` Gaussian noise so that images of
  the same batch and label can separate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import grad

from fedleak.attacks.base import Attack, AttackInputs, Reconstruction, register_attack
from fedleak.attacks.bnstats import (
    bn_layer_names,
    bn_spatial_sizes,
    infer_batch_stats,
    step_weights,
)
from fedleak.attacks.fit import FitTerms
from fedleak.attacks.labels import label_arrangements
from fedleak.attacks.optimize import fresh_images, init_images, optimize, total_variation
from fedleak.attacks.simulate import (
    Tensors,
    UpdateSimulator,
    _batch_bounds,
    _default_sizes,
    replay_masks,
    replay_steps,
    soft_cross_entropy,
)
from fedleak.errors import ConfigError, InsufficientKnowledgeError, UpdateError
from fedleak.fl.update import ClientUpdate, TrainingConfig
from fedleak.models.utils import bn_layers

StepStats = list[tuple[torch.Tensor, torch.Tensor]]  # per BN layer: (mean, biased var)
MAX_ARRANGEMENTS = 8  # restarts=None: at most this many label spreads, one restart each


class StatsReplay(UpdateSimulator):
    """The client's local training replayed on candidates, recording BN batch statistics.

    Calling it with images (R, N, C, H, W) and labels (R, N) returns ``(tensors, stats)``:
    the simulated update (keyed like ``update.tensors``, leading R) and, per local step, per
    BN layer, the input's (mean, biased variance) over that step's batch (each (R, channels)).
    A FedSGD update is one "step" whose tensors are the gradient.
    """

    def __init__(self, model: nn.Module, update: ClientUpdate) -> None:
        if update.training is None:
            raise InsufficientKnowledgeError(
                "bn-fedavg replays local training: it needs the training details (level C)."
            )
        self._records: dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]] = {}
        self._hooks_ready = False
        mode = "replay" if update.kind == "delta" else "gradient"
        super().__init__(model, update, mode=mode, bn_mode="train")
        self.layers = [name for name, _ in bn_layers(self.net)]
        for name, m in bn_layers(self.net):
            m.register_forward_hook(self._hook(name))

    def _hook(self, name: str) -> Callable[..., None]:
        def record(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            x = inp[0]
            dims = [0, *range(2, x.dim())]
            self._records[name] = (x.mean(dims), x.var(dims, unbiased=False))

        return record

    def _loss_with_stats(
        self, params: Tensors, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, StepStats]:
        self._records.clear()
        loss = soft_cross_entropy(self._forward(params, x), y)
        stats = [self._records[name] for name in self.layers]  # type: ignore[misc]
        self._records.clear()
        return loss, stats

    def _grad_fn(self) -> Callable[[torch.Tensor, torch.Tensor], tuple[Tensors, list[StepStats]]]:
        g = grad(self._loss_with_stats, has_aux=True)

        def one(x: torch.Tensor, y: torch.Tensor) -> tuple[Tensors, list[StepStats]]:
            gr, stats = g(self.params, x, y)
            return gr, [stats]

        return one

    def _replay_fn(
        self, cfg: TrainingConfig
    ) -> Callable[[torch.Tensor, torch.Tensor], tuple[Tensors, list[StepStats]]]:
        bounds = _batch_bounds(cfg.batch_sizes or _default_sizes(cfg))
        g = grad(self._loss_with_stats, has_aux=True)

        def replay(x: torch.Tensor, y: torch.Tensor) -> tuple[Tensors, list[StepStats]]:
            # always from the fixed global parameters: no drift
            return replay_steps(cfg, bounds, self.params, x, y, g)

        return replay


def _check_update(model: nn.Module, update: ClientUpdate) -> None:
    """Refuse updates whose BN buffers carry no information, with the reason."""
    if not bn_layers(model):
        raise UpdateError("bn-fedavg needs a model with BatchNorm layers; this one has none.")
    if not update.buffers or not bn_layer_names(update.buffers):
        raise UpdateError(
            "bn-fedavg needs the BatchNorm running statistics in the update, but "
            "update.buffers holds none (kept local, e.g. FedBN/ExcludeVars?). Use "
            "inverting-gradients instead."
        )
    cfg = update.training
    if cfg is not None and cfg.bn_mode == "eval":
        raise UpdateError(
            "the client trained with BatchNorm in eval mode: its running statistics did not "
            "change and say nothing about its data. Use inverting-gradients instead."
        )


@register_attack("bn-fedavg")
@dataclass(frozen=True)
class BNFedAvg(Attack):
    """Replay matching + BatchNorm-statistics matching + image priors (Hatamizadeh et al.).

    Knowledge: architecture, training details (level C; a prior image at level D is used for
    the start and the prior term) and the BN buffers in the update. Labels are recovered from
    the update unless granted. ``warmup`` defaults to 5% of ``iterations``. ``restarts=None``
    (default) runs one restart per distinct spread of the labels over the local batches (at
    most :data:`MAX_ARRANGEMENTS`): the client's batch order is unknown, and a replay with the
    wrong spread cannot fit (measured: 11.2 dB with the first spread only, 22.3 dB with all).

    Options:
        iterations, lr, betas: Adam (seed 000: lr 0.1, betas (0.9, 0.9)), warm-up + cosine.
        restarts: None = one per label spread over the local batches, or a number.
        warmup: warm-up iterations (default 5% of ``iterations``).
        metric: update distance, "l2" (relative squared) or "cosine".
        update_weight: weight of the update-matching term.
        bn_weight: weight of matching the BN statistics inferred from the buffers.
        bn_first: extra factor on the first BN layer (DeepInversion's first_bn_multiplier).
        tv_weight: total-variation weight. l2_weight: weight of ||x - 0.5||.
        prior_weight: weight of the distance to the prior image (level D).
        init: "auto" (the prior image when granted, else random), "random", "constant",
            "prior". init_noise: std of noise added to a prior/constant start.
    """

    iterations: int = 2000
    restarts: int | None = None
    lr: float = 0.1
    betas: tuple[float, float] = (0.9, 0.9)
    warmup: int | None = None
    metric: str = "l2"
    update_weight: float = 1.0
    bn_weight: float = 0.1
    bn_first: float = 10.0
    tv_weight: float = 1e-4
    l2_weight: float = 1e-5
    prior_weight: float = 1e-2
    init: str = "auto"
    init_noise: float = 0.05

    requires = frozenset({"architecture", "training_details"})

    def _validate(self) -> None:
        if self.iterations < 1 or (self.restarts is not None and self.restarts < 1):
            raise ConfigError(
                f"`iterations` and `restarts` of bn-fedavg must be >= 1; got {self.iterations}, "
                f"{self.restarts}."
            )
        if self.metric not in ("l2", "cosine"):
            raise ConfigError(
                f"`metric` of bn-fedavg must be 'l2' or 'cosine'; got {self.metric!r}."
            )
        if self.init not in ("auto", "prior", "random", "randn", "constant"):
            raise ConfigError(
                "`init` of bn-fedavg must be 'auto', 'prior', 'random', 'randn' or 'constant'; "
                f"got {self.init!r}."
            )
        weights = (self.update_weight, self.bn_weight, self.bn_first, self.tv_weight)
        weights += (self.l2_weight,)
        if min(weights + (self.prior_weight, self.init_noise)) < 0:
            raise ConfigError("the weights and `init_noise` of bn-fedavg must be >= 0.")

    def objective(self, inputs: AttackInputs) -> Callable[..., dict[str, torch.Tensor]]:
        """Per-term attack losses of candidates (R, N, C, H, W), each (R,) (for tests/inspection).

        The returned function takes the images and optionally per-restart labels (R, N)
        (default: ``inputs.labels`` in their order for every restart).

        Raises the knowledge/update errors of the attack before any optimization.
        """
        self._validate()
        update, model = inputs.update, inputs.model
        if update.training is None:
            raise InsufficientKnowledgeError(
                "bn-fedavg needs the training details (lr, steps, batch sizes): level C or higher."
            )
        _check_update(model, update)
        if inputs.labels is None:
            raise InsufficientKnowledgeError("bn-fedavg needs labels (granted or recovered).")
        cfg = update.training
        sim = StatsReplay(model, update)
        before = dict(model.named_buffers())
        momentum = cfg.bn_momentum
        if momentum is None:
            momentum = float(next(m.momentum for _, m in bn_layers(model)) or 0.1)
        sizes = list(cfg.batch_sizes or _default_sizes(cfg))
        steps = len(sizes)
        target_stats = infer_batch_stats(before, update.buffers, momentum, steps, unbiased=True)
        missing = [name for name in sim.layers if name not in target_stats]
        if missing:
            raise UpdateError(f"the update lacks the BatchNorm buffers of {missing[:3]}.")
        weights = step_weights(momentum, steps).float().to(inputs.device)
        hw = bn_spatial_sizes(model, inputs.image_shape)
        # unbiased factor n/(n-1) per step and layer, n = batch * H * W (PyTorch's running_var)
        corr = {
            name: torch.tensor([(b * hw[name]) / max(1, b * hw[name] - 1) for b in sizes],
                               device=inputs.device)
            for name in sim.layers
        }
        target = dict(update.tensors)
        t_norm2 = sum(float(t.pow(2).sum()) for t in target.values()) or 1.0
        labels = inputs.labels.reshape(1, -1)
        prior = inputs.threat.prior
        prior_img = None if prior is None else prior.reshape(1, 1, *inputs.image_shape)

        def terms(x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
            r = x.shape[0]
            tensors, per_step = sim(x, labels.expand(r, -1) if y is None else y)
            out: dict[str, torch.Tensor] = {}
            if self.metric == "l2":
                diff = sum((tensors[k] - target[k]).flatten(1).pow(2).sum(1) for k in target)
                out["update"] = diff / t_norm2  # type: ignore[operator]
            else:
                dot = sum((tensors[k] * target[k]).flatten(1).sum(1) for k in target)
                cn = sum(tensors[k].flatten(1).pow(2).sum(1) for k in target)
                out["update"] = 1 - dot / (cn.sqrt() * t_norm2**0.5 + 1e-12)  # type: ignore
            bn = torch.zeros(r, device=x.device)
            for li, name in enumerate(sim.layers):
                mu_t, var_t = target_stats[name]
                mu = sum(weights[k] * per_step[k][li][0] for k in range(steps))
                var = sum(weights[k] * corr[name][k] * per_step[k][li][1] for k in range(steps))
                layer = (mu - mu_t).norm(dim=-1) + (var - var_t).norm(dim=-1)  # type: ignore
                bn = bn + (self.bn_first if li == 0 else 1.0) * layer
            out["bn"] = bn
            out["tv"] = total_variation(x)
            out["l2"] = (x - 0.5).flatten(2).norm(dim=-1).mean(1)
            if prior_img is not None and self.prior_weight > 0:
                out["prior"] = (x - prior_img).pow(2).flatten(1).mean(1)
            return out

        return terms

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted attack loss (R,) from :meth:`objective`'s terms."""
        w = {
            "update": self.update_weight,
            "bn": self.bn_weight,
            "tv": self.tv_weight,
            "l2": self.l2_weight,
            "prior": self.prior_weight,
        }
        return sum(w[k] * v for k, v in terms.items())  # type: ignore[return-value]

    def objective_at(
        self, inputs: AttackInputs, images: torch.Tensor, labels: torch.Tensor | None
    ) -> FitTerms:
        """:meth:`total` of :meth:`objective`'s terms at ``images`` with ``labels`` in slot
        order (the reconstruction's are its chosen spread); residual: the update term."""
        terms = self.objective(inputs)
        given = labels if labels is not None else inputs.labels
        assert given is not None  # objective() checked inputs.labels
        y = given.reshape(1, -1).long()
        x = images.reshape(1, inputs.num_images, *inputs.image_shape).detach()
        with torch.no_grad():
            t = terms(x, y)
            return FitTerms(objective=float(self.total(t)[0]), residual=float(t["update"][0]))

    def reconstruct(self, inputs: AttackInputs) -> Reconstruction:
        """Optimize R restarts jointly; the restart with the lowest attack loss wins."""
        terms = self.objective(inputs)
        start = time.perf_counter()
        gen = inputs.generator()
        cfg = inputs.update.training
        sizes = (cfg.batch_sizes or (cfg.batch_size,) * cfg.local_steps) if cfg else ()
        assert inputs.labels is not None  # objective() checked it
        # restarts cycle through the distinct spreads of the labels over the local batches
        labels = inputs.labels.reshape(-1)
        options = label_arrangements(labels, sizes, self.restarts or MAX_ARRANGEMENTS, gen)
        restarts = self.restarts or options.shape[0]
        ys = options[torch.arange(restarts) % options.shape[0]]
        shape = (restarts, inputs.num_images, *inputs.image_shape)
        prior = inputs.threat.prior
        kind = self.init
        if kind == "auto":
            kind = "prior" if prior is not None else "random"
        x0 = init_images(kind, shape, gen, prior)
        if kind in ("prior", "constant") and self.init_noise > 0:
            noise = torch.randn(shape, generator=gen, device=gen.device)
            x0 = (x0 + self.init_noise * noise).clamp(0, 1)
        warmup = self.warmup if self.warmup is not None else max(1, self.iterations // 20)

        def objective(v: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.total(terms(v["images"], ys))

        def project(v: dict[str, torch.Tensor]) -> None:
            v["images"].clamp_(0, 1)

        res = optimize(
            {"images": x0},
            objective,
            inputs,
            iterations=self.iterations,
            lr=self.lr,
            betas=self.betas,
            schedule="cosine",
            warmup=min(warmup, self.iterations - 1),
            project=project,
            fresh=fresh_images(kind, shape, inputs.seed, prior, self.init_noise),
            who=f"attack {self.name!r}",
        )
        best = int(res.best_loss.argmin())
        with torch.no_grad():
            final = terms(res.best["images"][best : best + 1], ys[best : best + 1])
            final_terms = {k: float(v[0]) for k, v in final.items()}
        return Reconstruction(
            images=res.best["images"][best].clamp(0, 1),
            labels=ys[best],
            attack=self.name,
            threat_level=inputs.threat.level,
            loss_history=res.history[:, best].tolist(),
            restart_losses=res.best_loss.tolist(),
            restart_images=res.best["images"].clamp(0, 1).detach().clone(),
            best_restart=best,
            iterations=res.iterations,
            seconds=time.perf_counter() - start,
            label_method=inputs.label_method,
            extras={f"final_{k}": v for k, v in final_terms.items()}
            | {
                "init": kind,
                "stochastic_layers": replay_masks(inputs.model),
                "retried": res.retried,
            },
        )
