"""DP-SGD (Abadi et al. 2016) with Opacus as a client trainer, the accountant kept across rounds.

Every local step clips each example's gradient to ``max_grad_norm`` and adds Gaussian noise of
std ``noise_multiplier * max_grad_norm`` to their sum (Opacus's ``GradSampleModule`` computes the
per-example gradients, its ``DPOptimizer`` clips and noises). The privacy unit is one example
of the client's data; each step is a subsampled Gaussian mechanism with sampling rate
q = batch size / local data size, which a per-client Opacus accountant composes.

Why the accountant lives in this object and not in a PrivacyEngine per round: a fresh engine
each round would restart epsilon at zero every round. Here the same accountant sees every step
of every round for that client, so epsilon only grows.

Batches are the shuffled fixed-size batches of :func:`fedleak.fl.local_update` (the update's
metadata stays exact for an attacker's replay); accounting them with q = B / N is the usual
approximation of Poisson sampling (Opacus does the same with ``poisson_sampling=False``).
BatchNorm mixes examples and is refused: :meth:`DPSGD.prepare_model` swaps it for GroupNorm with
``opacus.validators.ModuleValidator.fix`` on a copy.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from opacus import GradSampleModule
from opacus.accountants import GaussianAccountant, IAccountant, PRVAccountant, RDPAccountant
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn
from torch.nn import functional as F

from fedleak.defenses.training import TrainingDefense, check_number, fail, register_training_defense
from fedleak.device import device_of, generator_for
from fedleak.errors import ConfigError
from fedleak.fl.client import build_update, plan_local, plan_optimizer, run_local_steps, trainable
from fedleak.fl.update import ClientUpdate

__all__ = ["ACCOUNTANTS", "DPSGD", "dp_epsilon"]

ACCOUNTANTS: dict[str, type[IAccountant]] = {
    "rdp": RDPAccountant,
    "prv": PRVAccountant,
    "gdp": GaussianAccountant,
}
_log = logging.getLogger(__name__)


def dp_epsilon(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp"
) -> float:
    """Epsilon of ``steps`` subsampled Gaussian steps, from a fresh Opacus accountant."""
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    acc = ACCOUNTANTS[accountant]()
    acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    return float(acc.get_epsilon(delta=delta))


@dataclass
class _ClientLedger:
    """One client's accountant and what it has been fed."""

    accountant: IAccountant
    steps: int = 0
    sample_rate: float = 0.0
    rounds: int = 0


