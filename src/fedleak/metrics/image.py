"""Per-image fidelity metrics (MSE, PSNR, SSIM) between reconstructions and originals.

Everything works on float (N, C, H, W) tensors in [0, 1] and returns one value per image, so
callers can both average and report the spread. Computation runs in float64 (SSIM sums many
small differences) and results come back in the inputs' floating dtype. The functions are
differentiable, so attacks may also use them as losses.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fedleak.metrics._checks import (
    check_data_range,
    check_images,
    check_same_image_shape,
)

__all__ = ["flat_psnr", "mse", "psnr", "ssim", "ssim_window"]

# Wang et al. (2004) constants, as in skimage.metrics.structural_similarity.
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # skimage's choice: radius int(3.5 * 1.5 + 0.5) = 5 -> an 11-tap Gaussian
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_WIN = 11
MSE_FLOOR = 1e-10  # PSNR of identical images is 10*log10(range^2 / 1e-10), finite (100 dB)

# Elements per intermediate tensor in the pairwise SSIM loop (float64: ~32 MiB each).
_PAIR_CHUNK_ELEMS = 1 << 22


def _pair(x: Tensor, y: Tensor, caller: str) -> tuple[Tensor, Tensor]:
    check_images(x, "x", caller)
    check_images(y, "y", caller)
    check_same_image_shape(x, y, "x", "y", caller, same_n=True)
    return x, y


def _out_dtype(x: Tensor, y: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, y.dtype)


def mse(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared error per image, shape (N,)."""
    x, y = _pair(x, y, "mse")
    d = x.double() - y.double()
    return d.pow(2).flatten(1).mean(1).to(_out_dtype(x, y))


def _psnr_from_mse(m: Tensor, data_range: float) -> Tensor:
    return 10.0 * torch.log10(data_range**2 / m.clamp_min(MSE_FLOOR))


def psnr(x: Tensor, y: Tensor, *, data_range: float = 1.0) -> Tensor:
    """PSNR in dB per image, shape (N,); MSE is floored at 1e-10 so identical images stay finite."""
    x, y = _pair(x, y, "psnr")
    r = check_data_range(data_range, "psnr")
    m = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return _psnr_from_mse(m, r).to(_out_dtype(x, y))


def flat_psnr(x: Tensor, *, data_range: float = 1.0) -> Tensor:
    """PSNR of a flat image (each channel at the original's channel mean) vs the original, (N,).

    This is what a featureless blob scores, the MSE-optimal constant image; a reconstruction
    that does not beat it has recovered no structure, whatever its absolute PSNR.
    """
    check_images(x, "x", "flat_psnr")
    r = check_data_range(data_range, "flat_psnr")
    xd = x.double()
    flat = xd.mean(dim=(2, 3), keepdim=True)
    m = (xd - flat).pow(2).flatten(1).mean(1)
    return _psnr_from_mse(m, r).to(x.dtype)


# --------------------------------------------------------------------------------------- SSIM


def ssim_window(height: int, width: int) -> int:
    """Window size SSIM uses for an image: 11, or the largest odd size <= the smaller side.

    Only the border crop ((win - 1) // 2 px) depends on it; the Gaussian stays sigma 1.5 with
    11 taps (reflect-padded), exactly as skimage does when given ``win_size`` explicitly.
    """
    side = min(height, width)
    return min(SSIM_WIN, side if side % 2 == 1 else side - 1)


def _gauss_1d(device: torch.device) -> Tensor:
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    w = torch.exp(-0.5 * (t / SSIM_SIGMA) ** 2)
    return w / w.sum()


