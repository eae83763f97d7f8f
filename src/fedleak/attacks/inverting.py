"""Inverting Gradients (Geiping et al. 2020): cosine gradient matching with a TV prior.

Why cosine: it ignores the update's scale (lr, batch size, gradient magnitude) and matches its
direction, which is what carries the image. The images live in the [0, 1] box (projection after
every step), Adam runs on the sign of the gradient with the step schedule (x0.1 at 3/8, 5/8,
7/8 of the run), and R restarts run as one vmapped computation; the restart with the lowest
attack loss wins, or with ``select="mean"`` their consensus (never the ground truth).

FedAvg deltas are matched either by replaying the client's K local steps on the candidates
(``fedavg="replay"``, default: the attack loss then back-propagates through local training) or
by treating ``delta / (-lr K)`` as one gradient (``fedavg="pseudo-gradient"``, cheaper, exact
only for K = 1).

Defaults were tuned on lfw-faces 32x32 grey with the untrained ConvNet (see
``benchmarks/attack_quality.py``); the paper runs 4,800-24,000 iterations, we default to 1,000.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fedleak.attacks import autotune
from fedleak.attacks.arrangements import restart_labels
from fedleak.attacks.base import Attack, AttackInputs, Reconstruction, register_attack
from fedleak.attacks.features import FeatureDistance, final_linear
from fedleak.attacks.fit import FitTerms
from fedleak.attacks.optimize import (
    OptimizationResult,
    fresh_images,
    init_images,
    optimize,
    total_variation,
)
from fedleak.attacks.selection import check_select, consensus, pick_restart
from fedleak.attacks.simulate import (
    CosineDistance,
    Tensors,
    UpdateSimulator,
    layer_weights,
    pseudo_gradient,
)
from fedleak.device import chunk_size, memory_budget, restart_bytes
from fedleak.errors import ConfigError

INITS = ("random", "randn", "constant", "prior")
FEDAVG_MODES = ("replay", "pseudo-gradient")
SCHEDULES = ("step", "cosine", "constant")
#: "norm": every matched tensor scaled to unit norm on the update's side (:func:`norm_weights`)
LAYER_SCHEMES = ("equal", "linear", "norm")

LayerSpec = Sequence[str | int] | None


# ---------------------------------------------------------------------------- shared helpers
# (also used by the GradInversion attack)


def check_common(name: str, **values: Any) -> None:
    """Validate the hyperparameters the matching attacks share, as ConfigErrors."""
    caller = f"attack {name!r}"
    for key in ("iterations", "restarts"):
        v = values.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"`{key}` of {caller} must be an int >= 1; got {v!r}.")
    for key in ("lr",):
        v = values.get(key)
        if v is not None and not (isinstance(v, int | float) and v > 0):
            raise ConfigError(f"`{key}` of {caller} must be a number > 0; got {v!r}.")
    for key, v in values.items():
        if key.startswith("w:") and not (isinstance(v, int | float) and v >= 0):
            raise ConfigError(f"`{key[2:]}` of {caller} must be a number >= 0; got {v!r}.")
    choices = {"init": INITS, "fedavg": FEDAVG_MODES, "schedule": SCHEDULES}
    for key, allowed in choices.items():
        if key in values and values[key] not in allowed:
            raise ConfigError(
                f"`{key}` of {caller} must be one of {', '.join(map(repr, allowed))}; "
                f"got {values[key]!r}."
            )
    if values.get("layer_weights") not in (None, *LAYER_SCHEMES):
        raise ConfigError(
            f"`layer_weights` of {caller} must be one of {', '.join(map(repr, LAYER_SCHEMES))}; "
            f"got {values['layer_weights']!r}."
        )


def check_matching(attack: Any, **weights: Any) -> None:
    """:func:`check_common` on a matching attack's shared options and its loss ``weights``.

    The shared options are those of :class:`InvertingGradients` (iterations, restarts, lr,
    init, fedavg, schedule, layer_weights); every weight must be a number >= 0.
    """
    check_common(
        attack.name, iterations=attack.iterations, restarts=attack.restarts, lr=attack.lr,
        init=attack.init, fedavg=attack.fedavg, schedule=attack.schedule,
        layer_weights=attack.layer_weights, **{f"w:{k}": v for k, v in weights.items()},
    )


def normalize_layers(layers: Any, caller: str) -> tuple[str | int, ...] | None:
    """``layers`` as a tuple of prefixes/indices (so the frozen attack stays hashable)."""
    if layers is None:
        return None
    items = (layers,) if isinstance(layers, str | int) else tuple(layers)
    if not items or not all(
        isinstance(i, str | int) and not isinstance(i, bool) for i in items
    ):
        raise ConfigError(
            f"`layers` of {caller} must be None or a non-empty list of parameter-name prefixes "
            f"or indices; got {layers!r}."
        )
    return items


def select_tensors(names: list[str], layers: tuple[str | int, ...] | None) -> list[str]:
    """Names of the update tensors to match, in update order.

    Ints index the update's tensors (negative from the end); strings are parameter-name prefixes
    ("features.1" selects "features.1.weight" and "features.1.bias", "9.weight" one tensor).
    """
    if layers is None:
        return list(names)
    chosen: set[str] = set()
    for item in layers:
        if isinstance(item, int):
            if not -len(names) <= item < len(names):
                raise ConfigError(
                    f"`layers` index {item} is out of range: the update has {len(names)} tensors."
                )
            chosen.add(names[item])
        else:
            hits = [n for n in names if n == item or n.startswith(item.rstrip(".") + ".")]
            if not hits:
                raise ConfigError(
                    f"`layers` entry {item!r} matches no tensor of the update; tensors: "
                    f"{', '.join(names[:8])}{' ...' if len(names) > 8 else ''}."
                )
            chosen.update(hits)
    return [n for n in names if n in chosen]


@dataclass
class MatchingSetup:
    """What a gradient-matching attack compares: the simulator, target and matched tensors."""

    simulator: UpdateSimulator
    target: Tensors
    weights: dict[str, float]
    fedavg_mode: str  # "fedsgd", "replay" or "pseudo-gradient"
    bn_mode: str
    extras: dict[str, Any] = field(default_factory=dict)


def matching_setup(
    inputs: AttackInputs,
    *,
    fedavg: str,
    layers: tuple[str | int, ...] | None,
    scheme: str | None,
) -> MatchingSetup:
    """Build the simulator and target once per attack (never inside the loop).

    In gradient mode only the selected tensors are differentiated (cheaper); replay needs every
    parameter the client trained, since unmatched layers still change the later local steps.
    """
    update = inputs.update
    training = update.training
    bn_mode = training.bn_mode if training is not None else "eval"
    names = select_tensors(list(update.tensors), layers)
    if update.kind == "delta" and fedavg == "replay":
        sim = UpdateSimulator(inputs.model, update, mode="replay", bn_mode=bn_mode)
        full: Tensors = dict(update.tensors)
        mode = "replay"
    else:
        full = pseudo_gradient(update)  # the gradient itself for FedSGD
        sub = update.replace(tensors={k: update.tensors[k] for k in names})
        sim = UpdateSimulator(inputs.model, sub, mode="gradient", bn_mode=bn_mode)
        mode = "fedsgd" if update.kind == "gradient" else "pseudo-gradient"
    target = {k: full[k].detach() for k in names}
    return MatchingSetup(
        simulator=sim,
        target=target,
        weights=norm_weights(target) if scheme == "norm" else layer_weights(names, scheme),
        fedavg_mode=mode,
        bn_mode=bn_mode,
        extras={
            "fedavg_mode": mode, "bn_mode": bn_mode, "matched_tensors": len(names),
            "stochastic_layers": sim.stochastic,
        },
    )


def norm_weights(target: Tensors) -> dict[str, float]:
    """Weights 1 / ||target_k||^2: every tensor counts alike in the cosine (``"norm"``).

    Why: in the plain concatenation the largest tensors dominate (on a global-average-pool
    head the last bias alone is ~70 % of the update's squared norm, the first convolution
    ~0.01 %), and the first layers carry the spatial detail. A zero tensor keeps weight 1.
    """
    out = {}
    for k, t in target.items():
        sq = float(t.detach().double().pow(2).sum())
        out[k] = 1.0 / sq if sq > 0 else 1.0
    return out


def initial_images(inputs: AttackInputs, init: str, restarts: int, who: str) -> torch.Tensor:
    """Seeded initial candidates (R, N, C, H, W); a prior image needs level D (checked here).

    Deterministic inits ("constant", "prior") would start every restart at the same point and
    make restarts (and their consensus) a waste: restarts after the first get noise (std 0.1).
    """
    prior = None
    if init == "prior":
        inputs.threat.check({"surrogate_data"}, f"{who} with init='prior'")
        prior = inputs.threat.prior
    shape = (restarts, inputs.num_images, *inputs.image_shape)
    gen = inputs.generator()
    x = init_images(init, shape, gen, prior)
    if init in ("constant", "prior") and restarts > 1:
        noise = torch.randn(x[1:].shape, generator=gen, device=gen.device)
        x[1:] = (x[1:] + 0.1 * noise).clamp(0, 1)
    return x


def retry_images(
    inputs: AttackInputs, init: str, restarts: int
) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """``fresh`` for :func:`optimize`: new starts like :func:`initial_images` (after NaN/inf)."""
    shape = (restarts, inputs.num_images, *inputs.image_shape)
    return fresh_images(init, shape, inputs.seed, inputs.threat.prior)


def attack_labels(inputs: AttackInputs, restarts: int, who: str) -> torch.Tensor:
    """Labels (R, N) for the simulator: granted or recovered by the front door."""
    if inputs.labels is None:
        raise ConfigError(f"{who} needs labels: grant them (ThreatModel(labels=...)) or recover.")
    y = inputs.labels.reshape(1, -1).long()
    if y.shape[1] != inputs.num_images:
        raise ConfigError(
            f"{who}: {y.shape[1]} labels for {inputs.num_images} images; they must match."
        )
    return y.expand(restarts, -1)


def fit_terms(
    attack: Any,
    inputs: AttackInputs,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    build: Any,
) -> FitTerms:
    """:meth:`Attack.objective_at` of a matching attack: ``build(setup, y)`` is the attack's own
    objective builder (returning ``x -> (objective, residual)``, each (R,)), evaluated at R=1.
    """
    if labels is not None:
        inputs = dataclasses.replace(inputs, labels=labels.reshape(-1).long())
    y = attack_labels(inputs, 1, f"attack {attack.name!r}")
    setup = matching_setup(
        inputs, fedavg=attack.fedavg, layers=attack.layers, scheme=attack.layer_weights
    )
    f = build(setup, y)
    x = images.reshape(1, inputs.num_images, *inputs.image_shape).detach()
    with torch.no_grad():
        obj, res = f(x)
    return FitTerms(objective=float(obj[0]), residual=float(res[0]))


def start_matching(
    attack: Any, inputs: AttackInputs
) -> tuple[torch.Tensor, torch.Tensor, MatchingSetup]:
    """Initial candidates (R, N, C, H, W), labels (R, N) and the matching setup of an attack
    with :class:`InvertingGradients`' init, restarts, fedavg, layers and layer_weights options."""
    who = f"attack {attack.name!r}"
    x0 = initial_images(inputs, attack.init, attack.restarts, who)
    y = attack_labels(inputs, attack.restarts, who)
    setup = matching_setup(
        inputs, fedavg=attack.fedavg, layers=attack.layers, scheme=attack.layer_weights
    )
    # which labels shared a batch is unknown: restarts spread them (not under group
    # consistency, which averages the restarts pixel by pixel and needs one label per slot)
    if setup.fedavg_mode == "replay" and not getattr(attack, "group_consistency", 0):
        y = restart_labels(inputs, attack.restarts)
    return x0, y, setup


