"""How much of a client's data an attack recovered: fidelity, pairing and leakage metrics.

Functional and stateless: images are float (N, C, H, W) tensors in [0, 1]; per-image
functions return (N,) tensors, :func:`score_images` returns JSON-ready numbers for reports.
"""

from __future__ import annotations

from fedleak.metrics.image import flat_psnr, mse, psnr, ssim, ssim_window
from fedleak.metrics.pairing import label_accuracy, match, rdlv
from fedleak.metrics.perceptual import (
    LPIPS_MIN_SIZE,
    expected_lpips_keys,
    load_lpips_weights,
    lpips,
    lpips_available,
)
from fedleak.metrics.score import HIGHER_IS_BETTER, LPIPS_SKIPPED_NOTE, score_images

__all__ = [
    "HIGHER_IS_BETTER",
    "LPIPS_MIN_SIZE",
    "LPIPS_SKIPPED_NOTE",
    "expected_lpips_keys",
    "flat_psnr",
    "label_accuracy",
    "load_lpips_weights",
    "lpips",
    "lpips_available",
    "match",
    "mse",
    "psnr",
    "rdlv",
    "score_images",
    "ssim",
    "ssim_window",
]
