"""What the attacker knows of a client's latent perturbation (seed 001's defender's secrets).

Seed 001 calls the noise parameters "defined by the defender" (fixed variant) or learns them
in a local pre-training and keeps them in the client's model (learnable variant); nothing gives
the server the noise. Four attackers, from the paper's to the strongest:

- ``none`` (the paper's setting, the default): the attacker replays the shared weights with no
  latent noise at all.
- ``distribution``: knows the client's (mu, sigma) per latent element, not the draws; the
  attack samples a fresh draw mu + sigma * eps every iteration (matching in expectation).
- ``exact``: replays with the client's own noise mean (what fedleak did before this option:
  for fixed noise the configured mean; for learned noise, the learned per-element means).
- ``adaptive``: knows no noise, but optimizes an additive latent shift together with the
  images (the shift that explains the update best).

:func:`attacker_model` builds the model an attacker replays; :class:`LatentInvertingGradients`
(attack ``inverting-gradients-latent``) is Inverting Gradients with the ``sample`` and
``shift`` treatments of the noise layer. The draws and the shift enter the replay through the
simulator's fixed (not matched) parameters, outside its vmap, so no attack code changes.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedleak.attacks.base import AttackInputs, Reconstruction, register_attack
from fedleak.attacks.inverting import (
    InvertingGradients,
    clamp_images,
    finish,
    start_matching,
)
from fedleak.attacks.optimize import optimize, total_variation
from fedleak.attacks.simulate import gradient_distance
from fedleak.errors import ConfigError
from fedleak.models.latent import LatentNet, LatentNoise

__all__ = [
    "KNOWLEDGE",
    "LatentInvertingGradients",
    "attack_for",
    "attacker_model",
    "client_noise",
    "noise_latent_ratio",
    "noise_report",
]

KNOWLEDGE = ("none", "distribution", "exact", "adaptive")
LATENT_MODES = ("mean", "sample", "shift")
SHIFT_SHAPES = ("element", "channel", "scalar")


def _noise_layer(model: nn.Module) -> tuple[str, LatentNoise] | None:
    for name, m in model.named_modules():
        if isinstance(m, LatentNoise):
            return name, m
    return None


def check_knowledge(knowledge: str, where: str = "attack") -> str:
    if knowledge not in KNOWLEDGE:
        raise ConfigError(
            f"`knowledge` of {where} must be one of {', '.join(map(repr, KNOWLEDGE))}; "
            f"got {knowledge!r}."
        )
    return knowledge


def client_noise(defense: Any, model: nn.Module, client_id: str = "0") -> tuple[
    torch.Tensor, torch.Tensor
] | None:
    """(mu, sigma) per latent element that ``client_id`` trains with; None without a noise layer.

    The learned values of a learnable latent perturbation, else the model's configured noise.
    """
    found = _noise_layer(model)
    if found is None:
        return None
    learned = getattr(defense, "learned", {}).get(client_id)
    if learned is not None:
        return learned[0].detach().clone(), learned[1].detach().abs().clone()
    layer = found[1]
    return layer.mean.detach().clone(), layer.std.detach().abs().clone()


def attacker_model(
    model: nn.Module, knowledge: str, noise: tuple[torch.Tensor, torch.Tensor] | None = None
) -> nn.Module:
    """The model an attacker with ``knowledge`` replays (a copy; ``model`` is untouched).

    ``none`` and ``adaptive``: the noise layer adds nothing (mean 0, std 0). ``exact`` and
    ``distribution``: the client's ``noise`` (mu, sigma), as :func:`client_noise` gives it.
    A model without a noise layer is returned as is.
    """
    check_knowledge(knowledge)
    found = _noise_layer(model)
    if found is None:
        return model
    net = copy.deepcopy(model)
    layer = _noise_layer(net)[1]  # type: ignore[index]
    with torch.no_grad():
        if knowledge in ("none", "adaptive"):
            layer.mean.zero_()
            layer.std.zero_()
        else:
            if noise is None:
                raise ConfigError(
                    f"the {knowledge!r} attacker needs the client's noise (mu, sigma)."
                )
            layer.mean.copy_(noise[0])
            layer.std.copy_(noise[1])
    return net


def attack_for(knowledge: str, name: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The attack (name, options) of an attacker with ``knowledge``, from the configured one.

    ``distribution`` and ``adaptive`` need the noise-aware Inverting Gradients; ``none`` and
    ``exact`` run the configured attack unchanged.
    """
    check_knowledge(knowledge)
    if knowledge in ("none", "exact"):
        return name, dict(options)
    if name not in ("inverting-gradients", "inverting-gradients-latent"):
        raise ConfigError(
            f"the {knowledge!r} attacker is built on Inverting Gradients; got attack {name!r}."
        )
    mode = "sample" if knowledge == "distribution" else "shift"
    return "inverting-gradients-latent", {**options, "latent": mode}