def restart_chunk(inputs: AttackInputs, restarts: int) -> int:
    """How many restarts run at once within the memory budget (ConfigError if not even one)."""
    per = restart_bytes(inputs.model, inputs.image_shape, inputs.num_images)
    budget = memory_budget(inputs.device, inputs.memory_budget)
    return chunk_size(restarts, per, budget, f"restart of {inputs.num_images} image(s)")


def clamp_images(key: str = "images"):  # noqa: ANN201 - small closure factory
    """Projection onto the [0, 1] box, in place (after every step)."""

    def project(v: dict[str, torch.Tensor]) -> None:
        v[key].clamp_(0.0, 1.0)

    return project


def finish(
    attack: Attack,
    inputs: AttackInputs,
    res: OptimizationResult,
    labels: torch.Tensor,
    start: float,
    extras: dict[str, Any],
    best: int | None = None,
) -> Reconstruction:
    """Pick the restart with the lowest attack loss (or ``best``) and package the result; under
    ``select="mean"`` the images are the restarts' consensus around it."""
    losses = res.best_loss
    finite = torch.where(torch.isfinite(losses), losses, torch.full_like(losses, float("inf")))
    best = int(finite.argmin()) if best is None else best
    if getattr(attack, "select", "loss") == "mean":  # the restarts' consensus
        images = consensus(res.best["images"], labels, losses, best)
        extras = {**extras, "consensus_of": int(torch.isfinite(losses).sum())}
    else:
        images = res.best["images"][best].clamp(0, 1).detach().clone()
    return Reconstruction(
        images=images,
        labels=labels[best].clone(),
        attack=attack.name,
        threat_level=inputs.threat.level,
        loss_history=res.history[:, best].tolist(),
        restart_losses=finite.tolist(),
        restart_images=res.best["images"].clamp(0, 1).detach().clone(),
        best_restart=best,
        iterations=res.iterations,
        seconds=time.perf_counter() - start,
        label_method=inputs.label_method,
        extras=extras,
    )


