"""The federated simulation: what a client sends, what the server does with it, who knows what."""

from fedleak.fl.client import bn_buffers, local_update
from fedleak.fl.server import (
    ClientData,
    RoundResult,
    aggregate,
    apply_update,
    evaluate,
    federate,
    predict,
    round_generator,
    sample_clients,
)
from fedleak.fl.threat import KNOWLEDGE, LEVELS, ThreatModel
from fedleak.fl.update import ClientUpdate, TrainingConfig

__all__ = [
    "KNOWLEDGE",
    "LEVELS",
    "ClientData",
    "ClientUpdate",
    "RoundResult",
    "ThreatModel",
    "TrainingConfig",
    "aggregate",
    "apply_update",
    "bn_buffers",
    "evaluate",
    "federate",
    "local_update",
    "predict",
    "round_generator",
    "sample_clients",
]
