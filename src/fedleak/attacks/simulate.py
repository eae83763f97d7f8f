"""Recompute a client's update on candidate data, differentiably and batched over restarts.

FedSGD: the gradient of the mean cross-entropy. FedAvg: the client's K local steps replayed with
functional parameters (SGD with momentum, or Adam, the client's lr and batch split), so the
attack loss back-propagates through the whole local training. Restarts are a leading dimension
handled by ``torch.func.vmap``: R trials cost one vectorized computation, not R loops.

Dropout and drop-connect: the client trained with them active (train mode) and the attacker
does not know its masks. The replay runs them in train mode too, with masks of its own drawn
from a private, counted seed (a seeded attack repeats): fresh ones every restart and call by
default (``masks="sampled"``: the attack fits the update over the mask distribution), or one
set per restart kept through the run (``"per-restart"``: restarts become mask hypotheses,
chosen by attack loss). A replay with them off computes a forward the client never ran. No
choice reproduces the client's own masks: at the true images the residual is 0 only for draws
that equal them, so expect the fit check to say ``approximate-replay``. Measured with
``benchmarks/dropout_replay.py`` (IG, 200 iterations, batch 1, 16x16 faces, 3 residual blocks
with drop-path 0.3, client seeds 1-3; flat 16.3 dB): 1 restart: off 30.9/20.0/8.1 dB, sampled
22.4/25.1/7.4, per-restart 15.4/37.9/6.0; 4 restarts: off 31.1/20.0/8.1, sampled
27.3/32.3/8.6, per-restart 38.9/37.7/7.7. Dropout 0.2 on the 2,048 features before the head
defeated all three (13.7-14.6 dB, seed 1, 4 restarts).
"""

from __future__ import annotations

import copy
import types
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import nn
from torch.func import functional_call, grad, replace_all_batch_norm_modules_, vmap
from torch.nn import functional as F
from torch.utils._pytree import tree_map

from fedleak.errors import ConfigError, InsufficientKnowledgeError
from fedleak.fl.update import ClientUpdate, TrainingConfig

