"""Helpers that attacks use to inspect victim models."""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def bn_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """Named BatchNorm modules in forward order (e.g. for BN-statistics priors).

    Uses ``named_modules`` registration order; every fedleak model registers its modules in
    the order they run (a residual block's shortcut BN comes after the block's main-path BNs).
    """
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _BatchNorm)]
