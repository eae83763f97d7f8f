"""Pairing reconstructions with originals, and the scores that depend on pairing.

An attacker recovers a batch without knowing which input each reconstruction belongs to, so
scores are computed after an optimal one-to-one assignment rather than by position.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from fedleak.errors import DataError
from fedleak.metrics._checks import check_by, check_images, check_same_image_shape
from fedleak.metrics.image import mse_matrix, ssim_matrix

__all__ = ["assign", "check_prior", "label_accuracy", "match", "rdlv", "rdlv_from_ssim"]

RDLV_DENOM_FLOOR = 1e-8


def match(reconstructions: Tensor, originals: Tensor, *, by: str = "ssim") -> tuple[Tensor, Tensor]:
    """Best one-to-one pairing of reconstructions with originals (Hungarian assignment).

    Maximises total pairwise SSIM (``by="ssim"``) or minimises total MSE (``by="mse"``).
    Counts may differ: min(R, O) pairs come back. Returns int64 index tensors
    ``(rec_idx, orig_idx)`` sorted by ``orig_idx``, so pair k is
    ``reconstructions[rec_idx[k]]`` vs ``originals[orig_idx[k]]``.
    """
    check_by(by, "match")
    check_images(reconstructions, "reconstructions", "match")
    check_images(originals, "originals", "match")
    check_same_image_shape(
        originals, reconstructions, "originals", "reconstructions", "match", same_n=False
    )
    with torch.no_grad():
        if by == "ssim":
            scores = ssim_matrix(reconstructions, originals)
        else:
            scores = mse_matrix(reconstructions, originals)
    return assign(scores, maximize=(by == "ssim"))


def assign(scores: Tensor, *, maximize: bool) -> tuple[Tensor, Tensor]:
    """Hungarian assignment on a (R, O) score matrix; index tensors sorted by original."""
    rows, cols = linear_sum_assignment(scores.detach().cpu().numpy(), maximize=maximize)
    order = np.argsort(cols, kind="stable")
    return (
        torch.as_tensor(rows[order], dtype=torch.int64),
        torch.as_tensor(cols[order], dtype=torch.int64),
    )


def check_prior(prior: object, originals: Tensor, caller: str) -> Tensor:
    """Return ``prior`` as a (1, C, H, W) tensor shaped like the originals, else raise."""
    if torch.is_tensor(prior) and prior.dim() == 3:  # type: ignore[union-attr]
        prior = prior.unsqueeze(0)  # type: ignore[union-attr]
    p = check_images(prior, "prior", caller)
    if p.shape[0] != 1:
        raise DataError(
            f"`prior` of {caller} must be one image, (C, H, W) or (1, C, H, W); "
            f"got shape {tuple(p.shape)!r}."
        )
    check_same_image_shape(originals, p, "originals", "prior", caller, same_n=False)
    return p


def rdlv(reconstructions: Tensor, originals: Tensor, prior: Tensor) -> Tensor:
    """Relative data leakage value per original, shape (O,).

    ``(SSIM(best rec, x) - SSIM(prior, x)) / SSIM(prior, x)`` where the best rec is the one
    with the highest SSIM to ``x`` (no one-to-one constraint). It measures what the attack
    learnt beyond what the attacker already had (``prior``, e.g. a data-set mean image): 0
    means nothing beyond the prior, > 0 better than the prior. The denominator is
    ``max(|SSIM(prior, x)|, 1e-8)``: identical to the formula whenever the prior's SSIM is
    positive, and it keeps the sign meaningful (and the value finite) when it is not.
    """
    check_images(reconstructions, "reconstructions", "rdlv")
    check_images(originals, "originals", "rdlv")
    check_same_image_shape(
        originals, reconstructions, "originals", "reconstructions", "rdlv", same_n=False
    )
    p = check_prior(prior, originals, "rdlv")
    sim = ssim_matrix(reconstructions, originals)
    out = rdlv_from_ssim(sim, ssim_matrix(p, originals)[0])
    return out.to(torch.promote_types(reconstructions.dtype, originals.dtype))


def rdlv_from_ssim(sim: Tensor, prior_ssim: Tensor) -> Tensor:
    """RDLV from a (R, O) reconstruction-vs-original SSIM matrix and the prior's (O,) SSIMs."""
    best = sim.amax(dim=0)
    return (best - prior_ssim) / prior_ssim.abs().clamp_min(RDLV_DENOM_FLOOR)


def _labels(v: object, param: str) -> list[int]:
    if torch.is_tensor(v) or isinstance(v, np.ndarray):
        arr = np.asarray(v.detach().cpu() if torch.is_tensor(v) else v)  # type: ignore[union-attr]
        if arr.ndim != 1:
            raise DataError(
                f"`{param}` of label_accuracy must be 1-D (one label per image); "
                f"got shape {arr.shape!r}."
            )
        return [int(a) for a in arr.tolist()]
    if isinstance(v, Sequence) and not isinstance(v, str | bytes):
        try:
            return [int(a) for a in v]
        except (TypeError, ValueError):
            pass
    raise DataError(
        f"`{param}` of label_accuracy must be a 1-D sequence or tensor of integer labels; "
        f"got {type(v).__name__!r}."
    )


def label_accuracy(predicted: object, true: object, *, paired: bool = False) -> float:
    """Fraction of the true labels that were recovered.

    Unpaired (default): multiset overlap ``sum_c min(#pred_c, #true_c) / len(true)``, because
    the attacker does not know which image each inferred label belongs to (iDLG-style label
    inference returns a set). Paired: elementwise accuracy, lengths must match.
    """
    pred = _labels(predicted, "predicted")
    tru = _labels(true, "true")
    if not tru:
        raise DataError("`true` of label_accuracy must hold at least one label; got [].")
    if paired:
        if len(pred) != len(tru):
            raise DataError(
                f"`predicted` of label_accuracy must have as many labels as `true` ({len(tru)}) "
                f"when paired=True; got {len(pred)}."
            )
        return sum(a == b for a, b in zip(pred, tru, strict=True)) / len(tru)
    overlap = Counter(pred) & Counter(tru)
    return sum(overlap.values()) / len(tru)
