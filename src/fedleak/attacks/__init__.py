"""Gradient-inversion attacks, registered by name (see :func:`available_attacks`)."""

from fedleak.attacks import analytic as _analytic  # noqa: F401  (registers "analytic")
from fedleak.attacks import bn_fedavg as _bn_fedavg  # noqa: F401  (registers "bn-fedavg")
from fedleak.attacks import diffusion as _diffusion  # noqa: F401  (diffusion-ig, gidm, gidm-plus)
from fedleak.attacks import dlg as _dlg  # noqa: F401  (registers "dlg")
from fedleak.attacks import fan_fedleak as _fan_fedleak  # noqa: F401  (fedleak-fan)
from fedleak.attacks import fedavg_epochs as _fedavg_epochs  # noqa: F401  (fedavg-epochs)
from fedleak.attacks import generative as _generative  # noqa: F401  (generative-prior)
from fedleak.attacks import gradinversion as _gradinversion  # noqa: F401  (registers it)
from fedleak.attacks import inverting as _inverting  # noqa: F401  (inverting-gradients)
from fedleak.attacks import latent_noise as _latent_noise  # noqa: F401  (i-g-latent)
from fedleak.attacks import spear as _spear  # noqa: F401  (registers "spear")
from fedleak.attacks.base import (
    ATTACKS,
    Attack,
    AttackInputs,
    Checkpoint,
    Reconstruction,
    available_attacks,
    register_attack,
)
from fedleak.attacks.labels import count_labels, idlg_label, recover_labels

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackInputs",
    "Checkpoint",
    "Reconstruction",
    "available_attacks",
    "count_labels",
    "idlg_label",
    "recover_labels",
    "register_attack",
]
