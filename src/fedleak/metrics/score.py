"""One call that scores a reconstructed batch and returns JSON-ready numbers for reports."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fedleak.metrics._checks import check_by, check_images, check_same_image_shape
from fedleak.metrics.image import flat_psnr, mse, mse_matrix, psnr, ssim, ssim_matrix
from fedleak.metrics.pairing import assign, check_prior, label_accuracy, rdlv_from_ssim
from fedleak.metrics.perceptual import LPIPS_MIN_SIZE, WeightsArg, load_lpips_weights, lpips

__all__ = ["HIGHER_IS_BETTER", "LPIPS_SKIPPED_NOTE", "score_images"]

# Direction of each metric (like torchmetrics' ``higher_is_better``), for tables and plots.
HIGHER_IS_BETTER: dict[str, bool] = {
    "mse": False,
    "psnr": True,
    "ssim": True,
    "rdlv": True,
    "label_accuracy": True,
    "lpips": False,
}

LPIPS_SKIPPED_NOTE = "skipped: no local LPIPS weights given (nothing is downloaded)"


def _floats(t: Tensor) -> list[float]:
    return [float(v) for v in t.detach().double().cpu().tolist()]


def score_images(
    reconstructions: Tensor,
    originals: Tensor,
    *,
    rec_labels: Any = None,
    labels: Any = None,
    prior: Tensor | None = None,
    by: str = "ssim",
    lpips_weights: WeightsArg | None = None,
) -> dict[str, Any]:
    """Pair reconstructions with originals (:func:`match`) and score the pairs.

    Returns plain floats/lists (``json.dumps`` works): ``mse``, ``psnr``, ``ssim`` (means over
    pairs); ``mse_per_image``, ``psnr_per_image``, ``ssim_per_image`` and ``pairing``
    (``[rec, orig]`` per pair), all in original order (with fewer reconstructions than
    originals only the matched originals appear); ``matched_by``; ``flat_psnr`` (mean over
    all originals: what a flat blob scores). With ``rec_labels`` and ``labels``:
    ``label_accuracy`` (unpaired multiset overlap); with only one of them, ``label_note``
    says why it is missing (attacks without label inference are common). With ``prior``:
    ``rdlv`` (max over originals) and ``rdlv_per_image`` (every original, in order). With
    ``lpips_weights``: ``lpips`` and ``lpips_per_image``; otherwise ``lpips_note`` says why
    it is missing.
    """
    check_by(by, "score_images")
    check_images(reconstructions, "reconstructions", "score_images")
    check_images(originals, "originals", "score_images")
    check_same_image_shape(
        originals, reconstructions, "originals", "reconstructions", "score_images", same_n=False
    )
    # Cheap checks first, so a bad argument fails before the pairwise SSIM work.
    label_acc = label_note = None
    if labels is not None and rec_labels is not None:
        label_acc = float(label_accuracy(rec_labels, labels))
    elif labels is not None or rec_labels is not None:
        missing = "rec_labels" if rec_labels is None else "labels"
        label_note = f"skipped: label_accuracy needs both labels and rec_labels; {missing} is None"
    dev = reconstructions.device
    originals = originals.to(dev)
    if prior is not None:
        prior = check_prior(
            prior.to(dev) if torch.is_tensor(prior) else prior, originals, "score_images"
        )
    lpips_note = None
    if lpips_weights is None:
        lpips_note = LPIPS_SKIPPED_NOTE
    elif min(originals.shape[-2:]) < LPIPS_MIN_SIZE or originals.shape[1] not in (1, 3):
        lpips_note = (
            f"skipped: LPIPS-AlexNet needs 1- or 3-channel images of at least "
            f"{LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE} px; got {tuple(originals.shape[1:])}"
        )
    else:
        load_lpips_weights(lpips_weights)

    with torch.no_grad():
        # One SSIM matrix serves both the pairing and RDLV (the expensive part for big batches).
        sim = ssim_matrix(reconstructions, originals) if by == "ssim" or prior is not None else None
        scores = sim if by == "ssim" else mse_matrix(reconstructions, originals)
        rec_idx, orig_idx = assign(scores, maximize=(by == "ssim"))
        rec, orig = reconstructions[rec_idx.to(dev)], originals[orig_idx.to(dev)]
        m, p, s = mse(rec, orig), psnr(rec, orig), ssim(rec, orig)
        out: dict[str, Any] = {
            "mse": float(m.double().mean()),
            "psnr": float(p.double().mean()),
            "ssim": float(s.double().mean()),
            "mse_per_image": _floats(m),
            "psnr_per_image": _floats(p),
            "ssim_per_image": _floats(s),
            "pairing": [[int(r), int(o)] for r, o in zip(rec_idx, orig_idx, strict=True)],
            "matched_by": by,
            "flat_psnr": float(flat_psnr(originals).double().mean()),
        }
        if label_acc is not None:
            out["label_accuracy"] = label_acc
        if label_note is not None:
            out["label_note"] = label_note
        if prior is not None:
            assert sim is not None
            r = rdlv_from_ssim(sim, ssim_matrix(prior, originals)[0])
            out["rdlv"] = float(r.max())
            out["rdlv_per_image"] = _floats(r)
        if lpips_note is not None:
            out["lpips_note"] = lpips_note
        else:
            assert lpips_weights is not None
            d = lpips(rec, orig, weights=lpips_weights)
            out["lpips"] = float(d.double().mean())
            out["lpips_per_image"] = _floats(d)
    return out