Tensors = dict[str, torch.Tensor]
A = TypeVar("A")
_MASK_SEED = 0x5EED  # first seed of the replay's dropout masks (one more per call if sampled)
MASK_MODES = ("sampled", "per-restart")


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy for hard (B,) or soft (B, K) labels (soft: DLG's joint label search)."""
    if target.is_floating_point():
        return -(target.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean()
    return F.cross_entropy(logits, target)


#: attributes by which modules with functional drop-connect / drop-path declare their rate
_DROP_RATES = ("drop_connect_rate", "drop_path_rate", "drop_prob")


def stochastic_layers(model: nn.Module) -> list[str]:
    """Names of the modules that draw random masks in train mode (dropout, drop-connect/path)."""
    names = []
    for name, m in model.named_modules():
        rate = max((float(getattr(m, a, 0.0) or 0.0) for a in _DROP_RATES), default=0.0)
        if (isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0) or rate > 0:
            names.append(name)
    return names


def replay_masks(model: nn.Module) -> str:
    """How :class:`UpdateSimulator` replays ``model``'s random masks: "sampled" or "none"."""
    return "sampled" if stochastic_layers(model) else "none"


def attack_model(model: nn.Module, bn_mode: str, *, stochastic: bool = False) -> nn.Module:
    """A private copy of ``model`` set up as the client ran it, safe for vmap.

    BatchNorm in train mode normalizes with batch statistics; the copy drops running buffers so
    vmapped forwards never write to them (the statistics an attack needs come from the update).
    ``stochastic``: the dropout-like modules (:func:`stochastic_layers`) in train mode, as the
    client trained; everything else stays in eval mode (a layer with its own random behaviour,
    such as a defense's latent noise, is modelled by the attacker's knowledge of it, see
    :mod:`fedleak.defenses.knowledge`, not by drawing here).
    """
    net = copy.deepcopy(model)
    for p in net.parameters():
        p.requires_grad_(False)
    net.eval()
    if stochastic:
        drop = set(stochastic_layers(net))
        for name, m in net.named_modules():
            if name in drop:
                m.train()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            if bn_mode != "train" and m.running_var is not None:
                # the same per-channel affine map, cheaper to differentiate twice
                m.forward = types.MethodType(_eval_batch_norm, m)  # type: ignore[method-assign]
    if bn_mode == "train":
        replace_all_batch_norm_modules_(net)
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
    return net


def _eval_batch_norm(self: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode BatchNorm as one per-channel affine map, the same function as the module's.

    Why: under double backward (and vmap over restarts) the native batch-norm kernels go
    through generic backward-of-backward formulas that cost ~10 % of an attack iteration on a
    BN ConvNet; ``x * scale + shift`` differentiates twice with two elementwise ops.
    """
    scale = torch.rsqrt(self.running_var + self.eps)  # type: ignore[operator]  # (C,)
    if self.weight is not None:
        scale = scale * self.weight
    shift = -self.running_mean * scale  # type: ignore[operator]
    if self.bias is not None:
        shift = shift + self.bias
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return x * scale.view(shape) + shift.view(shape)


class UpdateSimulator:
    """Maps candidate data to the update the client would have sent.

    Args:
        model: the global model the client started from.
        update: the attacker's view of the update (its tensor names select the parameters).
        mode: "gradient" (FedSGD, or FedAvg via the pseudo-gradient proxy) or "replay".
        bn_mode: BatchNorm mode of the client ("train" uses batch statistics).

    Calling it with images (R, N, C, H, W) and labels (R, N) or soft labels (R, N, K) returns
    tensors keyed like ``update.tensors`` with a leading R dimension. ``masks`` sets how
    dropout-like layers are replayed: "sampled" (fresh masks per restart and call: the attack
    fits the update over the mask distribution) or "per-restart" (each restart keeps its own
    masks through every call: restarts become mask hypotheses, chosen by attack loss);
    ``stochastic`` says which one ran ("none" for a model without such layers).
    """

    def __init__(
        self,
        model: nn.Module,
        update: ClientUpdate,
        *,
        mode: str,
        bn_mode: str = "eval",
        masks: str = "sampled",
    ) -> None:
        if mode not in ("gradient", "replay"):
            raise ConfigError(f"`mode` must be 'gradient' or 'replay'; got {mode!r}.")
        if masks not in MASK_MODES:
            raise ConfigError(
                f"`masks` of UpdateSimulator must be one of {', '.join(MASK_MODES)}; got {masks!r}."
            )
        self.net = attack_model(model, bn_mode, stochastic=True)
        self.stochastic = masks if stochastic_layers(self.net) else "none"
        self._draws = 0  # calls so far: each draws its masks from its own seed
        self.names = list(update.tensors)
        all_params = dict(self.net.named_parameters())
        self.params: Tensors = {k: all_params[k].detach() for k in self.names}
        # parameters the update does not carry (e.g. excluded by a filter) stay fixed
        self.fixed: Tensors = {k: v.detach() for k, v in all_params.items() if k not in self.params}
        self.buffers: Tensors = dict(self.net.named_buffers())
        self.mode = mode
        self.training = update.training
        if mode == "replay":
            if update.training is None:
                raise InsufficientKnowledgeError(
                    "replaying local training needs the training details (level C or higher)."
                )
            self._fn = self._replay_fn(update.training)
        else:
            self._fn = self._grad_fn()
        self._batched = vmap(self._fn, in_dims=(0, 0), randomness="different")

    def _forward(self, params: Tensors, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.net, ({**params, **self.fixed}, self.buffers), (x,))

    def _grad_fn(self) -> Callable[[torch.Tensor, torch.Tensor], Tensors]:
        def loss(params: Tensors, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return soft_cross_entropy(self._forward(params, x), y)

        g = grad(loss)
        return lambda x, y: g(self.params, x, y)

    def _replay_fn(self, cfg: TrainingConfig) -> Callable[[torch.Tensor, torch.Tensor], Tensors]:
        bounds = _batch_bounds(cfg.batch_sizes or _default_sizes(cfg))

        def loss(params: Tensors, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return soft_cross_entropy(self._forward(params, x), y)

        g = grad(loss)

        def no_aux(p: Tensors, x: torch.Tensor, y: torch.Tensor) -> tuple[Tensors, None]:
            return g(p, x, y), None

        def replay(x: torch.Tensor, y: torch.Tensor) -> Tensors:
            return replay_steps(cfg, bounds, self.params, x, y, no_aux)[0]

        return replay

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> Tensors:
        if self.stochastic == "none":
            return self._run(images, labels)
        self._draws += 1
        seed = _MASK_SEED + (self._draws if self.stochastic == "sampled" else 0)
        dev = images.device
        forked = [] if dev.type != "cuda" else [dev.index or torch.cuda.current_device()]
        # the caller's random state is left as it was; the masks follow from the call count
        with torch.random.fork_rng(devices=forked):
            torch.default_generator.manual_seed(seed)
            for i in forked:
                torch.cuda.default_generators[i].manual_seed(seed)
            return self._run(images, labels)

    def _run(self, images: torch.Tensor, labels: torch.Tensor) -> Tensors:
        if images.shape[0] == 1:  # one restart: vmap's batching rules cost ~25 % for nothing
            return tree_map(lambda v: v.unsqueeze(0), self._fn(images[0], labels[0]))
        return self._batched(images, labels)


def _default_sizes(cfg: TrainingConfig) -> tuple[int, ...]:
    return (cfg.batch_size,) * cfg.local_steps


def _batch_bounds(sizes: tuple[int, ...]) -> list[tuple[int, int]]:
    """Start/end of each local batch inside one epoch of dummy data, wrapping every epoch."""
    bounds, pos = [], 0
    total = 0
    # epoch length = samples until the split repeats; batches never straddle an epoch
    for s in sizes:
        bounds.append((pos, pos + s))
        pos += s
        total += s
    return bounds


def replay_steps(
    cfg: TrainingConfig,
    bounds: Sequence[tuple[int, int]],
    params: Tensors,
    x: torch.Tensor,
    y: torch.Tensor,
    g: Callable[[Tensors, torch.Tensor, torch.Tensor], tuple[Tensors, A]],
) -> tuple[Tensors, list[A]]:
    """The client's local steps on candidates ``x, y``: ``(new - old params, aux of every step)``.

    ``g(p, xb, yb)`` gives the gradient of one batch and an aux value. The steps are the
    client's optimizer (SGD with momentum and weight decay, or Adam) on functional parameters,
    starting from ``params``; batch k is ``bounds[k]`` of the candidates, wrapped around.
    """
    lr, mom, wd = cfg.lr, cfg.momentum, cfg.weight_decay
    b1, b2 = cfg.betas
    n = x.shape[0]
    p = dict(params)
    buf: Tensors = {}
    m1: Tensors = {}
    m2: Tensors = {}
    aux: list[A] = []
    for step, (s, e) in enumerate(bounds, start=1):
        # dummy data stands for one epoch of the client's data; the client's sampling
        # order is unknown, so epoch k reuses the same split (Dimitrov et al.)
        s, e = s % n, (e - 1) % n + 1
        gr, a = g(p, x[s:e], y[s:e])
        aux.append(a)
        new = {}
        for k in p:
            d = gr[k] + wd * p[k] if wd else gr[k]
            if cfg.optimizer == "sgd":
                if mom:
                    buf[k] = d if k not in buf else mom * buf[k] + d
                    d = buf[k]
                new[k] = p[k] - lr * d
            else:  # adam
                m1[k] = (1 - b1) * d if k not in m1 else b1 * m1[k] + (1 - b1) * d
                m2[k] = (1 - b2) * d * d if k not in m2 else b2 * m2[k] + (1 - b2) * d * d
                mh = m1[k] / (1 - b1**step)
                vh = m2[k] / (1 - b2**step)
                new[k] = p[k] - lr * mh / (safe_sqrt(vh) + 1e-8)
        p = new
    return {k: p[k] - params[k] for k in p}, aux


def safe_sqrt(v: torch.Tensor) -> torch.Tensor:
    """``v.sqrt()`` for ``v >= 0`` with derivative 0 (not inf) where ``v == 0``.

    Why: Adam's second moment is exactly 0 wherever a local gradient entry was exactly 0 (dead
    ReLUs, unused rows at small batches); ``d sqrt(v) / dv`` is inf there and, times the zero
    ``dv/dx``, NaN in the attack's image gradient. The values are sqrt's, bit for bit, and the
    masked derivative is the true one of Adam's step (``v = d^2`` has ``dv/dd = 0`` at ``d = 0``).
    """
    pos = v > 0
    return torch.where(pos, torch.where(pos, v, torch.ones_like(v)).sqrt(), torch.zeros_like(v))


def pseudo_gradient(update: ClientUpdate) -> Tensors:
    """FedAvg proxy: delta / (-lr * K), what a single equivalent gradient step would be."""
    if update.kind == "gradient":
        return dict(update.tensors)
    if update.training is None:
        raise InsufficientKnowledgeError(
            "the pseudo-gradient needs the client's lr and steps (level C or higher)."
        )
    scale = -1.0 / (update.training.lr * update.training.local_steps)
    return {k: v * scale for k, v in update.tensors.items()}


def layer_weights(names: list[str], scheme: str | None) -> dict[str, float]:
    """Per-tensor weights for matching: None/"equal" -> 1; "linear" decays from first to last."""
    if scheme in (None, "equal"):
        return dict.fromkeys(names, 1.0)
    if scheme == "linear":
        n = len(names)
        return {k: 1.0 - i / n for i, k in enumerate(names)}
    raise ConfigError(f"`layer_weights` must be 'equal' or 'linear'; got {scheme!r}.")


def gradient_distance(
    candidate: Tensors, target: Tensors, *, metric: str, weights: dict[str, float] | None = None
) -> torch.Tensor:
    """Per-restart distance (R,) between simulated tensors (R, ...) and target tensors (...).

    ``l2``: weighted sum of squared differences (DLG, GradInversion). ``l2-layer``: the same
    with each tensor's error divided by its squared norm, so small early-layer gradients (which
    pin down the pixels) count as much as the large last-layer ones. ``cosine``: 1 - cosine
    similarity of the weighted concatenation of all selected tensors (Inverting Gradients).
    """
    keys = list(target)
    if metric == "l2-layer":  # scale-free: each tensor's squared error relative to its norm
        total = 0.0
        for k in keys:
            w = 1.0 if weights is None else weights[k]
            scale = target[k].pow(2).sum().clamp_min(1e-30)
            total = total + w * (candidate[k] - target[k]).flatten(1).pow(2).sum(1) / scale
        return total  # type: ignore[return-value]
    if metric == "l2":
        total = 0.0
        for k in keys:
            w = 1.0 if weights is None else weights[k]
            total = total + w * (candidate[k] - target[k]).flatten(1).pow(2).sum(1)
        return total  # type: ignore[return-value]
    if metric == "cosine":
        return CosineDistance(target, weights)(candidate)
    if metric == "cosine-loop":  # the per-tensor reference of CosineDistance (tests)
        dot = 0.0
        cn = 0.0
        tn = 0.0
        for k in keys:
            w = 1.0 if weights is None else weights[k]
            c, t = candidate[k].flatten(1), target[k].flatten()
            dot = dot + w * (c * t).sum(1)
            cn = cn + w * c.pow(2).sum(1)
            tn = tn + w * t.pow(2).sum()
        return 1 - dot / (cn.sqrt() * tn.sqrt() + 1e-12)  # type: ignore[operator,union-attr]
    raise ConfigError(f"`metric` must be 'l2', 'l2-layer' or 'cosine'; got {metric!r}.")


class CosineDistance:
    """1 - cosine similarity of the weighted concatenation of tensors, per restart: (R,).

    The target side (concatenated, weighted, its norm) is computed once, not every iteration,
    and the candidate side is one concatenation, one matrix-vector product and one norm
    instead of three reductions per tensor (Inverting Gradients matches every layer; on a
    small ConvNet the per-tensor loop was ~10 % of an iteration).
    """

    def __init__(self, target: Tensors, weights: dict[str, float] | None = None) -> None:
        self.keys = list(target)
        w = None if weights is None else [float(weights[k]) for k in self.keys]
        self.scales = None if w is None or all(v == 1.0 for v in w) else [v**0.5 for v in w]
        flat = [target[k].detach().flatten() for k in self.keys]
        if self.scales is not None:
            flat = [t * s for t, s in zip(flat, self.scales, strict=True)]
        self.target = torch.cat(flat)  # (P,)
        self.target_norm = self.target.norm()

    def __call__(self, candidate: Tensors) -> torch.Tensor:
        parts = [candidate[k].flatten(1) for k in self.keys]  # each (R, P_k)
        if self.scales is not None:
            parts = [c * s for c, s in zip(parts, self.scales, strict=True)]
        c = torch.cat(parts, 1)  # (R, P)
        dot = c @ self.target.to(c.dtype)
        return 1 - dot / (c.norm(dim=1) * self.target_norm + 1e-12)
