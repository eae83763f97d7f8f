"""Generative-prior inversion of a classifier's update (GGL/GIAS-style, with a diffusion prior).

Why: pixel-space matching (Inverting Gradients) rebuilds one image well, but at batch 4+ the
update no longer pins every pixel and TV alone gives blobs. A generator trained on public images
of the domain (threat level D: never the attacked images) restricts the search to images that
look like the domain. fedleak already trains such generators for GIDM: a DDPM UNet whose
deterministic DDIM sampler maps an initial noise x_T to an image, differentiably.

Two phases (as GIDM does for diffusion victims, here for classifiers):

1. optimize the sampler's starting noise x_T (R restarts x N images) through K DDIM steps so
   that the generated images' simulated update matches the observed one (1 - cosine, Inverting
   Gradients' metric), plus ``latent_prior`` x Gaussian NLL of x_T (keeps it typical) and TV;
2. refine the pixels from the phase-1 images with the same objective (Inverting Gradients'
   signed Adam in the [0, 1] box): the prior gives a face-shaped start, the update then fixes
   what the prior cannot know (this person's details).

The restart with the lowest phase-2 attack loss wins (never the ground truth). Knowledge:
architecture, training details (level C) and surrogate data (level D) for the prior, which is
passed as ``prior_model`` (a UNet, or the path of one saved with
``fedleak.diffusion.save_model``); labels are granted or recovered by the front door.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from fedleak.attacks.base import Attack, AttackInputs, Reconstruction, register_attack
from fedleak.attacks.diffusion import gaussian_nll, resolve_prior
from fedleak.attacks.fit import FitTerms
from fedleak.attacks.inverting import (
    LayerSpec,
    attack_labels,
    check_common,
    clamp_images,
    finish,
    matching_setup,
    normalize_layers,
)
from fedleak.attacks.optimize import optimize, total_variation
from fedleak.attacks.simulate import gradient_distance
from fedleak.diffusion.prior import diffusion_meta
from fedleak.diffusion.schedule import NoiseSchedule, ddim_sample
from fedleak.errors import ConfigError


def prior_generator(
    prior: torch.nn.Module, steps: int | None, size: tuple[int, int]
) -> tuple[Any, int]:
    """x_T (R, N, C, h, w) -> images (R, N, C, H, W) by K DDIM steps of ``prior``; and K.

    A prior trained at a lower resolution (cheaper to train and to run: every attack step
    back-propagates through K UNet calls) is upsampled bilinearly to the clients' ``size``;
    phase 2 then adds the detail at full resolution.
    """
    meta = diffusion_meta(prior) or {}
    schedule = NoiseSchedule.from_spec(meta.get("schedule", "cosine:16"))
    prediction = meta.get("prediction", "v")
    k = min(steps or schedule.steps, schedule.steps)

    def generate(z: torch.Tensor) -> torch.Tensor:
        flat = z.reshape(-1, *z.shape[2:])
        x = ddim_sample(prior, flat, schedule, steps=k, prediction=prediction)
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x.reshape(*z.shape[:2], *x.shape[1:])

    return generate, k


def check_prior_shape(
    prior: torch.nn.Module, shape: tuple[int, ...], who: str
) -> tuple[int, int]:
    """The prior's (channels, size); a ConfigError unless it can make the clients' images
    (as many channels, at most as large: a smaller prior is upsampled)."""
    cfg = getattr(prior, "config", None)
    size = getattr(cfg, "image_size", shape[1])
    channels = getattr(cfg, "in_channels", shape[0])
    if channels != shape[0] or size > min(shape[1:]):
        raise ConfigError(
            f"`prior_model` of {who} makes {channels}x{size}x{size} images; the clients' are "
            f"{'x'.join(map(str, shape))}: train the prior on public images with as many "
            "channels, at most as large."
        )
    return channels, size


@register_attack("generative-prior")
@dataclass(frozen=True)
class GenerativePrior(Attack):
    """Invert a classifier's update through a diffusion prior's DDIM generator, then refine.

    Options:
        prior_model: the prior (UNet trained on public images of the domain, or its path).
        ddim_steps: K deterministic DDIM steps of the generator (fewer: cheaper, coarser).
        phase1_iterations, phase1_lr: Adam on the starting noise x_T.
        latent_prior: weight of the Gaussian NLL of x_T in phase 1.
        iterations, lr: signed Adam on the pixels in phase 2, Inverting Gradients' settings
            (step decay; 0 iterations: phase 1 only). Measured on the flatten head, batch 4:
            300 it at lr 0.01 17.5 dB, 600 at 0.05 17.7, 1,000 at 0.1 20.5 (docs/attacks.md).
        restarts: R starting noises per image, run batched.
        tv: total-variation weight (both phases).
        layers, layer_weights, fedavg: as in "inverting-gradients".
    Extras: ``phase1_images`` (N, C, H, W) of the winning restart, ``phase1_loss``.
    """

    prior_model: Any = None
    ddim_steps: int | None = 4
    phase1_iterations: int = 150
    phase1_lr: float = 0.05
    latent_prior: float = 1e-3
    iterations: int = 1000
    lr: float = 0.1
    restarts: int = 2
    tv: float = 1e-2
    layers: LayerSpec = None
    layer_weights: str = "equal"
    fedavg: str = "replay"

    requires = frozenset({"architecture", "training_details", "surrogate_data"})

    def __post_init__(self) -> None:
        who = f"attack {self.name!r}"
        check_common(
            self.name, iterations=self.phase1_iterations, restarts=self.restarts,
            lr=self.phase1_lr, fedavg=self.fedavg, layer_weights=self.layer_weights,
            **{"w:tv": self.tv, "w:latent_prior": self.latent_prior},
        )
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or (
            self.iterations < 0
        ):
            raise ConfigError(
                f"`iterations` of {who} must be an int >= 0; got {self.iterations!r}."
            )
        if not (isinstance(self.lr, int | float) and self.lr > 0):
            raise ConfigError(f"`lr` of {who} must be a number > 0; got {self.lr!r}.")
        k = self.ddim_steps
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ConfigError(f"`ddim_steps` of {who} must be None or an int >= 1; got {k!r}.")
        object.__setattr__(self, "layers", normalize_layers(self.layers, who))

    def _objective(self, inputs: AttackInputs, restarts: int) -> tuple[Any, torch.Tensor, dict]:
        """The phase-2 objective (R,) on images (R, N, C, H, W), the labels and setup extras."""
        y = attack_labels(inputs, restarts, f"attack {self.name!r}")
        setup = matching_setup(
            inputs, fedavg=self.fedavg, layers=self.layers, scheme=self.layer_weights
        )
        sim, target, weights, tv = setup.simulator, setup.target, setup.weights, self.tv

        def objective(x: torch.Tensor) -> torch.Tensor:
            loss = gradient_distance(sim(x, y), target, metric="cosine", weights=weights)
            return loss + tv * total_variation(x) if tv else loss

        return objective, y, setup.extras

    def reconstruct(self, inputs: AttackInputs) -> Reconstruction:
        """Phase 1 on the prior's starting noise, phase 2 on the pixels."""
        start = time.perf_counter()
        prior = resolve_prior(self.prior_model, f"attack {self.name!r}")
        r, n, shape = self.restarts, inputs.num_images, inputs.image_shape
        channels, size = check_prior_shape(prior, shape, f"attack {self.name!r}")
        generate, k = prior_generator(prior, self.ddim_steps, tuple(shape[1:]))
        objective, y, extras = self._objective(inputs, r)
        gen = inputs.generator()
        z0 = torch.randn((r, n, channels, size, size), generator=gen, device=gen.device)
        lp = self.latent_prior

        def phase1(v: dict[str, torch.Tensor]) -> torch.Tensor:
            return objective(generate(v["latent"])) + lp * gaussian_nll(v["latent"])

        res1 = optimize(
            {"latent": z0}, phase1, inputs, iterations=self.phase1_iterations,
            lr=self.phase1_lr, schedule="cosine", decode=lambda v: generate(v["latent"]),
        )
        with torch.no_grad():
            images1 = generate(res1.best["latent"]).clamp(0, 1)  # (R, N, C, H, W)
        best1 = int(torch.nan_to_num(res1.best_loss, nan=float("inf")).argmin())
        extras = {
            **extras, "restarts": r, "tv": self.tv, "ddim_steps": k,
            "phase1_images": images1[best1].clone(), "phase1_loss": float(res1.best_loss[best1]),
            "phase1_iterations": res1.iterations,
        }
        if self.iterations == 0:
            res1.best = {"images": images1}
            return finish(self, inputs, res1, y, start, extras)
        res2 = optimize(
            {"images": images1}, lambda v: objective(v["images"]), inputs,
            iterations=self.iterations, lr=self.lr, signed=True, schedule="step",
            project=clamp_images(),
        )
        res2.history = torch.cat([res1.history, res2.history])
        res2.iterations += res1.iterations
        return finish(self, inputs, res2, y, start, extras)

    def objective_at(
        self, inputs: AttackInputs, images: torch.Tensor, labels: torch.Tensor | None
    ) -> FitTerms | None:
        """The phase-2 objective (cosine distance + tv TV) and the cosine distance alone."""
        if labels is None:
            return None
        setup = matching_setup(
            inputs, fedavg=self.fedavg, layers=self.layers, scheme=self.layer_weights
        )
        x = images[None].to(next(inputs.model.parameters()).device)
        y = labels.reshape(1, -1).long().to(x.device)
        with torch.enable_grad():
            dist = gradient_distance(
                setup.simulator(x, y), setup.target, metric="cosine", weights=setup.weights
            )
        residual = float(dist[0])
        return FitTerms(
            objective=residual + self.tv * float(total_variation(x)[0]), residual=residual
        )