def check_feature_options(attack: Any, who: str) -> None:
    """ConfigErrors for ``feature_match``, ``feature_metric``, ``tv_decay`` and ``warmup``."""
    fm = attack.feature_match
    if isinstance(fm, bool) or not isinstance(fm, int | float) or not fm >= 0:
        raise ConfigError(f"`feature_match` of {who} must be a number >= 0; got {fm!r}.")
    if attack.feature_metric not in ("l2", "cosine"):
        raise ConfigError(
            f"`feature_metric` of {who} must be 'l2' or 'cosine'; got {attack.feature_metric!r}."
        )
    if fm and attack.tv == "auto":
        raise ConfigError(f"`feature_match` of {who} does not combine with tv='auto' (yet).")
    td = attack.tv_decay
    if isinstance(td, bool) or not isinstance(td, int | float) or not 0 <= td <= 1:
        raise ConfigError(f"`tv_decay` of {who} must be a number in [0, 1]; got {td!r}.")
    if td != 1 and attack.tv == "auto":
        raise ConfigError(f"`tv_decay` of {who} does not combine with tv='auto' (yet).")
    wu = attack.warmup
    if isinstance(wu, bool) or not isinstance(wu, int) or not 0 <= wu < attack.iterations:
        raise ConfigError(
            f"`warmup` of {who} must be an int in [0, iterations); got {wu!r}."
        )


