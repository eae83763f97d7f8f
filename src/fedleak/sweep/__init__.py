"""The privacy-utility sweep of seed 001: defenses x hyperparameters x seeds, run in parallel.

``run_sweep(config, out)`` trains a small federation per cell with the cell's defense (utility:
client accuracy and macro F1), attacks one client's update (leakage: MSE, PSNR, SSIM and the
accuracy of an undefended classifier on the reconstructions) and streams one record per cell to
``out/sweep.jsonl``; ``resume=True`` continues an interrupted sweep.
"""

from fedleak.sweep.config import (
    AttackSpec,
    Cell,
    DefenseSpec,
    SemanticConfig,
    SweepAttackConfig,
    SweepConfig,
    SweepDataConfig,
    SweepFLConfig,
    SweepModelConfig,
    load_sweep_config,
)
from fedleak.sweep.runner import run_sweep

__all__ = [
    "AttackSpec",
    "Cell",
    "DefenseSpec",
    "SemanticConfig",
    "SweepAttackConfig",
    "SweepConfig",
    "SweepDataConfig",
    "SweepFLConfig",
    "SweepModelConfig",
    "load_sweep_config",
    "run_sweep",
]
