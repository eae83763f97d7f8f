"""fedleak: how much of federated clients' data can be rebuilt from what they send.

Three functions are the front door::

    update = fedleak.observe(model, images, labels)          # what the server receives
    rec = fedleak.attack("dlg", model, update)               # the attacker's reconstruction
    fedleak.score(rec, images, labels=labels)                # {'mse', 'psnr', 'ssim', ...}
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Imported on first use (PEP 562): importing PyTorch costs seconds, and `fedleak --help` or a
# command that stops at a bad option must answer at once.
_LAZY = {
    "attack": "fedleak.api",
    "observe": "fedleak.api",
    "score": "fedleak.api",
    "Reconstruction": "fedleak.attacks",
    "available_attacks": "fedleak.attacks",
    "ClientUpdate": "fedleak.fl",
    "ThreatModel": "fedleak.fl",
    "TrainingConfig": "fedleak.fl",
}

_SUBPACKAGES = {
    "attacks", "audit", "data", "defenses", "diffusion", "fl", "integrations", "metrics",
    "models", "report", "sweep", "api", "errors", "registry",
}

if TYPE_CHECKING:
    from fedleak.api import attack, observe, score
    from fedleak.attacks import Reconstruction, available_attacks
    from fedleak.fl import ClientUpdate, ThreatModel, TrainingConfig


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"fedleak.{name}")
    raise AttributeError(f"module 'fedleak' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "ClientUpdate",
    "Reconstruction",
    "ThreatModel",
    "TrainingConfig",
    "__version__",
    "attack",
    "available_attacks",
    "observe",
    "score",
]
