"""The fit check: did the attack fit the update, and could the truth itself fit it?

An attack that returns blobs may mean "this update does not leak" or "this attack broke". The
fit check tells them apart by evaluating the attack's own objective twice: at the
reconstruction, and (where a simulation knows it) at the true images and labels. The truth is
used for this verdict only, after the attack has finished, and never to choose anything.

Each attack provides :meth:`fedleak.attacks.Attack.objective_at`, which returns
:class:`FitTerms`: the full attack objective (data matching plus its priors) and the data
matching ``residual`` alone, normalized so that 0 means the candidate reproduces the observed
update exactly (cosine distance, or squared L2 relative to the update's squared norm).

Verdicts:

- ``fits``: the truth reproduces the update (residual near zero) and the attack reached an
  objective as low as the truth's: the picture is what this update reveals to this attack.
- ``attack-underfit``: the truth scores far lower than the reconstruction: the optimizer did not
  reach what the update allows; the update may still leak (more iterations, restarts, tuning).
- ``approximate-replay``: even the truth does not reproduce the update: the attack's model of
  the client (local steps, BatchNorm mode, dropout, shuffling, a defense) is inexact.
- ``unchecked``: no truth was given (a real update); only the attack's own objective is known.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

VERDICTS = ("fits", "attack-underfit", "approximate-replay", "unchecked")

#: a truth residual above this (normalized matching term) means the replay is inexact
REPLAY_TOLERANCE = 1e-2
#: the reconstruction underfits when its objective exceeds the truth's by this factor ...
UNDERFIT_RATIO = 1.5
#: ... and by at least this much in absolute terms (objectives near zero are all "fitted")
UNDERFIT_MARGIN = 1e-3


@dataclass(frozen=True)
class FitTerms:
    """An attack's objective at one candidate: the full loss and its data-matching residual."""

    objective: float
    residual: float
    note: str = ""  # what was evaluated, where it is not simply the candidate images


@dataclass(frozen=True)
class FitCheck:
    """The fit check of one reconstruction (see the module docstring for the verdicts)."""

    verdict: str
    attack_objective: float
    attack_residual: float
    truth_objective: float | None = None
    truth_residual: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite floats become None)."""
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in asdict(self).items()
        }


def verdict(attack: FitTerms, truth: FitTerms | None) -> FitCheck:
    """Judge a reconstruction's fit from its terms and, when known, the truth's."""
    if truth is None:
        return FitCheck(
            verdict="unchecked",
            attack_objective=attack.objective,
            attack_residual=attack.residual,
            note="no ground truth: only the attack's own objective is known",
        )
    base = dict(
        attack_objective=attack.objective,
        attack_residual=attack.residual,
        truth_objective=truth.objective,
        truth_residual=truth.residual,
    )
    if not math.isfinite(truth.residual) or truth.residual > REPLAY_TOLERANCE:
        return FitCheck(
            verdict="approximate-replay",
            note=(
                f"the true images leave residual {truth.residual:.3g} "
                f"(> {REPLAY_TOLERANCE:g}): the attack's model of the client is inexact"
            ),
            **base,
        )
    gap = attack.objective - truth.objective
    if not math.isfinite(attack.objective) or (
        gap > UNDERFIT_MARGIN and attack.objective > UNDERFIT_RATIO * truth.objective
    ):
        return FitCheck(
            verdict="attack-underfit",
            note=(
                f"the truth scores {truth.objective:.3g} against the attack's "
                f"{attack.objective:.3g}: the optimizer stopped short, the update may still leak"
            ),
            **base,
        )
    return FitCheck(
        verdict="fits",
        note="the attack reached the objective of the true images",
        **base,
    )