@register_training_defense("dp-sgd")
@dataclass
class DPSGD(TrainingDefense):
    """Per-example clipping plus Gaussian noise (Opacus), one accountant per client for all rounds.

    Options:
        noise_multiplier: sigma, the noise std over the clip norm (>= 0; 0 clips only and gives
            epsilon = inf).
        max_grad_norm: C, the per-example clip norm (> 0).
        delta: the delta epsilon is reported at, in (0, 1).
        accountant: "rdp" (default), "prv" or "gdp" (Opacus's accountants).
    """

    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = "rdp"
    ledgers: dict[str, _ClientLedger] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        check_number(self.noise_multiplier, "noise_multiplier", "DPSGD", low=0.0)
        check_number(self.max_grad_norm, "max_grad_norm", "DPSGD", low=0.0, low_open=True)
        check_number(self.delta, "delta", "DPSGD", low=0.0, low_open=True, high=1.0)
        if self.delta >= 1:
            raise fail("delta", "DPSGD", "a number in (0, 1)", self.delta)
        if self.accountant not in ACCOUNTANTS:
            raise fail("accountant", "DPSGD", "one of " + ", ".join(map(repr, ACCOUNTANTS)),
                       self.accountant)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """``model`` if Opacus accepts it, else a fixed copy (BatchNorm -> GroupNorm)."""
        if not ModuleValidator.validate(model, strict=False):
            return model
        fixed = ModuleValidator.fix(copy.deepcopy(model))
        problems = ModuleValidator.validate(fixed, strict=False)
        if problems:
            raise ConfigError(f"DP-SGD cannot train this model: {problems[0]}")
        for attr in ("input_shape", "num_classes"):
            if hasattr(model, attr):
                setattr(fixed, attr, getattr(model, attr))
        return fixed

    def _ledger(self, client_id: str) -> _ClientLedger:
        if client_id not in self.ledgers:
            self.ledgers[client_id] = _ClientLedger(ACCOUNTANTS[self.accountant]())
        return self.ledgers[client_id]

    def accounting(self, client_id: str | None = None) -> dict[str, Any]:
        """Epsilon (at ``delta``), sigma, clip norm, sampling rate and steps of one client."""
        led = self.ledgers.get(client_id or "0")
        steps = led.steps if led else 0
        if not led or steps == 0:
            eps = 0.0
        elif self.noise_multiplier == 0:
            eps = math.inf
        else:
            eps = float(led.accountant.get_epsilon(delta=self.delta))
        return {
            "epsilon": eps,
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.max_grad_norm,
            "sample_rate": led.sample_rate if led else None,
            "steps": steps,
            "rounds": led.rounds if led else 0,
            "accountant": self.accountant,
        }

    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        protocol: str = "fedsgd",
        local_epochs: int | None = None,
        local_steps: int | None = None,
        batch_size: int | None = None,
        lr: float = 0.01,
        optimizer: str = "sgd",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        bn_mode: str = "train",
        shuffle: bool = True,
        seed: int = 0,
        client_id: str | None = None,
        round: int | None = None,
    ) -> ClientUpdate:
        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            raise ConfigError(
                f"dp-sgd cannot train this model ({errors[0]}); build the global model with "
                "DPSGD.prepare_model(model), which swaps BatchNorm for GroupNorm."
            )
        plan = plan_local(
            images, labels, protocol=protocol, local_epochs=local_epochs, local_steps=local_steps,
            batch_size=batch_size, lr=lr, optimizer=optimizer, momentum=momentum,
            weight_decay=weight_decay, betas=betas, bn_mode=bn_mode, shuffle=shuffle, seed=seed,
            client_id=client_id, round=round,
        )
        # NCHW: Opacus's per-example conv gradients are wrong for channels-last weights (their
        # sum is right, each example's is not, so the clipping would be garbage); federate
        # trains CPU models channels-last (fedleak.device.fast_layout)
        net = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
        images, labels = images.to(device_of(net)), labels.to(device_of(net))
        net.train()
        names, params = trainable(net)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gsm = GradSampleModule(net, loss_reduction="mean")
        base = plan_optimizer(params, plan, optimizer if plan.protocol == "fedavg" else "sgd")
        dp = DPOptimizer(
            base,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=plan.batch_size,
            loss_reduction="mean",
            generator=generator_for(images.device, seed + 1),  # opacus draws on the params' device
        )
        ledger = self._ledger(client_id or "0")
        rate = min(1.0, plan.batch_size / plan.n)
        with warnings.catch_warnings():
            # Opacus's hooks warn when the inputs need no gradient (they never do here)
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            try:
                if plan.protocol == "fedsgd":
                    dp.zero_grad(set_to_none=True)
                    F.cross_entropy(gsm(images), labels).backward()
                    dp.pre_step()  # clip per example, add noise, average: the privatized gradient
                    grads = [p.grad.detach().clone() for p in params]  # type: ignore[union-attr]
                    self._account(ledger, rate, 1)
                    return build_update(
                        net, names, grads, kind="gradient", plan=plan, sizes=(plan.n,)
                    )

                def loss(idx: torch.Tensor, step: int) -> torch.Tensor:
                    return F.cross_entropy(gsm(images[idx]), labels[idx])

                deltas, sizes = run_local_steps(dp, params, plan, loss)
                self._account(ledger, rate, len(sizes))
                return build_update(net, names, deltas, kind="delta", plan=plan, sizes=sizes)
            finally:
                gsm._close()

    def _account(self, ledger: _ClientLedger, rate: float, steps: int) -> None:
        if self.noise_multiplier > 0:
            for _ in range(steps):
                ledger.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=rate)
        ledger.steps += steps
        ledger.sample_rate = rate
        ledger.rounds += 1
