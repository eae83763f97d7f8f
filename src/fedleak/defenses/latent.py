"""Learnable latent data perturbation (seed 001: Jiang, Firouzi, Chakrabarty, arXiv 2503.16542).

The client model is encoder -> latent + Gaussian noise -> predictor, with a decoder branch that
tries to rebuild the input from the perturbed latent. Training is a minimax on the Pearson
correlation rho between an input and its rebuild: the decoder maximizes rho, the encoder and
predictor minimize CE + lambda * rho. Why it defends: the shared weights are trained on noisy
latents and pushed to keep only what the label needs, so an update carries less of the image,
and the attacker (who replays plain cross-entropy training) matches the wrong function.

Our reading of the paper (its equations are blank in our copy; see docs/defenses-training.md):

- rho is computed per sample over all pixels and averaged over the batch; the decoder loss is
  -rho (Eq. 2), the encoder/predictor loss is CE + lambda * rho (Eq. 3); one decoder step, then
  one encoder/predictor step, on every local batch (alternating, Algorithm 1).
- noise n ~ N(mu, sigma) per latent element; fixed variant: the same (mu, sigma) everywhere
  (the paper: a few means, sigma 0.1); learnable variant: per-element (mu, sigma), initialized at
  (1, 0.1), learned jointly with encoder/predictor in a local pre-training stage on the client's
  data (Algorithm 1; sigma kept positive as |sigma|), then frozen; the model weights are
  re-initialized for federated learning and only the learned noise is kept.
- the decoder stays on the client ("an additional branch ... within the local client"): only the
  encoder and predictor are shared, so the update has exactly the classifier's parameters. The
  noise parameters are never trained in FL and never sent; the learned ones are private to
  each client. In eval mode the noise layer adds its mean (the expected perturbation): the
  attacker's replay, which runs the model in eval mode, sees the global model's (public,
  configured) mean and no sampling.
- Table I adapted (the architecture, model ``latent-net``, is in :mod:`fedleak.models.latent`):
  encoder Conv3x3(pad 1)+ReLU with widths w, 2w, 2w, 4w, 4w, 4w, MaxPool(pool),
  4w, 4w, 4w (paper: w = 64, pool = 3); predictor MaxPool(pool), Flatten, Linear; decoder
  ConvT(4w, k3, s1), BN, ReLU, ConvT(4w, k4, s1), BN, ReLU, ConvT(C, k, s) with k and s chosen
  so the output has the input's size (CIFAR 32x32: k4 s2; 28x28: k2 s2; otherwise stride 1, or
  a final resize when no kernel fits).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fedleak.defenses.training import (
    TrainingDefense,
    check_number,
    check_positive_int,
    fail,
    local_batches,
    local_training,
    make_optimizer,
    register_training_defense,
)
from fedleak.device import device_of, generator_for
from fedleak.errors import ConfigError
from fedleak.fl.server import ClientData
from fedleak.fl.update import ClientUpdate
from fedleak.models.latent import LatentDecoder, LatentNet, LatentNoise, latent_net

__all__ = [
    "LatentDecoder",
    "LatentNet",
    "LatentNoise",
    "LatentPerturbation",
    "latent_net",
    "pearson",
]

#: epochs over which the pre-training's stop rule averages the noise's per-epoch change
PRETRAIN_WINDOW = 3


def pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation per sample (B,) between ``a`` and ``b`` of shape (B, ...)."""
    a = a.flatten(1)
    b = b.flatten(1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def _check_latent_net(model: nn.Module, who: str) -> LatentNet:
    if not isinstance(model, LatentNet):
        raise ConfigError(
            f"{who} needs the encoder/noise/predictor model of seed 001; got "
            f"{type(model).__name__}. Build it with build_model('latent-net', ...)."
        )
    return model


@register_training_defense("latent-perturbation")
@dataclass
class LatentPerturbation(TrainingDefense):
    """Seed 001's defense: latent Gaussian noise plus a Pearson-correlation minimax.

    Options:
        noise: "fixed" (the same mean/std for every latent element) or "learnable" (per-element
            mean/std learned in a local pre-training stage, then frozen).
        mean, std: the fixed noise, or the initial values of the learnable one (paper: 1, 0.1).
        lam: lambda, weight of rho in the encoder/predictor loss (CE + lambda * rho).
        decoder_lr: the decoder's Adam lr (default: the client's lr).
        pretrain_epochs: epochs of the learnable variant's pre-training (Algorithm 1); with
            ``pretrain_tol`` the most it runs.
        pretrain_lr: Adam lr of the pre-training (default 3e-4; see the docs on 1e-3).
        pretrain_batch_size: batch size of the pre-training (default 32).
        pretrain_noise_lr: Adam lr of the noise parameters (mu, sigma) in the pre-training
            (default: ``pretrain_lr``). Adam moves a parameter by at most about its lr per
            step, so at 1e-4 and a few dozen steps the noise cannot leave its initial value.
        pretrain_tol: stop the pre-training once (mu, sigma) move by less than this per epoch
            (mean absolute change per element, averaged over the last ``PRETRAIN_WINDOW``
            epochs: Adam's steps jitter, so one quiet epoch is no plateau) and the
            pre-training model fits its local data (accuracy at least twice chance); 0 runs
            all ``pretrain_epochs``.

        noise_scale: "absolute" (mean and std as given) or "plain": both multiplied, in
            :meth:`setup`, by RMS(latent of this model) / RMS(latent of a plain default-init
            encoder of the same shape) on client 0's images, so the noise-to-latent ratio is
            the one a plain implementation of the paper's encoder has (He init trains well but
            makes the latent 15-90x larger next to the noise).

    ``pretrain_log[client_id]`` keeps the pre-training's loss and local accuracy curves and
    how far (mu, sigma) moved from their initial values (per epoch), so a run can show the
    noise learned and the pre-training model trained (a deep default-init encoder sits at
    chance for about 11 epochs at lr 3e-4, and at 1e-3 it may never leave; noise learned
    beside an untrained model is noise fitted to nothing).
    """

    noise: str = "fixed"
    mean: float = 0.0
    std: float = 0.1
    lam: float = 1.0
    decoder_lr: float | None = None
    pretrain_epochs: int = 5
    pretrain_lr: float = 3e-4
    pretrain_batch_size: int = 32
    pretrain_noise_lr: float | None = None
    pretrain_tol: float = 0.0
    noise_scale: str = "absolute"
    scale_factor: float = field(default=1.0, init=False)
    decoders: dict[str, LatentDecoder] = field(default_factory=dict, init=False, repr=False)
    learned: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False
    )
    pretrain_log: dict[str, dict[str, Any]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        who = "LatentPerturbation"
        if self.noise not in ("fixed", "learnable"):
            raise fail("noise", who, "'fixed' or 'learnable'", self.noise)
        check_number(self.mean, "mean", who)
        check_number(self.std, "std", who, low=0.0)
        check_number(self.lam, "lam", who, low=0.0)
        if self.decoder_lr is not None:
            check_number(self.decoder_lr, "decoder_lr", who, low=0.0, low_open=True)
        check_positive_int(self.pretrain_epochs, "pretrain_epochs", who)
        check_number(self.pretrain_lr, "pretrain_lr", who, low=0.0, low_open=True)
        check_positive_int(self.pretrain_batch_size, "pretrain_batch_size", who)
        if self.pretrain_noise_lr is not None:
            check_number(self.pretrain_noise_lr, "pretrain_noise_lr", who, low=0.0, low_open=True)
        check_number(self.pretrain_tol, "pretrain_tol", who, low=0.0)
        if self.noise_scale not in ("absolute", "plain"):
            raise fail("noise_scale", who, "'absolute' or 'plain'", self.noise_scale)

    # --- architecture and pre-training ------------------------------------------------------

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """A copy of the latent-net with this defense's (public) noise configuration."""
        net = copy.deepcopy(_check_latent_net(model, "latent-perturbation"))
        with torch.no_grad():
            net.noise.mean.fill_(self.mean * self.scale_factor)
            net.noise.std.fill_(self.std * self.scale_factor)
        net.noise.set_learnable(False)
        return net

    def plain_scale(self, model: nn.Module, images: torch.Tensor) -> float:
        """RMS(latent of ``model``) / RMS(latent of a default-init encoder of its shape)."""
        net = _check_latent_net(model, "latent-perturbation")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            plain = latent_net(_input_shape(net), net.num_classes, width=net.width,
                               pool=net.pool, init="default").to(images.device)
        with torch.no_grad():
            ours = float(net.encoder(images).pow(2).mean().sqrt())
            theirs = float(plain.encoder(images).pow(2).mean().sqrt())
        return ours / theirs if theirs > 0 else 1.0

    def setup(self, model: nn.Module, clients: Sequence[ClientData], *, seed: int = 0) -> None:
        """Scale the noise (``noise_scale="plain"``); learnable variant: every client learns
        its own noise (Algorithm 1) before FL."""
        if self.noise_scale == "plain" and clients:
            self.scale_factor = self.plain_scale(model, clients[0].images[:64])
            net = _check_latent_net(model, "latent-perturbation")
            with torch.no_grad():
                net.noise.mean.fill_(self.mean * self.scale_factor)
                net.noise.std.fill_(self.std * self.scale_factor)
        if self.noise != "learnable":
            return
        for i, data in enumerate(clients):
            self.pretrain(model, data.images, data.labels, client_id=str(i), seed=seed + i)

    def pretrain(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        client_id: str = "0",
        seed: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Algorithm 1: learn per-element (mean, std) on local data with a fresh model.

        A fresh encoder/predictor/decoder (seeded) is trained with the minimax while the noise
        parameters learn too; afterwards only the noise is kept (for ``client_id``). Runs
        ``pretrain_epochs`` epochs, or fewer once (mu, sigma) stop moving (``pretrain_tol``).
        """
        base = _check_latent_net(model, "latent-perturbation")
        torch.manual_seed(seed)
        net = latent_net(
            _input_shape(base), base.num_classes, width=base.width, pool=base.pool,
            init=getattr(base, "init", "he"),
        )
        with torch.no_grad():
            net.noise.mean.fill_(self.mean * self.scale_factor)
            net.noise.std.fill_(self.std * self.scale_factor)
        net.noise.set_learnable(True)
        net.noise.generator = generator_for(images.device, seed + 1)
        decoder = LatentDecoder(net.latent_shape, _input_shape(base))
        net.train()
        decoder.train()
        noise = [net.noise.mean, net.noise.std]
        params = [p for p in net.parameters() if p.requires_grad and all(p is not q for q in noise)]
        opt = torch.optim.Adam([
            {"params": params, "lr": self.pretrain_lr},
            {"params": noise, "lr": self.pretrain_noise_lr or self.pretrain_lr},
        ])
        dec_opt = make_optimizer(list(decoder.parameters()), "adam", lr=self.pretrain_lr)
        n = images.shape[0]
        b = min(self.pretrain_batch_size, n)
        per_epoch = math.ceil(n / b)
        gen = torch.Generator().manual_seed(seed)  # cpu generator: batch indices
        mu0, sd0 = net.noise.mean.detach().clone(), net.noise.std.detach().abs().clone()
        prev = (mu0, sd0)
        log: dict[str, Any] = {
            "loss": [], "accuracy": [], "mean_shift": [], "std_shift": [], "change": [],
        }
        converged = False
        for _ in range(self.pretrain_epochs):
            total, hits, seen = 0.0, 0, 0
            for idx in local_batches(n, b, per_epoch, True, gen):
                x, y = images[idx], labels[idx]
                loss, logits = self._minimax_step(net, decoder, dec_opt, x, y, logits=True)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                total += float(loss.detach())
                hits += int((logits.detach().argmax(1) == y).sum())
                seen += len(y)
            mu, sd = net.noise.mean.detach().clone(), net.noise.std.detach().abs().clone()
            change = max(float((mu - prev[0]).abs().mean()), float((sd - prev[1]).abs().mean()))
            log["loss"].append(total / per_epoch)
            log["accuracy"].append(hits / max(seen, 1))
            log["mean_shift"].append(float((mu - mu0).abs().mean()))
            log["std_shift"].append(float((sd - sd0).abs().mean()))
            log["change"].append(change)
            prev = (mu, sd)
            recent = log["change"][-PRETRAIN_WINDOW:]
            # noise tuned to a model still at chance is tuned to nothing: stop only once the
            # model fits its data (twice chance) and the noise has settled
            trained = log["accuracy"][-1] >= 2.0 / base.num_classes
            if self.pretrain_tol > 0 and trained and sum(recent) / len(recent) < self.pretrain_tol:
                converged = True
                break
        mu, sd = prev
        log.update({
            "epochs": len(log["loss"]),
            "converged": converged,
            "trained": trained,
            "mean_shift_max": float((mu - mu0).abs().max()),
            "std_shift_max": float((sd - sd0).abs().max()),
            "mean_range": [float(mu.min()), float(mu.max())],
            "std_range": [float(sd.min()), float(sd.max())],
        })
        self.pretrain_log[client_id] = log
        learned = (mu, sd)
        self.learned[client_id] = learned
        return learned

    # --- local training --------------------------------------------------------------------

    def _decoder(self, net: LatentNet, client_id: str) -> LatentDecoder:
        if client_id not in self.decoders:
            self.decoders[client_id] = LatentDecoder(net.latent_shape, _input_shape(net))
        return self.decoders[client_id]

    def _minimax_step(
        self,
        net: LatentNet,
        decoder: LatentDecoder,
        dec_opt: torch.optim.Optimizer,
        x: torch.Tensor,
        y: torch.Tensor,
        logits: bool = False,
    ) -> Any:
        """Decoder step (maximize rho), then the encoder/predictor loss CE + lambda * rho
        (and the predictor's logits with ``logits``)."""
        z = net.perturbed_latent(x)
        dec_opt.zero_grad(set_to_none=True)
        (-pearson(x, decoder(z.detach())).mean()).backward()
        dec_opt.step()
        for p in decoder.parameters():
            p.requires_grad_(False)
        try:
            rho = pearson(x, decoder(z)).mean()
        finally:
            for p in decoder.parameters():
                p.requires_grad_(True)
        out = net.predictor(z)
        loss = F.cross_entropy(out, y) + self.lam * rho
        return (loss, out) if logits else loss

    def _load_noise(self, net: nn.Module, client_id: str | None) -> None:
        learned = self.learned.get(client_id or "")
        if learned is not None:
            with torch.no_grad():
                net.noise.mean.copy_(learned[0])
                net.noise.std.copy_(learned[1])
        net.noise.set_learnable(False)

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, **train: Any
    ) -> ClientUpdate:
        net0 = _check_latent_net(model, "latent-perturbation")
        client_id = train.get("client_id") or "0"
        if self.noise == "learnable" and client_id not in self.learned:
            self.pretrain(net0, images, labels, client_id=client_id, seed=train.get("seed", 0))
        decoder = self._decoder(net0, client_id)
        decoder.train()
        lr = float(train.get("lr", 0.01))
        dec_opt = make_optimizer(list(decoder.parameters()), "adam", lr=self.decoder_lr or lr)
        seed = int(train.get("seed", 0))

        def prepare(net: nn.Module) -> None:
            self._load_noise(net, client_id)
            net.noise.generator = generator_for(device_of(net), seed + 7)

        def objective(net: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
            return self._minimax_step(net, decoder, dec_opt, x, y)  # type: ignore[arg-type]

        return local_training(model, images, labels, objective, prepare=prepare, **train)

    def client_model(self, model: nn.Module, client_id: str | None = None) -> nn.Module:
        """The global model with this client's private (learned) noise, for its own use."""
        if self.noise != "learnable" or (client_id or "0") not in self.learned:
            return model
        net = copy.deepcopy(model)
        self._load_noise(net, client_id or "0")
        return net


def _input_shape(model: nn.Module) -> tuple[int, int, int]:
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ConfigError("the latent-net has no `input_shape`; build it with build_model.")
    return tuple(int(s) for s in shape)  # type: ignore[return-value]
