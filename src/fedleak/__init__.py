"""fedleak: how much of federated clients' data can be rebuilt from what they send.

Three functions are the front door::

    update = fedleak.observe(model, images, labels)          # what the server receives
    rec = fedleak.attack("dlg", model, update)               # the attacker's reconstruction
    fedleak.score(rec, images, labels=labels)                # {'mse', 'psnr', 'ssim', ...}
"""

from fedleak.api import attack, observe, score
from fedleak.attacks import Reconstruction, available_attacks
from fedleak.fl import ClientUpdate, ThreatModel, TrainingConfig

__version__ = "0.1.0"

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
