"""Which labels shared a local batch: the restarts of a FedAvg replay try different spreads.

Granted (or recovered) labels are a multiset: they say which labels the client holds, not which
of them were trained together. A replay puts candidate i in slot i's batch, so a replay with the
wrong spread cannot fit the update even at the true images. Restarts therefore cycle through
the distinct spreads of the labels over the local batches
(:func:`fedleak.attacks.labels.label_arrangements`, identity first), and the restart with the
lowest attack loss wins, as in ``bn-fedavg``.
"""

from __future__ import annotations

import torch

from fedleak.attacks.base import AttackInputs
from fedleak.attacks.labels import label_arrangements
from fedleak.errors import ConfigError


def restart_labels(inputs: AttackInputs, restarts: int) -> torch.Tensor:
    """Labels (R, N) for R replay restarts: restart r takes the (r mod A)-th of A spreads.

    Only the first epoch's batches are spread (a fixed-split replay reuses them every epoch).
    Without training details or labels, or with one local batch, every restart keeps the
    labels as given.
    """
    if inputs.labels is None:
        raise ConfigError("restart_labels needs labels (granted or recovered).")
    labels = inputs.labels.reshape(-1).long()
    cfg = inputs.update.training
    if cfg is None:
        return labels.expand(restarts, -1)
    sizes = tuple(cfg.batch_sizes or (cfg.batch_size,) * cfg.local_steps)
    gen = torch.Generator().manual_seed(inputs.seed + 1)  # cpu generator: label orders
    options = label_arrangements(labels, sizes, restarts, gen).to(labels.device)
    return options[torch.arange(restarts) % options.shape[0]]
