"""The FedLeak attack (Fan et al., USENIX Security 2025): partial matching, gradient regularization.

Fan, Wang, Chen and Zhou ("Boosting Gradient Leakage Attacks: Data Reconstruction in Realistic
FL Settings", arXiv 2506.08435) argue that gradient inversion fails on realistic batches because
the optimizer cannot solve the matching problem, not because the solution is ambiguous. Two
changes make the problem easier to optimize:

* **Partial gradient matching.** Each update tensor is matched only on a subset of its entries:
  the ``keep`` share with the largest magnitude. The authors' released code ranks the
  candidate's simulated gradient (``mask_from="candidate"``) and sums 1 - cosine plus the mean
  absolute difference per tensor (``reduce="tensor"``, averaged here so that ``tv`` keeps the
  scale of :class:`~fedleak.attacks.inverting.InvertingGradients`). The defaults rank the
  observed update (one fixed mask) and take one cosine over all kept entries
  (``reduce="global"``): on 16x16 faces (narrow ConvNet, 200 iterations) the authors' form
  scored 14.7 dB (flatten head, batch 4) and 12.6 dB (GAP head, batch 1), the defaults 16.5
  and 16.6, inverting-gradients 13.2 and 16.2.
* **Gradient regularization**, approximated by a look-ahead: the step direction is
  ``(1 - lookahead) * sign(g(x)) + lookahead * sign(g(x'))``, where ``x'`` is ``x`` moved by
  one signed step (``lookahead_step`` x the scheduled lr factor) and ``g`` the gradient of the
  attack loss. Steps that only help where the loss is sharp are damped; this is the authors'
  finite-difference form of a gradient-norm penalty (0.7 / 0.3 in their code). It costs a
  second gradient evaluation per iteration (about 2x an Inverting Gradients iteration).

Not reproduced: the authors optimize the weights of an untrained image generator (a
deep-image-prior parametrization) with AdamW and cosine annealing, and median-filter the
result; here the pixels are optimized directly, with Inverting Gradients' signed Adam, box and
schedule, and the median filter is an option (``median``). Labels come from the front door
(granted, or iDLG/count), as for every fedleak attack. FedSGD gradients and FedAvg deltas
(replay or pseudo-gradient) are handled as in Inverting Gradients.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from fedleak.attacks.base import Attack, AttackInputs, Reconstruction, register_attack
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
from fedleak.errors import ConfigError

MASK_SOURCES = ("candidate", "observed")


class PartialMatch:
    """Per-tensor masked 1 - cosine + l1 x mean |difference|, averaged over tensors: (R,).

    The mask keeps, per restart and tensor, the ``keep`` share of entries with the largest
    magnitude of the candidate's gradient (``source="candidate"``, recomputed every call,
    detached) or of the observed update (``"observed"``, fixed).
    """

    def __init__(self, target: dict[str, torch.Tensor], weights: dict[str, float], *,
                 keep: float, source: str, l1: float, reduce: str = "tensor") -> None:
        self.keys = list(target)
        self.target = {k: target[k].detach().flatten() for k in self.keys}
        self.weights = {k: float(weights[k]) for k in self.keys}
        self.total_weight = sum(self.weights.values()) or 1.0
        self.keep, self.source, self.l1, self.reduce = keep, source, l1, reduce
        # the observed mask and the masked (weighted) target never change: built once here,
        # not in every attack iteration
        self.fixed = {k: self._mask(t.abs().unsqueeze(0)).to(t.dtype)
                      for k, t in self.target.items()}  # (1, P) each
        self.scale = {k: (self.weights[k] ** 0.5 if reduce == "global" else 1.0)
                      for k in self.keys}
        self.fixed_target = {k: self.target[k] * self.fixed[k] * self.scale[k]
                             for k in self.keys}
        self.fixed_global = (torch.cat([self.fixed_target[k] for k in self.keys], 1)
                             if self.keys else None)

    def _mask(self, ref: torch.Tensor) -> torch.Tensor:
        """(R, P) boolean: the ``keep`` share of entries of largest ``ref`` in each row."""
        p = ref.shape[1]
        drop = int(round((1.0 - self.keep) * p))
        if drop <= 0 or p < 2:
            return torch.ones_like(ref, dtype=torch.bool)
        threshold = ref.kthvalue(min(drop, p), dim=1, keepdim=True).values
        return ref > threshold

    def _masked(self, k: str, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(candidate, target) of tensor ``k`` on the kept entries, scaled: (R, P), (R|1, P)."""
        if self.source == "observed":
            return c * self.fixed[k] * self.scale[k], self.fixed_target[k]
        m = self._mask(c.detach().abs()).to(c.dtype) * self.scale[k]
        return c * m, self.target[k] * m

    @staticmethod
    def _distance(c: torch.Tensor, t: torch.Tensor, l1: float) -> torch.Tensor:
        cos = 1 - (c * t).sum(1) / (c.norm(dim=1) * t.norm(dim=1) + 1e-12)
        return cos + l1 * (c - t).abs().mean(1) if l1 else cos

    def __call__(self, candidate: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.reduce == "global":
            return self._global(candidate)
        total = 0.0
        for k in self.keys:
            cm, tm = self._masked(k, candidate[k].flatten(1))
            total = total + self.weights[k] * self._distance(cm, tm, self.l1)
        return total / self.total_weight  # type: ignore[return-value]

    def _global(self, candidate: dict[str, torch.Tensor]) -> torch.Tensor:
        """One cosine over the kept entries of all tensors (weighted), plus l1 x mean |diff|."""
        pairs = [self._masked(k, candidate[k].flatten(1)) for k in self.keys]
        c = torch.cat([cm for cm, _ in pairs], 1)
        t = (self.fixed_global if self.source == "observed"
             else torch.cat([tm for _, tm in pairs], 1))
        return self._distance(c, t, self.l1)


def median_filter(images: torch.Tensor, size: int) -> torch.Tensor:
    """Median over ``size`` x ``size`` neighbourhoods (reflect padding), images (..., C, H, W)."""
    if size <= 1:
        return images
    shape = images.shape
    x = images.reshape(-1, 1, *shape[-2:])
    pad = size // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    patches = F.unfold(x, size)  # (B, size*size, H*W)
    return patches.median(dim=1).values.reshape(shape)


@register_attack("fedleak-fan")
@dataclass(frozen=True)
class FanFedLeak(Attack):
    """The FedLeak attack (Fan et al. 2025): partial gradient matching + gradient regularization.

    Knowledge: as Inverting Gradients (architecture, training details; labels from the front
    door). See :mod:`fedleak.attacks.fan_fedleak` for what is and is not the authors' method.

    Options:
        iterations: optimizer steps (the authors run 10,000 on a GPU).
        restarts: R trials run batched; the lowest final attack loss wins.
        lr, schedule: Adam step size and schedule ("step": x0.1 at 3/8, 5/8, 7/8; "cosine";
            "constant"), on the pixels.
        signed: Adam on the sign of the gradient (the authors' choice). With ``lookahead`` > 0
            the two signed directions are mixed before Adam whatever this says.
        tv: total-variation weight, on the scale of inverting-gradients' (both matching forms
            lie in [0, 2] plus the l1 term).
        keep: share of each tensor's entries that is matched (the authors: 0.5); 1 matches all.
        mask_from: "observed" (rank the observed update: one fixed mask) or "candidate" (rank
            the candidate's simulated gradient every step, as the authors' code does).
        l1: weight of the mean absolute difference on the kept entries (the authors: 1).
        reduce: "global" (one cosine over the kept entries of all tensors, as
            inverting-gradients) or "tensor" (1 - cosine per tensor, averaged: the authors'
            per-layer sum).
        lookahead: weight of the look-ahead direction (gradient regularization; the authors:
            0.3); 0 turns it off (half the cost per iteration).
        lookahead_step: size of the signed look-ahead step in [0, 1] pixel units, scaled by
            the schedule's lr factor (default None: ``lr``, one optimizer step as the authors).
        median: odd size of a median filter applied to the result (the authors: 5 at 128x128);
            0 or 1: none.
        init: "random" (uniform), "randn", "constant" (0.5) or "prior" (level D).
        layers: None (all tensors) or parameter-name prefixes / tensor indices to match.
        layer_weights: "equal" or "linear" (first layer 1, decaying).
        fedavg: "replay" (re-run the client's local steps) or "pseudo-gradient".
    """

    iterations: int = 1000
    restarts: int = 1
    lr: float = 0.1
    schedule: str = "step"
    signed: bool = True
    tv: float = 1e-2
    keep: float = 0.5
    mask_from: str = "observed"
    l1: float = 1.0
    reduce: str = "global"
    lookahead: float = 0.3
    lookahead_step: float | None = None
    median: int = 0
    init: str = "random"
    layers: LayerSpec = None
    layer_weights: str = "equal"
    fedavg: str = "replay"

    requires = frozenset({"architecture", "training_details"})

    def __post_init__(self) -> None:
        check_matching(self, tv=self.tv, l1=self.l1)
        who = f"attack {self.name!r}"
        if not isinstance(self.keep, int | float) or isinstance(self.keep, bool) or not (
            0 < self.keep <= 1
        ):
            raise ConfigError(f"`keep` of {who} must be a fraction in (0, 1]; got {self.keep!r}.")
        if self.mask_from not in MASK_SOURCES:
            raise ConfigError(
                f"`mask_from` of {who} must be 'candidate' or 'observed'; got {self.mask_from!r}."
            )
        if self.reduce not in ("tensor", "global"):
            raise ConfigError(
                f"`reduce` of {who} must be 'tensor' or 'global'; got {self.reduce!r}."
            )
        la = self.lookahead
        if isinstance(la, bool) or not isinstance(la, int | float) or not 0 <= la < 1:
            raise ConfigError(f"`lookahead` of {who} must be a number in [0, 1); got {la!r}.")
        step = self.lookahead_step
        if step is not None and (
            isinstance(step, bool) or not isinstance(step, int | float) or step <= 0
        ):
            raise ConfigError(
                f"`lookahead_step` of {who} must be None or a number > 0; got {step!r}."
            )
        med = self.median
        bad = isinstance(med, bool) or not isinstance(med, int) or med < 0
        if bad or (med > 1 and med % 2 == 0):
            raise ConfigError(f"`median` of {who} must be 0, 1 or an odd int >= 3; got {med!r}.")
        object.__setattr__(self, "layers", normalize_layers(self.layers, who))

    def _objective(self, setup: MatchingSetup, y: torch.Tensor):  # noqa: ANN202
        """``(x, labels) -> (objective, residual)``, (R,) each: partial matching + tv * TV."""
        sim = setup.simulator
        match_fn = PartialMatch(setup.target, setup.weights, keep=self.keep,
                                source=self.mask_from, l1=self.l1, reduce=self.reduce)

        def objective(
            x: torch.Tensor, labels: torch.Tensor | None = None
        ) -> tuple[torch.Tensor, torch.Tensor]:
            match = match_fn(sim(x, y if labels is None else labels))
            loss = match + self.tv * total_variation(x) if self.tv else match
            return loss, match

        return objective

    def reconstruct(self, inputs: AttackInputs) -> Reconstruction:
        """Partial matching from R seeded starts, with the look-ahead mix of directions."""
        start = time.perf_counter()
        x0, y, setup = start_matching(self, inputs)
        f = self._objective(setup, y)
        state = {"it": 0}
        step = self.lr if self.lookahead_step is None else self.lookahead_step
        a = float(self.lookahead)

        def objective(v: dict[str, Any]) -> torch.Tensor:
            x, labels = v["images"], v["labels"]
            loss = f(x, labels)[0]
            if not a:
                return loss
            (g1,) = torch.autograd.grad(loss.sum(), x)
            h = step * lr_factor(self.schedule, state["it"], self.iterations)
            ahead = (x.detach() - h * g1.sign()).requires_grad_(True)
            (g2,) = torch.autograd.grad(f(ahead, labels)[0].sum(), ahead)
            direction = ((1 - a) * g1.sign() + a * g2.sign()).detach()
            # gradient: the mixed direction; value: the loss at x (picks the best iterate)
            surrogate = (x * direction).flatten(1).sum(1)
            return surrogate - surrogate.detach() + loss.detach()

        def count(_v: dict[str, torch.Tensor], it: int) -> None:
            state["it"] = it + 1

        res = optimize(
            {"images": x0}, objective, inputs, iterations=self.iterations, lr=self.lr,
            signed=self.signed and not a, schedule=self.schedule, project=clamp_images(),
            after_step=count, fresh=retry_images(inputs, self.init, self.restarts),
            who=f"attack {self.name!r}", chunk=restart_chunk(inputs, self.restarts),
            constants={"labels": y},
        )
        if self.median > 1:
            res.best["images"] = median_filter(res.best["images"], self.median)
        extras = {**setup.extras, "restarts": self.restarts, "init": self.init, "tv": self.tv,
                  "keep": self.keep, "mask_from": self.mask_from, "lookahead": a,
                  "reduce": self.reduce,
                  "median": self.median, "retried": res.retried}
        return finish(self, inputs, res, y, start, extras)

    def objective_at(
        self, inputs: AttackInputs, images: torch.Tensor, labels: torch.Tensor | None
    ) -> FitTerms:
        """Partial matching + tv * TV at ``images``; residual: the partial matching term."""
        return fit_terms(self, inputs, images, labels, self._objective)
