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

# Calibration (tiny ConvNet 8/16 channels and LeNet, 16x16 faces, see tests/test_fit_check.py;
# measured with fedleak.attack(..., truth=...) at the true images and labels):
# - exact replays leave float32 round-off only: FedSGD b1/b4 and FedAvg K=2 (SGD or Adam, lr
#   0.01 or 0.1) replays give truth residuals <= 6e-7 (cosine, IG) and <= 5e-13 (relative L2:
#   gradinversion, bn-fedavg, dlg);
# - inexact models of the client give >= 1.3e-2: lr told 2x too large on an Adam client 0.013
#   (SGD 0.030), the pseudo-gradient for 2 local steps 0.05-0.44 (cosine) and 0.28-1.7 (L2),
#   BatchNorm told eval instead of train 0.48-0.72, a client shuffling over 2 epochs 0.36
#   (IG) / 0.62 (bn-fedavg), diffusion-ig's first-order pseudo-gradient for 2 local steps
#   2.1e-3. (A mismatch the objective cannot see leaves no residual: SGD without momentum at
#   lr 0.1 told 2x scores 6e-7 under the scale-free cosine, and is "fits" for that attack.)
# 1e-3 sits three orders of magnitude above round-off and one below the smallest mismatch.
# For the attack side: DLG on LeNet at 46 dB ends at 6.6e-6 (truth 5e-14), a fit; IG at
# 20 and 300 iterations ends at 0.11 and 0.013 against the truth's 0.0012 (its TV term), an
# optimizer that stopped short. An objective within UNDERFIT_MARGIN of the truth's (about a
# 1% relative gradient error) or within UNDERFIT_RATIO of it (priors such as TV make the
# truth's own objective non-zero; the attack may trade them) counts as fitted.

#: a truth residual above this (normalized matching term) means the replay is inexact
REPLAY_TOLERANCE = 1e-3
#: the reconstruction underfits when its objective exceeds the truth's by this factor ...
UNDERFIT_RATIO = 1.5
#: ... and by at least this much in absolute terms (objectives near zero are all "fitted")
UNDERFIT_MARGIN = 1e-4


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
            note="no ground truth: only the attack's own objective is known"
            + (f" ({attack.note})" if attack.note else ""),
        )
    extra = "; ".join(dict.fromkeys(n for n in (attack.note, truth.note) if n))
    extra = f" ({extra})" if extra else ""
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
                f"(> {REPLAY_TOLERANCE:g}): the attack's model of the client is inexact{extra}"
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
                f"{extra}"
            ),
            **base,
        )
    return FitCheck(
        verdict="fits",
        note=f"the attack reached the objective of the true images{extra}",
        **base,
    )
