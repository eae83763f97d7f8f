"""Inverting Gradients against a client whose model adds latent noise it keeps private.

Seed 001's defense adds noise N(mu, sigma) to the latent of a latent-net; the server does not
know the client's mu and sigma. This attack models an attacker who lacks them:
``latent="sample"`` (knows their distribution, draws fresh noise every iteration) or
``latent="shift"`` (optimizes an unknown additive latent shift together with the images);
``latent="mean"`` is plain Inverting Gradients on the model as given. Which attacker a study
runs is chosen by :mod:`fedleak.defenses.knowledge`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from fedleak.attacks.base import AttackInputs, Reconstruction, register_attack
from fedleak.attacks.fit import FitTerms
from fedleak.attacks.inverting import (
    InvertingGradients,
    clamp_images,
    finish,
    start_matching,
)
from fedleak.attacks.optimize import optimize, total_variation
from fedleak.attacks.simulate import gradient_distance
from fedleak.errors import ConfigError
from fedleak.models.latent import LatentNoise

LATENT_MODES = ("mean", "sample", "shift")
SHIFT_SHAPES = ("element", "channel", "scalar")


def plain_wins(shift_loss: float | None, plain_loss: float | None) -> bool:
    """The adaptive attacker's pick between its shift run and plain Inverting Gradients: plain
    only with a finite attack loss strictly below the shift run's (ties keep the shift; a
    missing or non-finite shift loss, a broken run, loses)."""
    if plain_loss is None or not math.isfinite(plain_loss):
        return False
    return shift_loss is None or not math.isfinite(shift_loss) or plain_loss < shift_loss


def noise_layer(model: nn.Module) -> tuple[str, LatentNoise] | None:
    """The (name, module) of the model's latent noise layer, or None."""
    for name, m in model.named_modules():
        if isinstance(m, LatentNoise):
            return name, m
    return None


