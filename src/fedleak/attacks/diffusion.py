"""Gradient inversion of federated diffusion models: "diffusion-ig", "gidm" and "gidm-plus".

A diffusion client's update is the gradient of the DDPM loss on its images x, its noise eps and
its timesteps t (see :mod:`fedleak.diffusion.client`). The attacks rebuild x by matching that
gradient with the same loss recomputed on candidates, differentiably (double backward through
the victim UNet, ``torch.func.grad`` vmapped over R restarts: one computation, no host syncs in
the loop except checkpoints).

* ``diffusion-ig``: Inverting-Gradients/DLG-style matching in pixel space. With the client's
  eps and t shared in the clear it uses them; ``joint_noise=True`` optimizes eps with the image
  (Gaussian prior on eps) and takes t from ``t`` or a search (see below): GIDM+ without the prior.
* ``gidm`` (Huang et al. 2024): phase 1 optimizes the initial noise x_T of a well-trained
  diffusion model of the domain (the prior, threat level D), whose image comes out of K
  deterministic DDIM steps with gradients through all of them; phase 2 fine-tunes the pixels
  from the phase-1 image. Needs the shared eps and t.
* ``gidm-plus``: eps and t private. t is recovered per sample by enumerating candidate
  timesteps, each with a short joint (image, eps) attack, keeping the lowest gradient distance;
  then GIDM's two phases run with eps optimized jointly (Gaussian prior term). The public code
  picks t by an argmax with no gradient; we do not.

Recovering t (``t_search``). The gradients of the time-conditioning tensors (time MLP, each
block's time projection) are outer products with the time embedding, so a wrong t cannot match
them whatever the image. By default (``search_layers="time"``) the short attacks match only
those tensors: on 16x16 faces the true t then ends near 1e-3 and every other candidate >= 0.15,
where matching all tensors for the same budget barely separated them (0.29 vs 0.31, and the
wrong t won in 1 of 3 cases). ``"embedding"`` reads the set of timesteps in use off the first
time-MLP layer's gradient in closed form (its rows span the embeddings of the t used; no
optimization); ``"relaxed"`` optimizes a continuous t, which measured worse (the sinusoidal
embedding makes the landscape in t rugged). For N > 1 images the enumeration goes image by
image (see :func:`search_t`).

Matching: ``metric="l2"`` is the squared distance divided by the target's squared norm (so the
regularizer weights do not depend on the update's scale); ``"cosine"`` is 1 - cosine similarity.
FedAvg deltas are matched through the pseudo-gradient delta / (-lr K): with shared noise the
simulated gradient averages the K local steps' losses (exact for K = 1, first order otherwise);
with private noise one (eps, t) per image stands for all steps (an approximation).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fedleak.attacks.base import Attack, AttackInputs, Reconstruction, register_attack
from fedleak.attacks.fit import FitTerms
from fedleak.attacks.optimize import OptimizationResult, optimize, total_variation
from fedleak.attacks.simulate import Tensors, gradient_distance, pseudo_gradient
from fedleak.device import chunk_size, memory_budget, restart_bytes
from fedleak.diffusion.client import parse_diffusion_loss
from fedleak.diffusion.prior import diffusion_meta, load_model
from fedleak.diffusion.schedule import NoiseSchedule, ddim_sample, diffusion_loss
from fedleak.errors import ConfigError, InsufficientKnowledgeError

METRICS = ("l2", "cosine")
LR_SCHEDULES = ("step", "cosine", "constant")
T_SEARCHES = ("embedding", "enumerate", "relaxed")
SEARCH_LAYERS = ("time", "all")

Variables = dict[str, torch.Tensor]


# ------------------------------------------------------------------------------- simulation


@dataclass
class DiffusionSetup:
    """What the attacks compare against, built once per attack (never inside the loop)."""

    target: Tensors
    weights: dict[str, float]
    schedule: NoiseSchedule
    prediction: str
    index: torch.Tensor  # (K, B) image index of each local step's samples
    shared_eps: torch.Tensor | None  # (K, B, C, H, W) when the client shared its noise
    shared_t: torch.Tensor | None  # (K, B)
    extras: dict[str, Any] = field(default_factory=dict)


def diffusion_setup(inputs: AttackInputs, metric: str, who: str) -> DiffusionSetup:
    """Target (pseudo-)gradient, noise schedule and, if shared, the client's eps and t."""
    update = inputs.update
    training = update.training
    if training is None or training.task != "diffusion":
        raise ConfigError(
            f"{who} needs a diffusion client's update (training.task='diffusion', level C); "
            f"got task {getattr(training, 'task', None)!r}."
        )
    prediction, schedule = parse_diffusion_loss(training.loss)
    target = {k: v.detach().float() for k, v in pseudo_gradient(update).items()}
    norm = sum(float(v.pow(2).sum()) for v in target.values())
    if norm == 0.0:
        raise ConfigError(f"{who}: the update is all zeros; there is nothing to invert.")
    scale = 1.0 / norm if metric == "l2" else 1.0
    n = inputs.num_images
    eps = update.shared.get("epsilon")
    t = update.shared.get("t")
    shared_eps = shared_t = None
    if eps is not None and t is not None:
        shared_eps, shared_t = eps.float(), t.long()
        if shared_eps.dim() == 4:
            shared_eps, shared_t = shared_eps[None], shared_t.reshape(1, -1)
        k, b = shared_t.shape
        if shared_eps.shape[:2] != (k, b) or tuple(shared_eps.shape[2:]) != inputs.image_shape:
            raise ConfigError(
                f"{who}: shared epsilon {tuple(eps.shape)} and t {tuple(t.shape)} do not fit "
                f"{n} images of shape {inputs.image_shape}."
            )
        dev = inputs.device
        index = (torch.arange(k, device=dev)[:, None] * b + torch.arange(b, device=dev)[None]) % n
    else:
        index = torch.arange(n, device=inputs.device)[None]
    return DiffusionSetup(
        target=target,
        weights=dict.fromkeys(target, scale),
        schedule=schedule,
        prediction=prediction,
        index=index,
        shared_eps=shared_eps,
        shared_t=shared_t,
        extras={
            "prediction": prediction,
            "noise_schedule": schedule.spec,
            "update_kind": update.kind,
            "local_steps": int(index.shape[0]),
        },
    )