def _reflect_index(n: int, radius: int, device: torch.device) -> Tensor:
    """Indices padding a length-``n`` axis by ``radius`` in scipy's 'reflect' (edge-repeating)
    mode, folding repeatedly so it also works when the radius exceeds the image side."""
    i = torch.arange(-radius, n + radius, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def _filter_matrix(n: int, device: torch.device) -> Tensor:
    """(n, n) matrix applying the 1-D Gaussian with reflect padding along an axis of length n.

    The padded convolution is linear, so it folds into one matrix; two matmuls then replace
    pad + conv and run several times faster on CPU in float64, with identical results.
    """
    g = _gauss_1d(device)
    taps = g.numel()
    idx = _reflect_index(n, (taps - 1) // 2, device)
    rows = torch.arange(n, device=device)[:, None].expand(n, taps)
    cols = idx[torch.arange(n, device=device)[:, None] + torch.arange(taps, device=device)]
    m = torch.zeros(n, n, dtype=torch.float64, device=device)
    return m.index_put_((rows, cols), g.expand(n, taps), accumulate=True)


def _gauss_filter(t: Tensor, crop: int = 0) -> Tensor:
    """Gaussian filter over the last two dims, as scipy.ndimage.gaussian_filter(mode='reflect'),
    keeping only the centre (``crop`` px dropped per border), which is all SSIM averages."""
    h, w = t.shape[-2], t.shape[-1]
    mh = _filter_matrix(h, t.device)[crop : h - crop]
    mw = _filter_matrix(w, t.device)[crop : w - crop]
    return mh @ t @ mw.T


def _ssim_from_stats(
    ux: Tensor, uy: Tensor, uxx: Tensor, uyy: Tensor, uxy: Tensor, data_range: float
) -> Tensor:
    """Mean SSIM over (already cropped) filtered maps and channels; (..., C, H, W) -> (...).

    Per-image terms are formed before broadcasting, so the pairwise case does the fewest
    pair-sized operations.
    """
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    sx, sy = ux * ux, uy * uy
    vx, vy = uxx - sx, uyy - sy
    uxuy = ux * uy
    num = (2 * uxuy + c1) * (2 * (uxy - uxuy) + c2)
    den = ((sx + c1) + sy) * ((vx + c2) + vy)
    return (num / den).mean(dim=(-3, -2, -1))


def ssim(x: Tensor, y: Tensor, *, data_range: float = 1.0) -> Tensor:
    """Structural similarity per image, shape (N,), channels averaged.

    Same numbers as ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=data_range, channel_axis=0)``: Gaussian
    window (11 taps, sigma 1.5, reflect padding), K1=0.01, K2=0.03, population covariance, and
    the map's (win - 1) // 2 border cropped before averaging. Images smaller than 11 px on a
    side use the largest odd window <= the smaller side (see :func:`ssim_window`); this equals
    skimage called with that ``win_size``.
    """
    x, y = _pair(x, y, "ssim")
    r = check_data_range(data_range, "ssim")
    xd, yd = x.double(), y.double()
    crop = (ssim_window(x.shape[-2], x.shape[-1]) - 1) // 2
    stats = _gauss_filter(torch.stack([xd, yd, xd * xd, yd * yd, xd * yd]), crop)
    return _ssim_from_stats(*stats.unbind(0), r).to(_out_dtype(x, y))


def ssim_matrix(a: Tensor, b: Tensor, *, data_range: float = 1.0) -> Tensor:
    """SSIM of every image in ``a`` (N) against every image in ``b`` (M): float64 (N, M).

    Inputs must already be checked. Means and second moments are filtered once per image; only
    the cross term is filtered per pair, in chunks, so memory stays bounded.
    """
    ad, bd = a.double(), b.double()
    crop = (ssim_window(a.shape[-2], a.shape[-1]) - 1) // 2
    ua, uaa = _gauss_filter(torch.stack([ad, ad * ad]), crop).unbind(0)
    ub, ubb = _gauss_filter(torch.stack([bd, bd * bd]), crop).unbind(0)
    n, m = a.shape[0], b.shape[0]
    chunk = max(1, _PAIR_CHUNK_ELEMS // (m * math.prod(a.shape[1:])))
    rows = []
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        uab = _gauss_filter(ad[s:e, None] * bd[None], crop)
        rows.append(
            _ssim_from_stats(ua[s:e, None], ub[None], uaa[s:e, None], ubb[None], uab, data_range)
        )
    return torch.cat(rows, 0)


def mse_matrix(a: Tensor, b: Tensor) -> Tensor:
    """MSE of every image in ``a`` (N) against every image in ``b`` (M): float64 (N, M)."""
    af, bf = a.double().flatten(1), b.double().flatten(1)
    n, m = af.shape[0], bf.shape[0]
    chunk = max(1, _PAIR_CHUNK_ELEMS // (m * af.shape[1]))
    rows = [(af[s : s + chunk, None] - bf[None]).pow(2).mean(-1) for s in range(0, n, chunk)]
    return torch.cat(rows, 0)
