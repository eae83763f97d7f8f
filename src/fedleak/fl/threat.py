"""What the attacker knows, named after the SoK threat classes (Carletti et al. 2025).

A eavesdropper (the update only) · B + architecture · C + training details (lr, steps, batch
size, number of samples) · D + surrogate (public) data, e.g. a prior image made from it · E +
statistics of the client's own data. Labels are a separate grant (``labels=``): an oracle
many papers assume. Granted labels are a multiset (which classes, how often): their order would
tell which images shared a local batch, so it is granted only with ``label_order=True``.
The active classes F-H (a server that manipulates the model) are not simulated.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from fedleak.errors import ConfigError, InsufficientKnowledgeError
from fedleak.fl.update import ClientUpdate

LEVELS = ("A", "B", "C", "D", "E")
# Knowledge items each level adds; levels are cumulative.
_ADDS = {
    "A": ("update",),
    "B": ("architecture",),
    "C": ("training_details",),
    "D": ("surrogate_data",),
    "E": ("data_statistics",),
}
KNOWLEDGE = tuple(k for lv in LEVELS for k in _ADDS[lv]) + ("labels",)


def level_granting(item: str) -> str | None:
    """The lowest level whose knowledge includes ``item`` (None for labels, which are a grant)."""
    for lv in LEVELS:
        if item in _ADDS[lv]:
            return lv
    return None


@dataclass(frozen=True)
class ThreatModel:
    """The attacker's knowledge.

    Args:
        level: "A".."E"; the default "C" is an honest-but-curious server that configured the
            clients' training (the most common and realistic case).
        labels: the client's true labels, if the attacker is granted them; otherwise attacks
            recover labels from the update. The attack sees them sorted (a multiset) unless
            ``label_order`` grants their order too.
        label_order: grant the order of ``labels`` (the client's data order, hence which
            images shared a batch); off by default, since no realistic server learns it.
        prior: a prior image (C, H, W) in [0, 1], e.g. the mean of public data (level D+).
        public_data: public images (N, C, H, W) from the clients' domain (level D+).
    """

    level: str = "C"
    labels: torch.Tensor | None = None
    label_order: bool = False
    prior: torch.Tensor | None = None
    public_data: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ConfigError(
                f"`level` of ThreatModel must be one of {', '.join(LEVELS)}; got {self.level!r}. "
                "(F-H, active servers, are not simulated.)"
            )
        if self.label_order and self.labels is None:
            raise ConfigError(
                "`label_order` of ThreatModel grants the order of the labels: pass labels=... too."
            )
        for name in ("prior", "public_data"):
            if getattr(self, name) is not None and self.level < "D":
                raise ConfigError(
                    f"`{name}` of ThreatModel needs surrogate data, i.e. level D or higher; "
                    f"got level {self.level!r}."
                )

    @property
    def knowledge(self) -> frozenset[str]:
        items = {k for lv in LEVELS if lv <= self.level for k in _ADDS[lv]}
        if self.labels is not None:
            items.add("labels")
        return frozenset(items)

    def granted_labels(self) -> torch.Tensor | None:
        """The labels as the attack may see them: (N,) long, sorted unless the order is granted.

        Sorting makes the input depend on the multiset only: any permutation of the client's
        labels gives the attacker the same input, so it cannot tell which images shared a batch.
        """
        if self.labels is None:
            return None
        labels = self.labels.reshape(-1).long()
        return labels if self.label_order else labels.sort().values

    def knows(self, item: str) -> bool:
        return item in self.knowledge

    def check(self, requires: Iterable[str], who: str) -> None:
        """Raise one :class:`InsufficientKnowledgeError` naming everything ``who`` lacks."""
        missing = sorted(set(requires) - self.knowledge)
        if not missing:
            return
        parts = []
        for item in missing:
            lv = level_granting(item)
            parts.append(f"{item} (level {lv} or higher)" if lv else f"{item} (pass labels=...)")
        raise InsufficientKnowledgeError(
            f"{who} needs {', '.join(parts)}, but the threat model is level {self.level}."
        )

    def view(self, update: ClientUpdate) -> ClientUpdate:
        """The update as this attacker may use it: training metadata hidden below level C."""
        if self.knows("training_details"):
            return update
        return update.replace(training=None, num_samples=None)
