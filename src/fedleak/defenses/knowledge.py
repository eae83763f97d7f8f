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
from typing import Any

import torch
from torch import nn

from fedleak.attacks.latent_noise import LatentInvertingGradients, noise_layer
from fedleak.errors import ConfigError
from fedleak.models.latent import LatentNet

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
    found = noise_layer(model)
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
    found = noise_layer(model)
    if found is None:
        return model
    net = copy.deepcopy(model)
    layer = noise_layer(net)[1]  # type: ignore[index]
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
