"""Defenses against data leakage from client updates.

Update-level filters (``fedleak.defenses.filters``) share one signature,
``(update, *, generator=None) -> update``, are registered by name in :data:`FILTERS` and chain with
:func:`compose`; :class:`ClientDPAccountant` tracks the client-level DP they buy. Training-time
defenses (``fedleak.defenses.training`` and its siblings ``latent``, ``dpsgd``, ``bido``,
``mixup``, ``secagg``) replace the client trainer instead; they are registered by name in
:data:`TRAINING_DEFENSES` and built with :func:`make_training_defense`.
"""

from fedleak.defenses.accounting import ClientDPAccountant
from fedleak.defenses.bido import BiDO, cka, coco, hsic, normalized_hsic
from fedleak.defenses.dpsgd import DPSGD, dp_epsilon
from fedleak.defenses.filters import (
    FILTERS,
    ClipNoiseFilter,
    Compose,
    ExcludeFilter,
    Filter,
    GaussianFilter,
    PercentileFilter,
    PruneFilter,
    QuantizeFilter,
    SVTFilter,
    UpdateTransform,
    available_filters,
    compose,
    make_filter,
    register_filter,
)
from fedleak.defenses.knowledge import (
    KNOWLEDGE,
    LatentInvertingGradients,
    attacker_model,
    client_noise,
)
from fedleak.defenses.latent import (
    LatentDecoder,
    LatentNet,
    LatentNoise,
    LatentPerturbation,
    pearson,
)
from fedleak.defenses.mixup import MixUp, mixup_batch
from fedleak.defenses.secagg import SecureAggregation
from fedleak.defenses.training import (
    TRAINING_DEFENSES,
    NoDefense,
    TrainingDefense,
    available_training_defenses,
    local_training,
    make_training_defense,
    register_training_defense,
)

__all__ = [
    "FILTERS",
    "ClientDPAccountant",
    "ClipNoiseFilter",
    "Compose",
    "ExcludeFilter",
    "Filter",
    "GaussianFilter",
    "PercentileFilter",
    "PruneFilter",
    "QuantizeFilter",
    "SVTFilter",
    "UpdateTransform",
    "available_filters",
    "compose",
    "make_filter",
    "register_filter",
    # training-time defenses
    "BiDO",
    "DPSGD",
    "KNOWLEDGE",
    "LatentInvertingGradients",
    "TRAINING_DEFENSES",
    "LatentDecoder",
    "LatentNet",
    "LatentNoise",
    "LatentPerturbation",
    "MixUp",
    "NoDefense",
    "SecureAggregation",
    "TrainingDefense",
    "attacker_model",
    "available_training_defenses",
    "client_noise",
    "cka",
    "coco",
    "dp_epsilon",
    "hsic",
    "local_training",
    "make_training_defense",
    "mixup_batch",
    "normalized_hsic",
    "pearson",
    "register_training_defense",
]