@register_attack("inverting-gradients-latent")
@dataclass(frozen=True)
class LatentInvertingGradients(InvertingGradients):
    """Inverting Gradients against a latent-noise client, for an attacker who lacks the noise.

    Options (besides Inverting Gradients'):
        latent: "mean" (replay the model's noise mean: plain IG), "sample" (a fresh draw
            mean + std * eps per latent element every iteration: the ``distribution``
            attacker) or "shift" (optimize an additive latent shift with the images: the
            ``adaptive`` attacker).
        shift: the shift's granularity, "element" (one per latent element, as learned noise
            is), "channel" or "scalar".
        shift_lr: the shift's Adam lr relative to the images' (signed steps, same schedule).
        fallback: with ``shift``, also run plain Inverting Gradients (shift held at 0) from the
            same start and keep the run with the lower final attack loss. Shift 0 is inside the
            adaptive attacker's search space, but signed steps never let the shift settle at
            0, so without this the adaptive attacker scores below ``none`` on clients that
            add no noise. Costs a second run; ``extras["latent_pick"]`` says which won.

    Needs ``restarts`` 1 for ``shift`` (one shift shared by the batch).
    """

    latent: str = "shift"
    shift: str = "element"
    shift_lr: float = 1.0
    fallback: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.latent not in LATENT_MODES:
            raise ConfigError(
                f"`latent` of attack {self.name!r} must be one of "
                f"{', '.join(map(repr, LATENT_MODES))}; got {self.latent!r}."
            )
        if self.shift not in SHIFT_SHAPES:
            raise ConfigError(
                f"`shift` of attack {self.name!r} must be one of "
                f"{', '.join(map(repr, SHIFT_SHAPES))}; got {self.shift!r}."
            )
        if not (isinstance(self.shift_lr, int | float) and self.shift_lr > 0):
            raise ConfigError(
                f"`shift_lr` of attack {self.name!r} must be > 0; got {self.shift_lr!r}."
            )
        if not isinstance(self.fallback, bool):
            raise ConfigError(
                f"`fallback` of attack {self.name!r} must be true or false; got {self.fallback!r}."
            )
        if self.latent != "mean" and (self.feature_match or self.tv_decay != 1 or self.warmup):
            raise ConfigError(
                f"`feature_match`, `tv_decay` and `warmup` of attack {self.name!r} need "
                f"latent='mean'; got latent={self.latent!r}."
            )
        if self.latent == "shift" and self.restarts != 1:
            raise ConfigError(
                f"`restarts` of attack {self.name!r} must be 1 with latent='shift'; "
                f"got {self.restarts}."
            )

    def reconstruct(self, inputs: AttackInputs) -> Reconstruction:
        if self.latent == "mean":
            return super().reconstruct(inputs)
        start = time.perf_counter()
        found = noise_layer(inputs.model)
        if found is None:
            raise ConfigError(
                f"attack {self.name!r} with latent={self.latent!r} needs a model with a latent "
                "noise layer (latent-net)."
            )
        key = f"{found[0]}.mean" if found[0] else "mean"
        x0, y, setup = start_matching(self, inputs)
        sim, target, weights, tv = setup.simulator, setup.target, setup.weights, self.tv
        if key not in sim.fixed:
            raise ConfigError(
                f"attack {self.name!r}: the noise mean {key!r} is matched, not fixed."
            )
        mu = sim.fixed[key].detach().clone()
        sigma = sim.fixed[key.removesuffix("mean") + "std"].detach().abs().clone()
        gen = torch.Generator(device="cpu").manual_seed(inputs.seed + 17)  # cpu generator
        variables = {"images": x0}
        if self.latent == "shift":
            shape = {"element": mu.shape, "channel": (mu.shape[0], 1, 1), "scalar": (1,)}
            variables["shift"] = torch.zeros(1, *shape[self.shift], device=x0.device)
        lr_scale = self.shift_lr

        def objective(v: dict[str, torch.Tensor]) -> torch.Tensor:
            x = v["images"]
            if self.latent == "sample":
                eps = torch.randn(mu.shape, generator=gen, device=gen.device).to(mu.device)
                sim.fixed[key] = mu + sigma * eps
            else:
                # scale the shift's gradient step relative to the images' (signed Adam)
                s = v["shift"][0]
                sim.fixed[key] = mu + lr_scale * s
            loss = gradient_distance(sim(x, y), target, metric="cosine", weights=weights)
            if tv:
                loss = loss + tv * total_variation(x)
            return loss

        try:
            res = optimize(
                variables, objective, inputs, iterations=self.iterations, lr=self.lr,
                signed=self.signed, schedule=self.schedule, project=clamp_images(),
            )
        finally:
            sim.fixed[key] = mu
        extras: dict[str, Any] = {
            **setup.extras, "restarts": self.restarts, "init": self.init, "tv": self.tv,
            "latent": self.latent,
        }
        if self.latent == "shift":
            shift = res.best["shift"][0] * lr_scale
            extras.update({
                "latent_shift_mean": float(shift.mean()),
                "latent_shift_abs": float(shift.abs().mean()),
                "latent_shift_shape": self.shift,
                "latent_pick": "shift",
            })
        rec = finish(self, inputs, res, y, start, extras)
        if self.latent != "shift" or not self.fallback:
            return rec
        plain = super().reconstruct(inputs)
        losses = {"latent_shift_loss": rec.restart_losses[rec.best_restart],
                  "latent_plain_loss": plain.restart_losses[plain.best_restart]}
        if not plain_wins(losses["latent_shift_loss"], losses["latent_plain_loss"]):
            rec.extras.update(losses)
            return replace(rec, seconds=time.perf_counter() - start)
        plain.extras.update({
            **{k: v for k, v in extras.items() if k.startswith("latent_shift")},
            "latent": self.latent, "latent_pick": "plain", **losses,
        })
        return replace(plain, seconds=time.perf_counter() - start)

    def objective_at(
        self, inputs: AttackInputs, images: torch.Tensor, labels: torch.Tensor | None
    ) -> FitTerms:
        """Inverting Gradients' objective on the model as given (noise at its mean)."""
        terms = super().objective_at(inputs, images, labels)
        if self.latent == "mean":
            return terms
        return FitTerms(
            objective=terms.objective, residual=terms.residual,
            note=f"evaluated at the noise mean, without the attacker's latent {self.latent}",
        )