# ---------------------------------------------------------------------------------- attack


@register_attack("inverting-gradients")
@dataclass(frozen=True)
class InvertingGradients(Attack):
    """Inverting Gradients: 1 - cosine(simulated, observed update) + tv * TV, in the [0, 1] box.

    Knowledge: architecture and training details (number of images; lr/steps/batches for FedAvg).
    ``init="prior"`` also needs a prior image (level D). Labels are granted or recovered by the
    front door (iDLG for one image, counting for a batch).

    Options:
        iterations: Adam steps per restart (the paper: 4,800-24,000; 1,000 is the CPU-sized
            default).
        restarts: R trials run batched; the lowest final attack loss wins (``select``).
            ``restarts=8 iterations=250 select="mean" tv_decay=0`` beat the default on the
            four FedSGD rows of issue 16 (3 seeds: flatten 1 / 4 49.0 -> 61.5, 18.7 -> 19.5
            dB; GAP 1 / 4 18.9 -> 20.2, 14.3 -> 17.1) for 1.6-1.8x the CPU time, but 250
            iterations do not converge on a FedAvg client with BN in train mode (one image:
            34.2 / 38.4 dB -> 16.4 / 21.0), so it is not the default (docs/attacks.md).
        lr, signed, schedule: Adam on the sign of the gradient, step decay at 3/8, 5/8, 7/8.
        tv: total-variation weight (mean absolute neighbour difference of [0, 1] images).
            Measured at 1,000 iterations (lfw-faces 32x32, ConvNet) for tv 1e-4 / 1e-3 / 1e-2:
            batch 4 17.3 / 20.7 / 23.4 dB, batch 1 63 / 58 / 49 dB: 1e-2 keeps batches apart
            at little cost for one image. Geiping's repos used 1e-4 (CIFAR) to 0.1-0.2.
            Issue 16 (labels granted, docs/attacks.md): tv 0 beat 1e-2 by 12-14 dB at batch
            1 on the flatten head; elsewhere the order changes with the seed and the device.
            ``"auto"``: every weight of ``tv_grid`` starts as its own restart(s); after
            ``search_fraction`` of the run only the one with the lowest gradient-matching
            term (cosine distance, TV left out) goes on (:mod:`fedleak.attacks.autotune`);
            ``rec.extras["tv"]`` says which weight won. ``restarts`` then counts per weight,
            and ``select_after`` is replaced by ``search_fraction``. Measured: not better than
            1e-2 at batch 1 (it chose 1e-2; docs/attacks.md), so not the default.
        tv_grid: the candidate weights of ``tv="auto"``.
        search_fraction: share of ``iterations`` that every ``tv="auto"`` candidate runs;
            the run then costs about len(tv_grid) x this + (1 - this) single runs.
        init: "random" (uniform), "randn" (standard normal, clamped into the box after the
            first step), "constant" (0.5 grey) or "prior" (threat.prior). Beware:
            0.5 grey is a stationary point (all gradients zero) of models that normalize with
            mean 0.5 and have bias-free conv + BN layers, such as fedleak's ConvNet.
        layers: None (all tensors) or parameter-name prefixes / tensor indices to match.
        layer_weights: "equal" or "linear" (first layer 1, decaying), as in Geiping's code.
        fedavg: "replay" (re-run the client's local steps) or "pseudo-gradient".
        select: which restart to return: "loss" (lowest attack loss), "consistency" (the
            restart closest to the others) or "mean" (not one restart: the pixel mean of all
            finite restarts, paired to the lowest-loss one; :mod:`fedleak.attacks.selection`;
            checkpoints then show the consensus so far). With FedAvg replays whose restarts try
            different label spreads, a mean also averages in the wrong spreads' restarts.
        select_after: None (every restart runs to the end) or a fraction in (0, 1): after
            that share of the iterations only the restart with the lowest attack loss goes
            on. On one CPU thread R restarts cost ~R runs (compute-bound); select_after=0.125
            makes 4 restarts cost ~1.4 runs and keeps the lowest-loss start.
        feature_match: weight of a term that matches the last Linear layer's rows
            dW[c] / db[c] (the layer's input features at batch 1, a mixture at batch B;
            :mod:`fedleak.attacks.features`) between candidate and update; 0: off.
            ConfigError when the model's last layer is not a Linear with bias. Issue 16
            (1,000 its, 3 seeds): flatten head batch 1 49.0 -> 58.2 dB; GAP head batch 1
            18.9 -> 17.9 (the GAP features are already matched to ~2 %): not the default.
        feature_metric: "l2" (relative squared error, keeps the scale) or "cosine".
        tv_decay: the TV weight is multiplied by this at each of the step schedule's decays
            (3/8, 5/8, 7/8); 0 keeps TV for the first 3/8 only. Issue 16 (3 seeds): flatten 1
            49.0 -> 60.3 dB (with feature_match=1: 76.9), GAP 1 18.9 -> 19.6, GAP 4 14.3 ->
            14.4, flatten 4 18.7 -> 18.3; with the consensus +0.6 dB on GAP 1; 1 (no decay)
            stays the default. The fit check uses the weight of the run's last iteration.
        warmup: iterations of linear step-size warm-up at the start (0: none).
        layer_weights "norm": every tensor scaled to unit norm on the update's side
            (:func:`norm_weights`); GAP head batch 1: 15.6 dB against 18.9 (measured, worse).
    """

    iterations: int = 1000
    restarts: int = 1
    lr: float = 0.1
    signed: bool = True
    schedule: str = "step"
    tv: float | str = 1e-2
    init: str = "random"
    layers: LayerSpec = None
    layer_weights: str = "equal"
    fedavg: str = "replay"
    select: str = "loss"
    select_after: float | None = None
    tv_grid: tuple[float, ...] = autotune.TV_GRID
    search_fraction: float = autotune.FRACTION
    feature_match: float = 0.0
    feature_metric: str = "l2"
    warmup: int = 0
    tv_decay: float = 1.0

    requires = frozenset({"architecture", "training_details"})

    def __post_init__(self) -> None:
        check_matching(self, tv=0.0 if self.tv == "auto" else self.tv)
        who = f"attack {self.name!r}"
        object.__setattr__(self, "tv_grid", autotune.check_grid(self.tv_grid, who))
        sf = self.search_fraction
        if isinstance(sf, bool) or not isinstance(sf, int | float) or not 0 < sf <= 1:
            raise ConfigError(
                f"`search_fraction` of {who} must be a fraction in (0, 1]; got {sf!r}."
            )
        check_select(self.select, f"attack {self.name!r}")
        check_feature_options(self, who)
        object.__setattr__(self, "_tv_factor", [1.0])  # TV multiplier during a run (tv_decay)
        sa = self.select_after
        if sa is not None and (isinstance(sa, bool) or not isinstance(sa, int | float)
                               or not 0 < sa < 1):
            raise ConfigError(
                f"`select_after` of attack {self.name!r} must be None or a fraction in (0, 1); "
                f"got {sa!r}."
            )
        if self.select == "mean" and (sa is not None or self.tv == "auto"):
            raise ConfigError(
                f"`select='mean'` of attack {self.name!r} averages restarts that ran to the end; "
                "it cannot follow `select_after` or `tv='auto'`, which stop all but one early."
            )
        object.__setattr__(self, "layers", normalize_layers(self.layers, f"attack {self.name!r}"))

    def _objective(self, setup: MatchingSetup, y: torch.Tensor):  # noqa: ANN202
        """The attack loss ``(x, labels) -> (objective, residual)``, (R,) each: the one function
        that :meth:`reconstruct` minimizes and :meth:`objective_at` evaluates (``labels``
        default: ``y``)."""
        sim, tv = setup.simulator, self.tv
        if tv == "auto":  # the weight the run chose (the grid's first before any run)
            tv = getattr(self, "_chosen_tv", self.tv_grid[0])
        distance = CosineDistance(setup.target, setup.weights)  # target side computed once
        fm, features = self.feature_match, None
        if fm:
            w, b = final_linear(sim.net, list(setup.target), f"attack {self.name!r}")
            features = (w, b, FeatureDistance(setup.target[w], setup.target[b],
                                              self.feature_metric))

        def objective(
            x: torch.Tensor, labels: torch.Tensor | None = None
        ) -> tuple[torch.Tensor, torch.Tensor]:
            update = sim(x, y if labels is None else labels)
            match = distance(update)
            loss = match
            if tv:
                loss = loss + tv * self._tv_factor[0] * total_variation(x)
            if features is not None:
                w, b, feat = features
                loss = loss + fm * feat(update[w], update[b])
            return loss, match

        return objective

    def reconstruct(self, inputs: AttackInputs) -> Reconstruction:
        """Match the update's direction from R seeded starts at once."""
        if self.tv == "auto":
            return autotune.reconstruct_auto(self, inputs)
        start = time.perf_counter()
        x0, y, setup = start_matching(self, inputs)
        f = self._objective(setup, y)

        def objective(v: dict[str, torch.Tensor]) -> torch.Tensor:
            return f(v["images"], v["labels"])[0]  # labels: this chunk's restarts' spreads

        def tv_step(_v: dict[str, torch.Tensor], it: int) -> None:
            self._tv_factor[0] = self._tv_factor_at(it)

        res = optimize(
            {"images": x0}, objective, inputs, iterations=self.iterations, lr=self.lr,
            signed=self.signed, schedule=self.schedule, project=clamp_images(),
            fresh=retry_images(inputs, self.init, self.restarts), who=f"attack {self.name!r}",
            chunk=restart_chunk(inputs, self.restarts), select_after=self.select_after,
            constants={"labels": y}, warmup=self.warmup,
            before_step=tv_step if self.tv_decay != 1.0 else None,
            # under "mean" checkpoints show the consensus so far, as the result will be
            summarize=(lambda best, losses: consensus(best["images"], y, losses))
            if self.select == "mean" else None,
        )
        self._tv_factor[0] = 1.0
        extras = {**setup.extras, "restarts": self.restarts, "init": self.init, "tv": self.tv,
                  "feature_match": self.feature_match}
        extras["retried"] = res.retried
        if res.chunk:  # restarts per forward, when the memory budget split them
            extras["restart_chunk"] = res.chunk
        best = pick_restart(res.best["images"], res.best_loss, self.select)
        return finish(self, inputs, res, y, start, {**extras, "select": self.select}, best)

    def _tv_factor_at(self, it: int) -> float:
        """The TV weight's multiplier at iteration ``it``: ``tv_decay`` per schedule decay."""
        n = self.iterations
        return float(self.tv_decay) ** sum(it >= m * n / 8 for m in (3, 5, 7))

    def objective_at(
        self, inputs: AttackInputs, images: torch.Tensor, labels: torch.Tensor | None
    ) -> FitTerms:
        """1 - cosine + tv * TV at ``images``, TV weighted as at the run's last iteration (the
        objective the run ended on: with ``tv_decay=0`` the matching term alone, so a smooth
        result cannot 'fit' better than the truth through its TV); residual: the cosine
        distance."""
        self._tv_factor[0] = self._tv_factor_at(self.iterations - 1)
        try:
            return fit_terms(self, inputs, images, labels, self._objective)
        finally:
            self._tv_factor[0] = 1.0