class DiffusionSimulator:
    """Candidate (images, eps, t) with a leading restart dim R -> simulated gradient (R, ...).

    ``images`` (R, N, C, H, W) in [0, 1]; ``eps`` (R, K, B, C, H, W) and ``t`` (R, K, B) (int
    or float) for the K local steps whose samples are ``index`` (K, B). The loss is the mean of
    the K steps' DDPM losses; its gradient w.r.t. the matched parameters is returned.
    """

    def __init__(self, model: nn.Module, setup: DiffusionSetup) -> None:
        net = copy.deepcopy(model)
        for p in net.parameters():
            p.requires_grad_(False)
        net.eval()
        self.net = net
        all_params = dict(net.named_parameters())
        self.params: Tensors = {k: all_params[k].detach() for k in setup.target}
        self.fixed: Tensors = {k: v for k, v in all_params.items() if k not in self.params}
        self.buffers: Tensors = dict(net.named_buffers())
        schedule, prediction, index = setup.schedule, setup.prediction, setup.index

        def loss(params: Tensors, x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor):
            state = ({**params, **self.fixed}, self.buffers)

            def fwd(xt: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
                return functional_call(self.net, state, (xt, tt))

            total = 0.0
            for k in range(index.shape[0]):
                total = total + diffusion_loss(fwd, x[index[k]], t[k], eps[k], schedule, prediction)
            return total / index.shape[0]

        g = grad(loss)
        self._batched = vmap(lambda x, e, t: g(self.params, x, e, t))

    def __call__(self, images: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> Tensors:
        return self._batched(images, eps, t)


# ----------------------------------------------------------------------------------- prior


def resolve_prior(prior: Any, who: str) -> nn.Module:
    """The prior as a frozen module (a path is loaded with ``weights_only=True``)."""
    if prior is None:
        raise ConfigError(
            f"{who} needs `prior_model=`: a diffusion UNet trained on public data of the "
            "domain (fedleak.diffusion.train_prior) or the path of one (save_model)."
        )
    if isinstance(prior, str | Path):
        return load_model(prior)
    if not isinstance(prior, nn.Module):
        raise ConfigError(f"`prior_model` of {who} must be an nn.Module or a path; got {prior!r}.")
    net = copy.deepcopy(prior)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def prior_decoder(
    prior: nn.Module, setup: DiffusionSetup, steps: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """latent (R, N, C, H, W) -> images (R, N, C, H, W) by K deterministic DDIM steps."""
    meta = diffusion_meta(prior) or {}
    schedule = NoiseSchedule.from_spec(meta.get("schedule", setup.schedule))
    prediction = meta.get("prediction", setup.prediction)

    def decode(z: torch.Tensor) -> torch.Tensor:
        flat = z.reshape(-1, *z.shape[2:])
        x = ddim_sample(prior, flat, schedule, steps=steps, prediction=prediction)
        return x.reshape(z.shape)

    return decode


# ---------------------------------------------------------------------------- the objective


def gaussian_nll(v: torch.Tensor) -> torch.Tensor:
    """Per-restart Gaussian prior term 0.5 * mean(v^2): (R, ...) -> (R,)."""
    return 0.5 * v.pow(2).flatten(1).mean(1)


def relaxed_t(u: torch.Tensor, steps: int) -> torch.Tensor:
    """Continuous timestep in [0, T-1] from an unconstrained variable (sigmoid)."""
    return (steps - 1) * torch.sigmoid(u)


@dataclass
class Matcher:
    """Builds objectives over the variable sets the attacks use.

    Variables: ``images`` (R, N, C, H, W) in [0, 1] or ``latent`` (decoded by the prior);
    ``eps`` (R, N, C, H, W) when the noise is private; ``u`` (R, N) for a relaxed t. Fixed
    timesteps come as ``t`` (R, N) (private noise) or from the shared noise.
    """

    sim: DiffusionSimulator
    setup: DiffusionSetup
    metric: str
    tv: float = 0.0
    eps_prior: float = 0.0
    latent_prior: float = 0.0
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None
    ddim_steps: int = 0
    prior: nn.Module | None = None  # the decoder's UNet (its memory counts per restart)

    def restricted(self, model: nn.Module, names: Sequence[str]) -> Matcher:
        """The same matcher on a subset of the update's tensors (renormalized l2)."""
        s = self.setup
        target = {k: s.target[k] for k in names}
        norm = sum(float(v.pow(2).sum()) for v in target.values())
        scale = 1.0 / norm if self.metric == "l2" and norm > 0 else 1.0
        sub = DiffusionSetup(
            target=target, weights=dict.fromkeys(target, scale), schedule=s.schedule,
            prediction=s.prediction, index=s.index, shared_eps=s.shared_eps,
            shared_t=s.shared_t, extras=s.extras,
        )
        return Matcher(
            DiffusionSimulator(model, sub), sub, self.metric, tv=self.tv,
            eps_prior=self.eps_prior, latent_prior=self.latent_prior, decode=self.decode,
            ddim_steps=self.ddim_steps, prior=self.prior,
        )

    def images(self, v: Variables) -> torch.Tensor:
        if "latent" in v:
            assert self.decode is not None
            return self.decode(v["latent"])
        return v["images"]

    def noise(
        self, v: Variables, r: int, t: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.setup
        if "eps" not in v:
            assert s.shared_eps is not None and s.shared_t is not None
            return (
                s.shared_eps.expand(r, *s.shared_eps.shape),
                s.shared_t.expand(r, *s.shared_t.shape),
            )
        eps = v["eps"][:, None]
        if "u" in v:
            tt = relaxed_t(v["u"], s.schedule.steps)
        else:
            assert t is not None
            tt = t
        return eps, tt[:, None]

    def distance(self, v: Variables, t: torch.Tensor | None = None) -> torch.Tensor:
        x = self.images(v)
        eps, tt = self.noise(v, x.shape[0], t)
        return gradient_distance(
            self.sim(x, eps, tt), self.setup.target, metric=self.metric,
            weights=self.setup.weights,
        )

    def objective(self, t: torch.Tensor | None = None) -> Callable[[Variables], torch.Tensor]:
        """``v -> (R,)`` loss; fixed timesteps come as ``t`` or, per chunk, as ``v["t"]``."""

        def f(v: Variables) -> torch.Tensor:
            x = self.images(v)
            eps, tt = self.noise(v, x.shape[0], v.get("t", t))
            loss = gradient_distance(
                self.sim(x, eps, tt), self.setup.target, metric=self.metric,
                weights=self.setup.weights,
            )
            if self.tv:
                loss = loss + self.tv * total_variation(x)
            if self.eps_prior and "eps" in v:
                loss = loss + self.eps_prior * gaussian_nll(v["eps"])
            if self.latent_prior and "latent" in v:
                loss = loss + self.latent_prior * gaussian_nll(v["latent"])
            return loss

        return f


def clamp_images(v: Variables) -> None:
    """Keep pixel candidates in the [0, 1] box (in place, after every step)."""
    if "images" in v:
        v["images"].clamp_(0.0, 1.0)


def run(
    matcher: Matcher,
    variables: Variables,
    inputs: AttackInputs,
    *,
    iterations: int,
    lr: float,
    signed: bool,
    schedule: str,
    t: torch.Tensor | None = None,
) -> OptimizationResult:
    """One optimization phase over ``variables`` (leading dim R) with the shared Adam loop,
    the restarts in chunks that fit the memory budget (:func:`restart_chunk`)."""
    decode = (lambda v: matcher.images(v).clamp(0, 1)) if "latent" in variables else None
    key = "latent" if "latent" in variables else "images"
    r = next(iter(variables.values())).shape[0]
    return optimize(
        variables, matcher.objective(), inputs, iterations=iterations, lr=lr, signed=signed,
        schedule=schedule, project=clamp_images, image_key=key, decode=decode,
        fresh=redraw(variables, inputs.seed), who="the diffusion attack",
        chunk=restart_chunk(matcher, inputs, r, latent="latent" in variables),
        constants=None if t is None else {"t": t},
    )


def _unet_forward(model: nn.Module, x: torch.Tensor) -> Any:
    """Probe call of a diffusion model ``(x_t, t)``, for :func:`restart_bytes`."""
    return model(x, torch.zeros(x.shape[0], device=x.device))


def restart_chunk(matcher: Matcher, inputs: AttackInputs, restarts: int, latent: bool) -> int:
    """How many restarts run at once within the memory budget (ConfigError if not even one).

    One restart replays the client's K local steps (``setup.index``: every sample of every
    step) through the victim UNet, differentiated twice; from a latent it also keeps the
    prior's ``ddim_steps`` forwards for the backward. An estimate (see :func:`restart_bytes`);
    a model that cannot be probed as ``model(x, t)`` runs unchunked.
    """
    shape = inputs.image_shape
    per = restart_bytes(matcher.sim.net, shape, int(matcher.setup.index.numel()), _unet_forward)
    if latent and matcher.prior is not None and per > 0:
        per += matcher.ddim_steps * restart_bytes(
            matcher.prior, shape, inputs.num_images, _unet_forward
        )
    budget = memory_budget(inputs.device, inputs.memory_budget)
    return chunk_size(restarts, per, budget, f"restart of {inputs.num_images} image(s)")


def redraw(variables: Variables, seed: int) -> Callable[[torch.Tensor], Variables]:
    """``fresh`` for :func:`optimize` after NaN/inf: new pixels (uniform), latents and noise
    (standard normal) for the restarts ``idx``; other variables (a relaxed t) restart where
    they started. Its own generator: retries never shift the attack's random stream."""
    gen = torch.Generator().manual_seed(seed + 7919)  # cpu generator: rare retries, moved
    start = {k: v.detach().clone() for k, v in variables.items()}

    def draw(idx: torch.Tensor) -> Variables:
        out: Variables = {}
        for k, v in start.items():
            shape = (int(idx.numel()), *v.shape[1:])
            if k == "images":
                out[k] = torch.rand(shape, generator=gen, device=gen.device)
            elif k in ("latent", "eps"):
                out[k] = torch.randn(shape, generator=gen, device=gen.device)
            else:
                out[k] = v[idx.to(v.device)]
        return out

    return draw


# --------------------------------------------------------------------------------- t search


@dataclass
class TSearchResult:
    t: torch.Tensor  # (N,) recovered timesteps
    distances: list[list[float]]  # per image: best gradient distance of each candidate
    candidates: list[int]
    images: torch.Tensor | None  # (N, C, H, W) best candidate images of a search by attacks
    eps: torch.Tensor | None  # (N, C, H, W)
    iterations: int
    history: list[float]


def search_t(
    matcher: Matcher,
    inputs: AttackInputs,
    *,
    candidates: Sequence[int],
    iterations: int,
    restarts: int,
    lr: float,
    signed: bool,
    gen: torch.Generator,
    mode: str = "enumerate",
    latent: bool = False,
) -> TSearchResult:
    """Recover each image's timestep.

    ``enumerate``: one short joint (image, eps) attack per candidate timestep, all candidates
    (x ``restarts``) batched along R; the candidate with the lowest final gradient distance
    wins. For N > 1 images a first run gives every image the same candidate, then, twice over,
    each image in turn varies its own t with the others fixed at their current estimates (2N + 1
    runs). The images are an unordered set, so only the multiset of timesteps is identifiable
    here; the main attack then fills slot i with the image whose t is ``t[i]`` (score t per
    image after pairing reconstructions with originals).
    ``relaxed``: t is a continuous variable per image (sigmoid-bounded), optimized jointly with
    the image and eps from ``len(candidates) x restarts`` starting values spread over [0, T-1];
    the best restart's t is rounded.
    """
    n, shape = inputs.num_images, inputs.image_shape
    cands = torch.tensor(list(candidates), dtype=torch.long, device=inputs.device)
    c = len(cands)
    r = c * restarts
    steps = matcher.setup.schedule.steps

    def fresh() -> Variables:
        if latent:
            z = torch.randn((r, n, *shape), generator=gen, device=gen.device)
            eps = torch.randn((r, n, *shape), generator=gen, device=gen.device)
            return {"latent": z, "eps": eps}
        return {
            "images": torch.rand((r, n, *shape), generator=gen, device=gen.device),
            "eps": torch.randn((r, n, *shape), generator=gen, device=gen.device),
        }

    def images_of(v: Variables, j: int) -> torch.Tensor:
        with torch.no_grad():
            return matcher.images({k: val[j : j + 1] for k, val in v.items()})[0].clamp(0, 1)

    total_its = 0
    history: list[float] = []
    if mode == "relaxed":
        start = cands.float().clamp(0.5, steps - 1.5) / (steps - 1)
        u0 = torch.logit(start).repeat_interleave(restarts)[:, None].expand(r, n).clone()
        v = {**fresh(), "u": u0}
        res = run(matcher, v, inputs, iterations=iterations, lr=lr, signed=signed,
                  schedule="constant")
        best = int(res.best_loss.argmin())
        t_cont = relaxed_t(res.best["u"][best], steps)
        t_hat = t_cont.round().long()
        per = res.best_loss.reshape(c, restarts).min(1).values.tolist()
        return TSearchResult(
            t=t_hat, distances=[per] * n, candidates=cands.tolist(),
            images=images_of(res.best, best), eps=res.best["eps"][best],
            iterations=res.iterations, history=res.history[:, best].tolist(),
        )
    if mode != "enumerate":
        raise ConfigError(f"`t_search` must be one of {T_SEARCHES}; got {mode!r}.")
    grid_t = cands.repeat_interleave(restarts)  # (R,)
    t_est = torch.zeros(n, dtype=torch.long, device=inputs.device)
    distances: list[list[float]] = [[] for _ in range(n)]
    best_images = torch.zeros((n, *shape), device=inputs.device)
    best_eps = torch.zeros((n, *shape), device=inputs.device)
    # N > 1: all images on one candidate, then two sweeps image by image
    plan: list[int | None] = [None, *range(n), *range(n)] if n > 1 else [0]
    for who in plan:
        if who is None:
            t_grid = grid_t[:, None].expand(r, n).clone()
        else:
            t_grid = t_est[None].expand(r, n).clone()
            t_grid[:, who] = grid_t
        res = run(matcher, fresh(), inputs, iterations=iterations, lr=lr, signed=signed,
                  schedule="constant", t=t_grid)
        total_its += res.iterations
        per = res.best_loss.reshape(c, restarts)
        per_c = per.min(1).values
        k = int(per_c.argmin())
        j = k * restarts + int(per[k].argmin())
        history.extend(res.history[:, j].tolist())
        targets = range(n) if who is None else [who]
        for i in targets:
            t_est[i] = cands[k]
            distances[i] = per_c.tolist()
        best_images = images_of(res.best, j)
        best_eps = res.best["eps"][j]
    return TSearchResult(
        t=t_est, distances=distances, candidates=cands.tolist(), images=best_images,
        eps=best_eps, iterations=total_its, history=history,
    )


def embedding_residuals(
    model: nn.Module, target: Tensors, candidates: Sequence[int], max_rank: int
) -> tuple[torch.Tensor, int]:
    """How far each candidate timestep's embedding lies from the update's time-input row space.

    The gradient of the first time-MLP layer W (out x d) is sum_i u_i e(t_i)^T: its rows span
    exactly the embeddings e(t_i) of the timesteps used. For each candidate we return the
    distance of the unit vector e(t) from that span (0 for a timestep in use, ~0.5-1 otherwise)
    and the span's rank (the number of distinct timesteps, at most ``max_rank``).
    """
    name = getattr(model, "time_input", None)
    features = getattr(model, "time_features", None)
    if name is None or features is None or name not in target:
        raise ConfigError(
            "t_search='embedding' needs a model with `time_input` and `time_features` (fedleak's "
            "UNet) whose time-input weight is in the update; use t_search='enumerate'."
        )
    g = target[name].double()
    _, sv, vh = torch.linalg.svd(g, full_matrices=False)
    rank = int((sv > 1e-6 * sv[0]).sum()) if sv[0] > 0 else 0
    rank = max(1, min(rank, max_rank, vh.shape[0] - 1))
    basis = vh[:rank]
    with torch.no_grad():
        e = features(torch.tensor(list(candidates), dtype=torch.float32, device=g.device)).double()
    e = e / e.norm(dim=1, keepdim=True).clamp_min(1e-12)
    resid = (e - (e @ basis.T) @ basis).norm(dim=1)
    return resid.float(), rank


def time_tensors(names: Sequence[str]) -> list[str]:
    """The update tensors of the time conditioning (time MLP, per-block time projections).

    Their gradients are outer products with the time embedding, so they are where a wrong t
    shows: a short attack matching only them separates candidate timesteps sharply.
    """
    return [k for k in names if "time" in k or "temb" in k]


def t_accuracy(reconstruction: Reconstruction, images: torch.Tensor, t: torch.Tensor) -> float:
    """Fraction of images whose timestep the attack recovered (scoring only, after the attack).

    Reconstructions are an unordered set: each is paired with its best-matching original
    (Hungarian, SSIM) and its recovered ``extras["t"]`` compared with that original's true t.
    """
    from fedleak.metrics import match

    found = reconstruction.extras.get("t")
    if found is None:
        raise ConfigError("t_accuracy: the reconstruction reports no timesteps (extras['t']).")
    found_t = torch.as_tensor(found).reshape(-1)
    true_t = torch.as_tensor(t).reshape(-1)
    if found_t.numel() != reconstruction.images.shape[0] or true_t.numel() != images.shape[0]:
        raise ConfigError("t_accuracy: one timestep per reconstruction and per original, please.")
    rec_idx, orig_idx = match(reconstruction.images, images)
    return float((found_t[rec_idx] == true_t[orig_idx]).float().mean())


# ----------------------------------------------------------------------------- shared parts


def _freeze_t_options(attack: Any) -> None:
    """``t`` and ``t_candidates`` as ints/tuples (so the frozen attack stays hashable)."""
    for key in ("t", "t_candidates"):
        v = getattr(attack, key)
        if v is None or isinstance(v, int):
            continue
        try:
            items = tuple(int(i) for i in (v.reshape(-1).tolist() if torch.is_tensor(v) else v))
        except (TypeError, ValueError):
            raise ConfigError(
                f"`{key}` of attack {attack.name!r} must be None, an int or a list of ints; "
                f"got {v!r}."
            ) from None
        object.__setattr__(attack, key, items)


def _check(name: str, **values: Any) -> None:
    caller = f"attack {name!r}"
    for key, v in values.items():
        if key.startswith("n:"):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"`{key[2:]}` of {caller} must be an int >= 1; got {v!r}.")
        elif key.startswith("n0:"):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"`{key[3:]}` of {caller} must be an int >= 0; got {v!r}.")
        elif key.startswith("p:"):
            if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
                raise ConfigError(f"`{key[2:]}` of {caller} must be a number > 0; got {v!r}.")
        elif key.startswith("w:") and (
            isinstance(v, bool) or not isinstance(v, int | float) or v < 0
        ):
            raise ConfigError(f"`{key[2:]}` of {caller} must be a number >= 0; got {v!r}.")
    choices = {
        "metric": METRICS, "schedule": LR_SCHEDULES, "t_search": T_SEARCHES,
        "search_layers": SEARCH_LAYERS,
    }
    for key, allowed in choices.items():
        if key in values and values[key] not in allowed:
            raise ConfigError(
                f"`{key}` of {caller} must be one of {', '.join(map(repr, allowed))}; "
                f"got {values[key]!r}."
            )


def _fixed_t(t: Any, n: int, steps: int, who: str,
             device: torch.device | None = None) -> torch.Tensor | None:
    """The ``t`` option as (N,) timesteps on ``device`` (an int for all images, or one each)."""
    if t is None:
        return None
    tt = torch.as_tensor(t).long().reshape(-1)
    if tt.numel() == 1:
        tt = tt.expand(n).clone()
    if tt.numel() != n or int(tt.min()) < 0 or int(tt.max()) >= steps:
        raise ConfigError(
            f"`t` of {who} must be one int or {n} ints in [0, {steps - 1}]; got {t!r}."
        )
    return tt.to(device)


def _candidates(spec: Any, steps: int, who: str) -> list[int]:
    if spec is None:
        return list(range(steps))
    cands = sorted({int(c) for c in spec})
    if not cands or cands[0] < 0 or cands[-1] >= steps:
        raise ConfigError(
            f"`t_candidates` of {who} must be ints in [0, {steps - 1}]; got {spec!r}."
        )
    return cands


def _pick(res: OptimizationResult) -> int:
    losses = res.best_loss
    finite = torch.where(torch.isfinite(losses), losses, torch.full_like(losses, float("inf")))
    return int(finite.argmin())


def _package(
    attack: Attack,
    inputs: AttackInputs,
    images: torch.Tensor,
    history: list[float],
    restart_losses: list[float],
    best: int,
    iterations: int,
    start: float,
    extras: dict[str, Any],
    restart_images: torch.Tensor | None = None,
) -> Reconstruction:
    return Reconstruction(
        images=images.clamp(0, 1).detach().clone(),
        labels=None,
        attack=attack.name,
        threat_level=inputs.threat.level,
        loss_history=history,
        restart_losses=restart_losses,
        restart_images=None if restart_images is None else restart_images.clamp(0, 1).detach(),
        best_restart=best,
        iterations=iterations,
        seconds=time.perf_counter() - start,
        label_method="none",
        extras=extras,
    )


def _shared_t_list(setup: DiffusionSetup) -> list[Any]:
    """The shared timesteps: one per image (FedSGD) or per local step and sample (FedAvg)."""
    assert setup.shared_t is not None
    return setup.shared_t[0].tolist() if setup.shared_t.shape[0] == 1 else setup.shared_t.tolist()


def _need_shared(setup: DiffusionSetup, who: str, alternative: str) -> None:
    if setup.shared_eps is None:
        raise InsufficientKnowledgeError(
            f"{who} needs the client's noise epsilon and timesteps t, but the update keeps them "
            f"private (update.shared is empty); use {alternative}."
        )


def _search_and_t(
    attack: Any,
    matcher: Matcher,
    inputs: AttackInputs,
    gen: torch.Generator,
    who: str,
    latent: bool = False,
) -> tuple[torch.Tensor, TSearchResult | None]:
    """(t (N,), search result or None): the ``t`` option if given, else a t search."""
    steps = matcher.setup.schedule.steps
    n = inputs.num_images
    fixed = _fixed_t(attack.t, n, steps, who, inputs.device)
    if fixed is not None:
        return fixed, None
    cands = _candidates(attack.t_candidates, steps, who)
    mode = attack.t_search
    resid = None
    if mode == "embedding":
        resid, rank = embedding_residuals(
            inputs.model, matcher.setup.target, cands, n * matcher.setup.index.shape[0]
        )
        order = resid.argsort().tolist()
        short = sorted(cands[i] for i in order[:rank])
        if len(short) == 1 or n == 1:
            t = torch.full((n,), short[0] if len(short) == 1 else cands[order[0]],
                           device=inputs.device)
            found = TSearchResult(
                t=t, distances=[resid.tolist()] * n, candidates=cands, images=None, eps=None,
                iterations=0, history=[],
            )
            return t, found
        cands, mode = short, "enumerate"  # which image has which of the timesteps in use
    names = list(matcher.setup.target)
    if attack.search_layers == "time":
        chosen = time_tensors(names)
        if not chosen:
            raise ConfigError(
                f"`search_layers='time'` of {who}: the update has no time-conditioning tensors "
                "(names with 'time' or 'temb'); use search_layers='all'."
            )
        search_matcher = matcher.restricted(inputs.model, chosen)
    else:
        search_matcher = matcher
    found = search_t(
        search_matcher, inputs, candidates=cands,
        iterations=attack.search_iterations, restarts=attack.search_restarts,
        lr=attack.phase1_lr if latent else attack.lr, signed=attack.signed, gen=gen,
        mode=mode, latent=latent,
    )
    if search_matcher is not matcher:  # images that matched only the time tensors: no warm start
        found.images = found.eps = None
    if resid is not None:
        found.distances = [resid.tolist()] * n
        found.candidates = _candidates(attack.t_candidates, steps, who)
    return found.t, found


def _search_extras(t: torch.Tensor, found: TSearchResult | None) -> dict[str, Any]:
    out: dict[str, Any] = {"t": t.tolist(), "t_source": "option" if found is None else "search"}
    if found is not None:
        out["t_distances"] = found.distances
        out["t_candidates"] = found.candidates
        out["search_iterations"] = found.iterations
    return out


# ---------------------------------------------------------------------------------- attacks


@register_attack("diffusion-ig")
@dataclass(frozen=True)
class DiffusionIG(Attack):
    """Pixel-space gradient matching for diffusion updates (DLG / Inverting-Gradients style).

    Knowledge: architecture and training details (level C: the loss, schedule, number of
    images). With shared eps and t (``update.shared``) they are used as given; private noise
    needs ``joint_noise=True``: eps is optimized with the image (``eps_prior`` x Gaussian NLL)
    and t comes from the ``t`` option or a per-image search (``t_search``), which is GIDM+
    without the prior (the no-prior baseline).

    Options:
        iterations, restarts, lr, signed, schedule: the Adam loop (R restarts batched; the
            lowest attack loss wins).
        metric: "l2" (relative squared distance) or "cosine".
        tv: total-variation weight.
        joint_noise: optimize the private noise eps with the image (needed without shared eps).
        eps_prior: weight of the Gaussian NLL that keeps the optimized eps typical.
        t: the timesteps (one int, or one per image) instead of a search.
        t_candidates: the timesteps the search tries (default all T).
        search_iterations, search_restarts: the size of each short search attack.
        t_search: "enumerate" (default: one short attack per candidate in ``t_candidates``,
            default all T, ``search_iterations`` x ``search_restarts`` each, all batched),
            "embedding" (closed form) or "relaxed" (continuous t); see the module docstring.
        search_layers: "time" (the short attacks match the time-conditioning tensors only,
            default) or "all". The search's iterations are extra to ``iterations``; with
            ``search_layers="all"`` the main run continues from the search's best candidate.
    Extras: ``t`` (used or recovered, one per image), ``t_distances``, ``eps`` (if optimized).
    """

    iterations: int = 600
    restarts: int = 1
    lr: float = 0.05
    signed: bool = False
    schedule: str = "step"
    metric: str = "l2"
    tv: float = 0.0
    joint_noise: bool = False
    eps_prior: float = 1e-3
    t: Any = None
    t_candidates: Sequence[int] | None = None
    t_search: str = "enumerate"
    search_iterations: int = 80
    search_restarts: int = 1
    search_layers: str = "time"

    requires = frozenset({"architecture", "training_details"})
    uses_labels = False

    def __post_init__(self) -> None:
        _check(
            self.name, metric=self.metric, schedule=self.schedule, t_search=self.t_search,
            search_layers=self.search_layers,
            **{"n:iterations": self.iterations, "n:restarts": self.restarts, "p:lr": self.lr,
               "w:tv": self.tv, "w:eps_prior": self.eps_prior,
               "n:search_iterations": self.search_iterations,
               "n:search_restarts": self.search_restarts},
        )
        _freeze_t_options(self)

    def _matcher(self, inputs: AttackInputs, who: str) -> tuple[DiffusionSetup, Matcher]:
        """The objective (shared by reconstruct and objective_at): target, simulator, terms."""
        setup = diffusion_setup(inputs, self.metric, who)
        if self.joint_noise:
            setup.shared_eps = setup.shared_t = None  # eps is a variable: one per image
            setup.index = torch.arange(inputs.num_images, device=inputs.device)[None]
        else:
            _need_shared(setup, who, "joint_noise=True or attack 'gidm-plus'")
        sim = DiffusionSimulator(inputs.model, setup)
        return setup, Matcher(sim, setup, self.metric, tv=self.tv, eps_prior=self.eps_prior)

    def objective_at(
        self, inputs: AttackInputs, images: torch.Tensor, labels: torch.Tensor | None
    ) -> FitTerms:
        """Gradient distance (+ tv, + eps prior) at ``images``; with private noise at the eps
        and t of the attack's last run (see :func:`fit_terms`)."""
        _, matcher = self._matcher(inputs, f"attack {self.name!r}")
        return fit_terms(self, inputs, matcher, images, private=self.joint_noise)

    def reconstruct(self, inputs: AttackInputs) -> Reconstruction:
        """Match the diffusion-loss gradient in pixel space (eps jointly if private)."""
        who = f"attack {self.name!r}"
        start = time.perf_counter()
        setup, matcher = self._matcher(inputs, who)
        gen = inputs.generator()
        r, n, shape = self.restarts, inputs.num_images, inputs.image_shape
        extras: dict[str, Any] = {**setup.extras, "joint_noise": self.joint_noise}
        t_rep = None
        done = 0
        history: list[float] = []
        if not self.joint_noise:
            v0: Variables = {
                "images": torch.rand((r, n, *shape), generator=gen, device=gen.device)
            }
            extras["t"] = _shared_t_list(setup)
        else:
            t, found = _search_and_t(self, matcher, inputs, gen, who)
            extras.update(_search_extras(t, found))
            v0 = {
                "images": torch.rand((r, n, *shape), generator=gen, device=gen.device),
                "eps": torch.randn((r, n, *shape), generator=gen, device=gen.device),
            }
            if found is not None and found.images is not None:  # continue from the search
                v0["images"][0], v0["eps"][0] = found.images, found.eps
                done, history = found.iterations, list(found.history)
            t_rep = t[None].expand(r, n)
        res = run(matcher, v0, inputs, iterations=self.iterations, lr=self.lr,
                  signed=self.signed, schedule=self.schedule, t=t_rep)
        best = _pick(res)
        if "eps" in res.best:
            extras["eps"] = res.best["eps"][best].detach().clone()
            _remember(self, res.best["images"][best], extras["eps"], t)
        extras["retried"] = res.retried
        if res.chunk:  # restarts per forward, when the memory budget split them
            extras["restart_chunk"] = res.chunk
        return _package(
            self, inputs, res.best["images"][best], history + res.history[:, best].tolist(),
            res.best_loss.tolist(), best, done + res.iterations, start, extras,
            res.best["images"],
        )


@dataclass(frozen=True)
class _GIDMBase(Attack):
    """Options and the two phases GIDM and GIDM+ share."""

    prior_model: Any = None
    ddim_steps: int | None = 8
    phase1_iterations: int = 200
    phase2_iterations: int = 400
    restarts: int = 8
    lr: float = 0.05
    phase1_lr: float = 0.05
    signed: bool = False
    schedule: str = "step"
    metric: str = "l2"
    tv: float = 0.0
    latent_prior: float = 1e-3

    requires = frozenset({"architecture", "training_details", "surrogate_data"})
    uses_labels = False

    def _check_base(self, **more: Any) -> None:
        if self.ddim_steps is not None:
            more["n:ddim_steps"] = self.ddim_steps
        _check(
            self.name, metric=self.metric, schedule=self.schedule,
            **{"n:phase1_iterations": self.phase1_iterations,
               "n0:phase2_iterations": self.phase2_iterations, "n:restarts": self.restarts,
               "p:lr": self.lr, "p:phase1_lr": self.phase1_lr, "w:tv": self.tv,
               "w:latent_prior": self.latent_prior},
            **more,
        )

    def _use_prior(self, setup: DiffusionSetup, matcher: Matcher, who: str) -> int:
        """Load the prior and plug its DDIM generator into ``matcher``; returns K."""
        if matcher.decode is not None:
            return matcher.ddim_steps
        prior = resolve_prior(self.prior_model, who)
        meta = diffusion_meta(prior) or {}
        prior_steps = NoiseSchedule.from_spec(meta.get("schedule", setup.schedule)).steps
        k = min(self.ddim_steps or prior_steps, prior_steps)
        matcher.decode = prior_decoder(prior, setup, k)
        matcher.prior = prior
        matcher.latent_prior = self.latent_prior
        matcher.ddim_steps = k
        return k

    def _phases(
        self,
        inputs: AttackInputs,
        setup: DiffusionSetup,
        matcher: Matcher,
        gen: torch.Generator,
        who: str,
        t: torch.Tensor | None,
        eps0: torch.Tensor | None,
    ) -> tuple[OptimizationResult, OptimizationResult | None, torch.Tensor, dict[str, Any]]:
        """Phase 1 on the prior's latent, then phase 2 on pixels (eps jointly if private)."""
        k = self._use_prior(setup, matcher, who)
        r, n, shape = self.restarts, inputs.num_images, inputs.image_shape
        v1: Variables = {"latent": torch.randn((r, n, *shape), generator=gen, device=gen.device)}
        private = t is not None
        if private:
            eps_init = torch.randn((r, n, *shape), generator=gen, device=gen.device)
            if eps0 is not None:
                eps_init[:] = eps0
            v1["eps"] = eps_init
        t_rep = t[None].expand(r, n) if t is not None else None
        res1 = run(matcher, v1, inputs, iterations=self.phase1_iterations, lr=self.phase1_lr,
                   signed=self.signed, schedule=self.schedule, t=t_rep)
        with torch.no_grad():
            phase1 = matcher.images(res1.best).detach()  # (R, N, C, H, W)
        best1 = _pick(res1)
        extras: dict[str, Any] = {
            "phase1_images": phase1[best1].clamp(0, 1).clone(),
            "phase1_loss": float(res1.best_loss[best1]),
            "phase1_iterations": res1.iterations,
            "ddim_steps": k,
        }
        extras["retried"] = res1.retried
        if res1.chunk:  # restarts per forward, when the memory budget split them
            extras["restart_chunk"] = res1.chunk
        extras["restart_images"] = phase1
        if private and self.phase2_iterations == 0:
            extras["eps"] = res1.best["eps"][best1].detach().clone()
        if self.phase2_iterations == 0:
            return res1, None, phase1[best1], extras
        v2: Variables = {"images": phase1.clamp(0, 1)}
        if private:
            v2["eps"] = res1.best["eps"]
        res2 = run(matcher, v2, inputs, iterations=self.phase2_iterations, lr=self.lr,
                   signed=self.signed, schedule=self.schedule, t=t_rep)
        best2 = _pick(res2)
        if private:
            extras["eps"] = res2.best["eps"][best2].detach().clone()
        extras["retried"] += res2.retried
        if res2.chunk:  # restarts per forward, when the memory budget split them
            extras["restart_chunk"] = res2.chunk
        extras["restart_images"] = res2.best["images"]
        return res1, res2, res2.best["images"][best2], extras

    def _finish(
        self,
        inputs: AttackInputs,
        res1: OptimizationResult,
        res2: OptimizationResult | None,
        images: torch.Tensor,
        start: float,
        extras: dict[str, Any],
        pre: tuple[int, list[float]] = (0, []),
    ) -> Reconstruction:
        last = res2 or res1
        best = _pick(last)
        history = pre[1] + res1.history[:, _pick(res1)].tolist()
        if res2 is not None:
            history += res2.history[:, best].tolist()
        its = pre[0] + res1.iterations + (res2.iterations if res2 else 0)
        restart_images = extras.pop("restart_images", None)
        return _package(
            self, inputs, images, history, last.best_loss.tolist(), best, its, start, extras,
            restart_images,
        )

    def _fit_note(self) -> str:
        if self.phase2_iterations == 0:
            return (
                "evaluated the pixel objective (gradient distance + tv); the attack minimized it "
                "over the prior's latent only (phase 2 off)"
            )
        return "evaluated the phase-2 (pixel) objective: gradient distance + tv"


@register_attack("gidm")
@dataclass(frozen=True)
class GIDM(_GIDMBase):
    """GIDM (Huang et al. 2024): invert through a trained diffusion prior, then fine-tune pixels.

    Knowledge: architecture, training details (level C) and surrogate data (level D): the
    prior model, trained on public data of the domain, is passed as ``prior_model`` (a UNet or
    the path of one saved with ``fedleak.diffusion.save_model``). Needs the shared eps and t.

    Options:
        prior_model: the prior. ddim_steps: K deterministic DDIM steps (default 8, at most the
            prior's T; None: all T).
        phase1_iterations, phase1_lr: Adam on the initial noise x_T (``latent_prior`` x
            Gaussian NLL keeps it typical); phase2_iterations, lr: Adam on the pixels, started
            from the phase-1 image (0 disables phase 2).
        restarts, signed, schedule, metric, tv: as in "diffusion-ig".
        latent_prior: weight of the Gaussian NLL that keeps the initial noise x_T typical.
    Extras: ``phase1_images`` (N, C, H, W), ``t`` (the shared timesteps).
    """

    def __post_init__(self) -> None:
        self._check_base()

    def _matcher(self, inputs: AttackInputs, who: str) -> tuple[DiffusionSetup, Matcher]:
        """The objective (shared by reconstruct and objective_at), without the prior yet."""
        setup = diffusion_setup(inputs, self.metric, who)
        _need_shared(setup, who, "attack 'gidm-plus'")
        sim = DiffusionSimulator(inputs.model, setup)
        return setup, Matcher(sim, setup, self.metric, tv=self.tv)

    def objective_at(
        self, inputs: AttackInputs, images: torch.Tensor, labels: torch.Tensor | None
    ) -> FitTerms:
        """The phase-2 (pixel) objective at ``images``: gradient distance + tv."""
        _, matcher = self._matcher(inputs, f"attack {self.name!r}")
        return fit_terms(self, inputs, matcher, images, private=False, note=self._fit_note())

    def reconstruct(self, inputs: AttackInputs) -> Reconstruction:
        """Phase 1 through the prior, phase 2 on pixels, shared eps and t."""
        who = f"attack {self.name!r}"
        start = time.perf_counter()
        setup, matcher = self._matcher(inputs, who)
        gen = inputs.generator()
        res1, res2, images, extras = self._phases(inputs, setup, matcher, gen, who, None, None)
        extras = {
            **setup.extras, **extras,
            "t": _shared_t_list(setup),
        }
        return self._finish(inputs, res1, res2, images, start, extras)


@register_attack("gidm-plus")
@dataclass(frozen=True)
class GIDMPlus(_GIDMBase):
    """GIDM+: the client's eps and t are private; recover t, then GIDM with eps optimized too.

    Knowledge as "gidm" (levels C and D, ``prior_model``); needs nothing from
    ``update.shared`` (and ignores it). t is recovered per image (``t_search``, options as in
    "diffusion-ig"): "enumerate" (default) runs a short joint (image, eps) attack per candidate
    timestep on the time-conditioning tensors and keeps the lowest gradient distance;
    "embedding" reads it in closed form; "relaxed" optimizes a continuous t. ``t=`` skips the
    search. eps is optimized in both phases with an ``eps_prior`` x Gaussian NLL term (from the
    search's estimate when the search matched all tensors, else from N(0, I));
    ``search_prior=True`` runs the short attacks through the prior's generator too.
    Defaults (8 restarts, K = 8 DDIM steps, 200 + 400 iterations) are those measured in
    ``benchmarks/diffusion_attacks.py``.

    Options:
        search_prior: run the timestep search's short attacks through the prior's generator.

    Extras: ``t`` (recovered, one per image), ``t_distances`` (per image, per candidate),
    ``phase1_images``, ``eps``.
    """

    eps_prior: float = 1e-3
    t: Any = None
    t_candidates: Sequence[int] | None = None
    t_search: str = "enumerate"
    search_iterations: int = 80
    search_restarts: int = 1
    search_layers: str = "time"
    search_prior: bool = False

    def __post_init__(self) -> None:
        self._check_base(
            t_search=self.t_search, search_layers=self.search_layers,
            **{"w:eps_prior": self.eps_prior, "n:search_iterations": self.search_iterations,
               "n:search_restarts": self.search_restarts},
        )
        _freeze_t_options(self)

    def _matcher(self, inputs: AttackInputs, who: str) -> tuple[DiffusionSetup, Matcher]:
        """The objective (shared by reconstruct and objective_at), without the prior yet."""
        setup = diffusion_setup(inputs, self.metric, who)
        # private noise: whatever the client shared is ignored
        setup.shared_eps = setup.shared_t = None
        setup.index = torch.arange(inputs.num_images, device=inputs.device)[None]
        matcher = Matcher(
            DiffusionSimulator(inputs.model, setup), setup, self.metric, tv=self.tv,
            eps_prior=self.eps_prior,
        )
        return setup, matcher

    def objective_at(
        self, inputs: AttackInputs, images: torch.Tensor, labels: torch.Tensor | None
    ) -> FitTerms:
        """The phase-2 (pixel) objective at ``images`` with the eps and t of the attack's last
        run (the private noise is the attack's estimate, not the client's)."""
        _, matcher = self._matcher(inputs, f"attack {self.name!r}")
        return fit_terms(self, inputs, matcher, images, private=True, note=self._fit_note())

    def reconstruct(self, inputs: AttackInputs) -> Reconstruction:
        """Search t, then the two GIDM phases with eps as a variable."""
        who = f"attack {self.name!r}"
        start = time.perf_counter()
        setup, matcher = self._matcher(inputs, who)
        gen = inputs.generator()
        if self.search_prior:
            self._use_prior(setup, matcher, who)
        t, found = _search_and_t(self, matcher, inputs, gen, who, latent=self.search_prior)
        eps0 = found.eps if found is not None else None
        res1, res2, images, extras = self._phases(inputs, setup, matcher, gen, who, t, eps0)
        _remember(self, images, extras.get("eps", eps0), t)
        extras = {**setup.extras, **extras, **_search_extras(t, found)}
        pre = (found.iterations, list(found.history)) if found is not None else (0, [])
        return self._finish(inputs, res1, res2, images, start, extras, pre)


def _remember(
    attack: Attack, images: torch.Tensor, eps: torch.Tensor | None, t: torch.Tensor
) -> None:
    """Keep the last run's private (eps, t) for :func:`fit_terms` (a frozen attack's private
    attribute, not a hyperparameter: it takes no part in equality or hashing)."""
    if eps is not None:
        state = (images.detach().clone(), eps.detach().clone(), t.detach().clone())
        object.__setattr__(attack, "_fit_state", state)


def fit_terms(
    attack: Attack,
    inputs: AttackInputs,
    matcher: Matcher,
    images: torch.Tensor,
    *,
    private: bool,
    note: str = "",
) -> FitTerms:
    """:meth:`Attack.objective_at` of the diffusion attacks: the matcher's objective and its
    (normalized) gradient distance at ``images``, R=1.

    Private noise: the objective depends on each image's eps and t, which the attack estimated
    alongside the images. They are taken from the attack's last run, and ``images`` are paired
    with that run's images (Hungarian, SSIM) so each is evaluated with the eps/t of its slot:
    at the truth this measures the truth under the attack's noise estimate, not the client's.
    """
    n, shape = inputs.num_images, inputs.image_shape
    x = images.detach().reshape(n, *shape).to(torch.get_default_dtype())
    v: Variables = {"images": x[None]}
    t_rep = None
    if private:
        state = getattr(attack, "_fit_state", None)
        if state is None:
            raise ConfigError(
                f"the objective of attack {attack.name!r} with private noise is evaluated at "
                "the eps and t of its last run: call reconstruct first."
            )
        from fedleak.metrics import match

        rec_images, eps, t = state
        rec_idx, orig_idx = match(rec_images.clamp(0, 1), x.clamp(0, 1))
        slots = x.clone()
        slots[rec_idx] = x[orig_idx]
        v = {"images": slots[None], "eps": eps.reshape(1, n, *shape)}
        t_rep = t.reshape(1, n)
        extra = "with the eps and t the attack estimated (paired by SSIM)"
        note = f"{note}; {extra}" if note else extra
    with torch.no_grad():
        obj = matcher.objective(t_rep)(v)
        dist = matcher.distance(v, t_rep)
    return FitTerms(objective=float(obj[0]), residual=float(dist[0]), note=note)