def noise_latent_ratio(model: nn.Module, images: torch.Tensor, std: float | None = None) -> float:
    """sigma / RMS(latent): how large the noise is next to the encoder's latent on ``images``.

    ``std`` defaults to the model's mean noise std. Seed 001's plain encoder (PyTorch's default
    init) makes this about 5-15 at sigma 0.1; He init 15-90x smaller.
    """
    if not isinstance(model, LatentNet):
        raise ConfigError(f"noise_latent_ratio needs a latent-net; got {type(model).__name__}.")
    was = model.training
    model.eval()
    with torch.no_grad():
        z = model.encoder(images)
    model.train(was)
    rms = float(z.pow(2).mean().sqrt())
    sigma = float(model.noise.std.abs().mean()) if std is None else float(std)
    return sigma / rms if rms > 0 else float("inf")


def noise_report(
    model: nn.Module,
    images: torch.Tensor,
    noise: tuple[torch.Tensor, torch.Tensor] | None,
    defense: Any = None,
    client_id: str = "0",
) -> dict[str, Any]:
    """The client's noise next to the latent, for a record: mean, std, sigma / RMS(latent) on
    ``images`` for ``model``; the paper's plain setting for comparison (the configured,
    unscaled sigma next to a default-init encoder of the same shape); and the learned noise's
    pre-training log (loss curve, distance moved). Empty without a latent-net.
    """
    if not isinstance(model, LatentNet) or noise is None:
        return {}
    sigma = float(noise[1].abs().mean())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        plain = LatentNet(
            tuple(model.input_shape), model.num_classes, width=model.width, pool=model.pool,
            noise_mean=0.0, noise_std=0.0, init="default",
        ).to(images.device)
    out: dict[str, Any] = {
        "noise_mean": float(noise[0].mean()),
        "noise_std": sigma,
        "noise_latent_ratio": noise_latent_ratio(model, images, std=sigma),
        "noise_latent_ratio_plain": noise_latent_ratio(
            plain, images, std=sigma / float(getattr(defense, "scale_factor", 1.0))
        ),
        "noise_scale_factor": float(getattr(defense, "scale_factor", 1.0)),
    }
    log = getattr(defense, "pretrain_log", {}).get(client_id)
    if log:
        out["noise_pretrain"] = log
    return out


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

    Needs ``restarts`` 1 for ``shift`` (one shift shared by the batch).
    """

    latent: str = "shift"
    shift: str = "element"
    shift_lr: float = 1.0

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
        if self.latent == "shift" and self.restarts != 1:
            raise ConfigError(
                f"`restarts` of attack {self.name!r} must be 1 with latent='shift'; "
                f"got {self.restarts}."
            )

    def reconstruct(self, inputs: AttackInputs) -> Reconstruction:
        if self.latent == "mean":
            return super().reconstruct(inputs)
        start = time.perf_counter()
        found = _noise_layer(inputs.model)
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
        gen = torch.Generator(device="cpu").manual_seed(inputs.seed + 17)
        variables = {"images": x0}
        if self.latent == "shift":
            shape = {"element": mu.shape, "channel": (mu.shape[0], 1, 1), "scalar": (1,)}
            variables["shift"] = torch.zeros(1, *shape[self.shift], device=x0.device)
        lr_scale = self.shift_lr

        def objective(v: dict[str, torch.Tensor]) -> torch.Tensor:
            x = v["images"]
            if self.latent == "sample":
                eps = torch.randn(mu.shape, generator=gen).to(mu.device)
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
            })
        return finish(self, inputs, res, y, start, extras)
