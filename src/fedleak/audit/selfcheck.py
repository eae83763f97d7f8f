"""The client's own leakage check (seed 000, NVFlare-style): attack yourself before you send.

The client runs an attack on its own outgoing update (after its privacy filters), scores the
reconstruction against its real data, and withholds the update when the leakage exceeds a
threshold. Every decision is logged with its numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import fedleak
from fedleak.errors import ConfigError
from fedleak.fl import ClientUpdate, ThreatModel
from fedleak.fl.server import ClientData


@dataclass(frozen=True)
class CheckResult:
    leaks: bool
    scores: dict[str, Any]
    reasons: list[str]


def check_update(
    model: nn.Module,
    update: ClientUpdate,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    attack: str = "inverting-gradients",
    options: dict[str, Any] | None = None,
    rdlv_threshold: float | None = 0.0,
    ssim_threshold: float | None = None,
    prior: torch.Tensor | None = None,
    seed: int = 0,
) -> CheckResult:
    """Attack ``update`` as an honest-but-curious server would (level C) and judge the result.

    Leaks when RDLV (needs ``prior``) exceeds ``rdlv_threshold`` or SSIM exceeds
    ``ssim_threshold``; a threshold set to None is not checked.
    """
    if rdlv_threshold is not None and prior is None:
        raise ConfigError("an RDLV threshold needs a prior image (`prior=`).")
    rec = fedleak.attack(
        attack, model, update, threat=ThreatModel("C"), seed=seed, **(options or {})
    )
    scores = fedleak.score(rec, images, labels=labels, prior=prior)
    reasons = []
    if rdlv_threshold is not None and scores["rdlv"] > rdlv_threshold:
        reasons.append(f"RDLV {scores['rdlv']:.3f} > {rdlv_threshold}")
    if ssim_threshold is not None and scores["ssim"] > ssim_threshold:
        reasons.append(f"SSIM {scores['ssim']:.3f} > {ssim_threshold}")
    return CheckResult(bool(reasons), scores, reasons)


def empty_update(update: ClientUpdate, model: nn.Module) -> ClientUpdate:
    """A zero update: parameters unchanged, the global model's own BatchNorm buffers."""
    buffers = dict(model.named_buffers())
    return update.replace(
        tensors={k: torch.zeros_like(v) for k, v in update.tensors.items()},
        buffers={k: buffers[k].detach().clone() for k in update.buffers},
    )


@dataclass
class SelfCheck:
    """A client-side hook for :func:`fedleak.fl.federate` (``client_check=``)."""

    attack: str = "inverting-gradients"
    options: dict[str, Any] = field(default_factory=dict)
    every: int = 1
    start: int = 1
    rdlv_threshold: float | None = 0.0
    ssim_threshold: float | None = None
    action: str = "withhold"
    prior: torch.Tensor | None = None
    seed: int = 0
    record: Callable[[dict[str, Any]], None] | None = None
    skip: Callable[[int, int], dict[str, Any] | None] | None = None  # resume: known decisions

    def scheduled(self, r: int) -> bool:
        return r >= self.start and (r - self.start) % self.every == 0

    def __call__(
        self, r: int, c: int, update: ClientUpdate, data: ClientData, model: nn.Module
    ) -> ClientUpdate | None:
        if not self.scheduled(r):
            return update
        known = self.skip(r, c) if self.skip else None
        if known is not None:
            leaks = bool(known["withheld"])
        else:
            res = check_update(
                model,
                update,
                data.images,
                data.labels,
                attack=self.attack,
                options=self.options,
                rdlv_threshold=self.rdlv_threshold,
                ssim_threshold=self.ssim_threshold,
                prior=self.prior,
                seed=self.seed * 1_000_003 + r * 7_919 + c,
            )
            leaks = res.leaks
            if self.record is not None:
                self.record(
                    {
                        "round": r,
                        "client": c,
                        "rdlv": res.scores.get("rdlv"),
                        "ssim": res.scores["ssim"],
                        "psnr": res.scores["psnr"],
                        "threshold_rdlv": self.rdlv_threshold,
                        "threshold_ssim": self.ssim_threshold,
                        "withheld": leaks,
                        "action": self.action if leaks else "send",
                        "reasons": res.reasons,
                    }
                )
        if not leaks:
            return update
        return None if self.action == "withhold" else empty_update(update, model)
