"""FedAvg inversion for clients that reshuffle every epoch (Dimitrov et al. 2022).

Why: a FedAvg client that trains E > 1 epochs draws a new batch split every epoch, and the
attacker cannot know the permutations. A replay that reuses one split for every epoch (what
``inverting-gradients``/``gradinversion``/``bn-fedavg`` do) cannot reproduce the update even at
the true images. "Data Leakage in Federated Averaging" (Dimitrov, Balunovic, Konstantinov,
Vechev, TMLR 2022) gives every epoch its own image variables, so epoch e's batches are simply
slots of epoch e's reconstruction in order, and ties the epochs together with a prior that does
not depend on the order of the images within an epoch. We minimize, per restart::

    1 - cos(replay(x_1, ..., x_E), delta)                       # the client's steps, epoch-wise
  + tv * mean_e TV(x_e)
  + epoch_weight * mean_{e, i} mean_pixels (x_e[pi_e(i)] - c_i)^2  # the epoch-invariant prior

where ``pi_e`` is a Hungarian matching (squared distance, images of the same label only) of
epoch e's images to epoch 1's, and ``c_i = mean_e x_e[pi_e(i)]`` the matched mean. The matching
is recomputed every iteration (it is piecewise constant, so the prior is differentiable almost
everywhere and invariant to the order within each epoch). The answer is the same matching at
the best iterate, averaged over epochs into one set of N images.

Labels (granted or recovered) say which labels the client holds, not which of them shared a
batch in which epoch: restarts cycle through distinct spreads of the labels over each epoch's
batches (mixed radix over the epochs, identity first); the lowest attack loss wins.

Our choices where the paper leaves room: the update term is Inverting Gradients' cosine (scale
free, so one weight fits any lr and step count), with its signed Adam and step schedule; the
prior is the matched squared distance to the epoch mean (the paper's matching prior, without its
label-recovery part); a partial last epoch (``local_steps`` not a multiple of the epoch) only
counts its used slots.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from fedleak.attacks.base import Attack, AttackInputs, Reconstruction, register_attack
from fedleak.attacks.fit import FitTerms
from fedleak.attacks.inverting import check_common, initial_images
from fedleak.attacks.labels import label_arrangements
from fedleak.attacks.optimize import optimize, total_variation
from fedleak.attacks.simulate import Tensors, UpdateSimulator, gradient_distance
from fedleak.errors import ConfigError, InsufficientKnowledgeError, UpdateError
from fedleak.fl.update import ClientUpdate, TrainingConfig

NAME = "fedavg-epochs"
#: restarts=None: at most this many label spreads, one restart each
MAX_ARRANGEMENTS = 4
#: cost that keeps the matching within one label (images never change label between epochs)
_OTHER_LABEL = 1e6


# ------------------------------------------------------------------------- the client's epochs


def epoch_splits(cfg: TrainingConfig, n: int) -> list[tuple[int, ...]]:
    """The client's batch sizes grouped by epoch, for ``n`` images (the last epoch may be partial).

    Uses the update's ``batch_sizes`` (what :func:`fedleak.fl.local_update` records) or, when
    they are absent, ``local_steps`` batches of ``batch_size`` with a smaller last batch per
    epoch, as the client's loader makes them.
    """
    if n < 1:
        raise ConfigError(f"`num_images` of attack {NAME!r} must be >= 1; got {n}.")
    sizes = list(cfg.batch_sizes)
    if not sizes:
        per_epoch = [cfg.batch_size] * (n // cfg.batch_size)
        per_epoch += [n % cfg.batch_size] if n % cfg.batch_size else []
        sizes = list(itertools.islice(itertools.cycle(per_epoch), cfg.local_steps))
    epochs: list[tuple[int, ...]] = []
    current: list[int] = []
    for s in sizes:
        current.append(s)
        if sum(current) > n:
            raise UpdateError(
                f"the update's local batches {sizes} do not split {n} images into epochs "
                f"(a batch straddles an epoch): is `num_images` right?"
            )
        if sum(current) == n:
            epochs.append(tuple(current))
            current = []
    if current:
        epochs.append(tuple(current))
    return epochs


def shuffled_epochs(update: ClientUpdate, num_images: int | None = None) -> int:
    """How many epochs the client reshuffled, as its metadata says (0 when it did not shuffle).

    Counts only what a fixed-split replay gets wrong: a FedAvg client that shuffles, over more
    than one epoch, with more than one batch per epoch (one batch per epoch is order-free).
    """
    cfg = update.training
    if update.kind != "delta" or cfg is None or cfg.protocol != "fedavg" or not cfg.shuffle:
        return 0
    n = num_images if num_images is not None else update.num_samples
    if n is None:
        if not cfg.local_epochs or not cfg.batch_sizes:
            return 0
        n = sum(cfg.batch_sizes) // cfg.local_epochs
    try:
        splits = epoch_splits(cfg, n)
    except UpdateError:
        return 0
    if len(splits) < 2 or len(splits[0]) < 2:
        return 0
    return len(splits)


def route_attack(name: str, update: ClientUpdate, options: dict[str, Any] | None = None) -> str:
    """The attack to run for a default choice of ``name`` on this update.

    A shuffled multi-epoch FedAvg update (:func:`shuffled_epochs`) goes to ``fedavg-epochs``
    when ``name`` is the FedAvg default ``inverting-gradients`` and every option given is one
    ``fedavg-epochs`` understands; anything else keeps ``name``.
    """
    if name != "inverting-gradients" or shuffled_epochs(update) == 0:
        return name
    if options and not set(options) <= set(FedAvgEpochs.options()):
        return name
    return NAME


class EpochReplay:
    """The client's local steps on per-epoch candidates: epoch e's batches are x_e's slots in order.

    Calling it with images (R, E, N, C, H, W) and labels (R, E, N) returns the simulated update
    (keyed like ``update.tensors``, leading R). The epochs are laid end to end, so the replay is
    :class:`UpdateSimulator`'s with ``E * N`` candidates and the client's own batch sizes.
    """

    def __init__(self, model: torch.nn.Module, update: ClientUpdate, num_images: int) -> None:
        cfg = update.training
        if cfg is None:
            raise InsufficientKnowledgeError(
                f"attack {NAME!r} replays local training: it needs the training details "
                "(level C or higher)."
            )
        if update.kind != "delta" or cfg.protocol != "fedavg":
            raise UpdateError(
                f"attack {NAME!r} attacks FedAvg deltas; got a {update.kind!r} update "
                f"({cfg.protocol}). Use inverting-gradients for FedSGD."
            )
        self.splits = epoch_splits(cfg, num_images)
        self.epochs = len(self.splits)
        self.n = num_images
        #: (E, N) which slots of each epoch the client used (all but a partial last epoch's rest)
        used = torch.zeros(self.epochs, num_images, dtype=torch.bool)
        for e, sizes in enumerate(self.splits):
            used[e, : sum(sizes)] = True
        self.used = used
        self.sim = UpdateSimulator(model, update, mode="replay", bn_mode=cfg.bn_mode)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> Tensors:
        r = images.shape[0]
        x = images.reshape(r, self.epochs * self.n, *images.shape[3:])
        return self.sim(x, labels.reshape(r, self.epochs * self.n))


# ------------------------------------------------------------------- matching across epochs


def match_epochs(
    images: torch.Tensor, labels: torch.Tensor | None, used: torch.Tensor
) -> torch.Tensor:
    """Hungarian matching of every epoch's used slots to epoch 0's images: (R, E, N) indices.

    ``out[r, e, j]`` is the image of epoch 0 that slot j of epoch e is matched to (-1 for an
    unused slot of a later epoch). Squared distance of [0, 1] images; slots of a different
    label never match. Works on detached values on the host (tiny N x N problems).
    """
    r, e_count, n = images.shape[:3]
    flat = images.detach().reshape(r, e_count, n, -1).float()
    out = torch.full((r, e_count, n), -1, dtype=torch.long)
    out[:, 0] = torch.arange(n)  # the reference: an image the client never used keeps its slot
    for e in range(1, e_count):
        cols = used[e].nonzero().flatten()
        if cols.numel() == 0:
            continue
        cost = torch.cdist(flat[:, 0], flat[:, e, cols]).pow(2).cpu()  # (R, N, |U_e|)
        if labels is not None:
            other = labels[:, 0, :, None].cpu() != labels[:, e, cols][:, None, :].cpu()
            cost = cost + _OTHER_LABEL * other
        for ri in range(r):
            rows, picked = linear_sum_assignment(cost[ri].numpy())
            out[ri, e, cols[picked]] = torch.as_tensor(np.asarray(rows), dtype=torch.long)
    return out


def epoch_mean(images: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """The matched mean over epochs of each of epoch 0's images: (R, N, C, H, W).

    Differentiable in ``images``; an image no other epoch used is its own mean.
    """
    r, e_count, n = images.shape[:3]
    onehot = torch.nn.functional.one_hot(match.clamp_min(0), n).to(images.dtype)
    onehot = onehot * (match >= 0).unsqueeze(-1).to(images.dtype)  # (R, E, N_slots, N_ref)
    onehot = onehot.to(images.device)
    total = torch.einsum("rejn,rej...->rn...", onehot, images)
    count = onehot.sum((1, 2)).clamp_min(1.0)  # (R, N)
    return total / count.view(r, n, *([1] * (images.ndim - 3)))


def invariance_prior(images: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """Mean over used slots of the per-pixel squared distance to their matched epoch mean: (R,)."""
    r, e_count, n = images.shape[:3]
    mean = epoch_mean(images, match)  # (R, N, ...)
    idx = match.clamp_min(0).to(images.device)
    gathered = torch.gather(
        mean.unsqueeze(1).expand(r, e_count, *mean.shape[1:]),
        2,
        idx.view(r, e_count, n, *([1] * (images.ndim - 3))).expand_as(images),
    )
    per_slot = (images - gathered).pow(2).flatten(3).mean(-1)  # (R, E, N)
    used = (match >= 0).to(images.device, images.dtype)
    return (per_slot * used).sum((1, 2)) / used.sum((1, 2)).clamp_min(1.0)


# ------------------------------------------------------------------------------ the attack


def _spreads(
    labels: torch.Tensor, splits: list[tuple[int, ...]], restarts: int, gen: torch.Generator
) -> torch.Tensor:
    """Per-restart, per-epoch label orders (R, E, N): distinct spreads, identity first."""
    options = [label_arrangements(labels, sizes, restarts, gen) for sizes in splits]
    out = []
    for r in range(restarts):
        rest, row = r, []
        for opts in options:
            row.append(opts[rest % opts.shape[0]])
            rest //= opts.shape[0]
        out.append(torch.stack(row))
    return torch.stack(out)


def _count_spreads(labels: torch.Tensor, splits: list[tuple[int, ...]], cap: int) -> int:
    """How many distinct per-epoch label spreads exist, up to ``cap``."""
    gen = torch.Generator().manual_seed(0)  # cpu generator: label orders (indices)
    total = 1
    for sizes in splits:
        total *= label_arrangements(labels, sizes, cap, gen).shape[0]
        if total >= cap:
            return cap
    return total


@register_attack(NAME)
@dataclass(frozen=True)
class FedAvgEpochs(Attack):
    """Epoch-wise FedAvg inversion with an epoch-order-invariant prior (Dimitrov et al. 2022).

    Knowledge: architecture and training details (level C: lr, batch sizes, number of images;
    the client's shuffling permutations are NOT needed) and labels, granted or recovered by the
    front door. Chosen by default (:func:`route_attack`) for updates whose metadata says the
    client reshuffled over more than one epoch.

    Options:
        iterations, lr, signed, schedule: the Adam loop of ``inverting-gradients``.
        restarts: R trials run batched, cycling through spreads of the labels over each epoch's
            batches; None: one per distinct spread, at most :data:`MAX_ARRANGEMENTS`.
        tv: total-variation weight (as ``inverting-gradients``).
        epoch_weight: weight of the epoch-invariant prior (mean squared pixel distance of each
            epoch's matched image to its epoch mean).
        init: "random", "constant" or "prior" (level D), each epoch drawn independently.
        fit_starts, fit_rounds: the order search of :meth:`objective_at` (see there).
    """

    iterations: int = 1000
    restarts: int | None = None
    lr: float = 0.1
    signed: bool = True
    schedule: str = "step"
    tv: float = 1e-2
    epoch_weight: float = 1.0
    init: str = "random"
    fit_starts: int = 2
    fit_rounds: int = 20

    requires = frozenset({"architecture", "training_details"})
    handles = frozenset({"delta"})

    def __post_init__(self) -> None:
        check_common(
            self.name, iterations=self.iterations, restarts=self.restarts, lr=self.lr,
            init=self.init, schedule=self.schedule, **{"w:tv": self.tv},
            **{"w:epoch_weight": self.epoch_weight},
        )
        for key in ("fit_starts", "fit_rounds"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(
                    f"`{key}` of attack {self.name!r} must be an int >= 1; got {v!r}."
                )

    # --- shared setup --------------------------------------------------------------------
    def _setup(self, inputs: AttackInputs) -> tuple[EpochReplay, Tensors, torch.Tensor]:
        if inputs.labels is None:
            raise InsufficientKnowledgeError(
                f"attack {self.name!r} needs labels: grant them (ThreatModel(labels=...)) or "
                "let the front door recover them."
            )
        labels = inputs.labels.reshape(-1).long()
        if labels.numel() != inputs.num_images:
            raise ConfigError(
                f"attack {self.name!r}: {labels.numel()} labels for {inputs.num_images} images; "
                "they must match."
            )
        replay = EpochReplay(inputs.model, inputs.update, inputs.num_images)
        target = {k: v.detach() for k, v in inputs.update.tensors.items()}
        return replay, target, labels

    def reconstruct(self, inputs: AttackInputs) -> Reconstruction:
        """Optimize all epochs' images jointly; match and average the best restart's epochs."""
        start = time.perf_counter()
        replay, target, labels = self._setup(inputs)
        gen = inputs.generator()
        splits = replay.splits
        restarts = self.restarts or _count_spreads(labels, splits, MAX_ARRANGEMENTS)
        ys = _spreads(labels, splits, restarts, gen)  # (R, E, N)
        e_count, n = replay.epochs, inputs.num_images
        # every epoch starts from its own draw (seeded): the epochs are separate unknowns
        x0 = initial_images(inputs, self.init, restarts * e_count, f"attack {self.name!r}")
        x0 = x0.reshape(e_count, restarts, n, *x0.shape[2:]).transpose(0, 1).contiguous()
        used = replay.used
        tv, ew = self.tv, self.epoch_weight

        def objective(v: dict[str, torch.Tensor]) -> torch.Tensor:
            x = v["images"]
            loss = gradient_distance(replay(x, ys), target, metric="cosine")
            if tv:
                loss = loss + tv * total_variation(x.flatten(1, 2))
            if ew and e_count > 1:
                loss = loss + ew * invariance_prior(x, match_epochs(x, ys, used))
            return loss

        def decode(v: dict[str, torch.Tensor]) -> torch.Tensor:
            # checkpoints preview the merged set (label-free matching: restart unknown here)
            x = v["images"]
            return epoch_mean(x, match_epochs(x, None, used))

        def project(v: dict[str, torch.Tensor]) -> None:
            v["images"].clamp_(0.0, 1.0)

        res = optimize(
            {"images": x0}, objective, inputs, iterations=self.iterations, lr=self.lr,
            signed=self.signed, schedule=self.schedule, project=project, decode=decode,
        )
        losses = res.best_loss
        finite = torch.where(torch.isfinite(losses), losses, torch.full_like(losses, math.inf))
        best = int(finite.argmin())
        xb = res.best["images"][best : best + 1]
        yb = ys[best : best + 1]
        with torch.no_grad():
            match = match_epochs(xb, yb, used)
            merged = epoch_mean(xb, match)[0].clamp(0, 1)
            spread = float(invariance_prior(xb, match)[0]) if e_count > 1 else 0.0
        extras = {
            "fedavg_mode": "epochs",
            "epochs": e_count,
            "epoch_batches": "/".join(str(len(s)) for s in splits),
            "restarts": restarts,
            "init": self.init,
            "tv": tv,
            "epoch_weight": ew,
            "epoch_spread": spread,
            "epoch_images": xb[0].detach().clone(),
            "epoch_labels": yb[0].clone(),
        }
        return Reconstruction(
            images=merged.detach().clone(),
            labels=yb[0, 0].clone(),
            attack=self.name,
            threat_level=inputs.threat.level,
            loss_history=res.history[:, best].tolist(),
            restart_losses=finite.tolist(),
            best_restart=best,
            iterations=res.iterations,
            seconds=time.perf_counter() - start,
            label_method=inputs.label_method,
            extras=extras,
        )

    # --- the fit check -------------------------------------------------------------------
    def objective_at(
        self, inputs: AttackInputs, images: torch.Tensor, labels: torch.Tensor | None
    ) -> FitTerms | None:
        """The objective at one image set used in every epoch, in the best order found.

        With every epoch holding the same images the epoch prior is 0, and what remains is the
        cosine residual of the best per-epoch orders plus ``tv`` * TV. The orders are unknown
        (the attacker never has the client's permutations), so they are searched: greedy
        swaps of two images in different batches of one epoch, all candidate swaps evaluated
        in one vectorized replay per round, from the identity order and ``fit_starts - 1``
        seeded random ones, at most ``fit_rounds`` rounds. The result is an upper bound on the
        true minimum over orders; the same search runs for the reconstruction and the truth.
        """
        if inputs.update.kind != "delta" or inputs.update.training is None:
            return None
        replay, target, own = self._setup(inputs)
        y = (own if labels is None else labels.reshape(-1).long()).to(images.device)
        x = images.detach()
        e_count, n = replay.epochs, x.shape[0]
        gen = torch.Generator().manual_seed(inputs.seed + 7)  # cpu generator: swap orders
        batch_of = []
        for sizes in replay.splits:
            ids = torch.full((n,), -1, dtype=torch.long)  # unused slots: batch -1
            pos = 0
            for b, s in enumerate(sizes):
                ids[pos : pos + s] = b
                pos += s
            batch_of.append(ids)
        swaps = [
            (e, a, b)
            for e in range(e_count)
            for a in range(n)
            for b in range(a + 1, n)
            if batch_of[e][a] != batch_of[e][b]
        ]

        def loss_of(orders: torch.Tensor) -> torch.Tensor:
            """Cosine residual (K,) of per-epoch orders (K, E, N), in chunks."""
            out = []
            for chunk in orders.split(64):
                xs = x[chunk]  # (k, E, N, C, H, W)
                out.append(gradient_distance(replay(xs, y[chunk]), target, metric="cosine"))
            return torch.cat(out)

        starts = [torch.arange(n).repeat(e_count, 1)]
        for _ in range(self.fit_starts - 1):
            starts.append(torch.stack([torch.randperm(n, generator=gen) for _ in range(e_count)]))
        best_res = math.inf
        with torch.no_grad():
            for order in starts:
                current = float(loss_of(order[None])[0])
                for _ in range(self.fit_rounds):
                    if not swaps:
                        break
                    cand = order.repeat(len(swaps), 1, 1)
                    for k, (e, a, b) in enumerate(swaps):
                        cand[k, e, a], cand[k, e, b] = order[e, b], order[e, a]
                    vals = loss_of(cand)
                    k = int(vals.argmin())
                    if not float(vals[k]) < current:
                        break
                    order, current = cand[k], float(vals[k])
                best_res = min(best_res, current)
            tv_term = float(total_variation(x[None])[0]) if self.tv else 0.0
        return FitTerms(objective=best_res + self.tv * tv_term, residual=best_res)
