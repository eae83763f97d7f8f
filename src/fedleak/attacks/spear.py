"""SPEAR: exact batch recovery from a leading fully-connected ReLU layer (Dimitrov et al. 2024).

For a first layer ``Z = W X + b`` (X: d x N, the normalized flattened images), the FedSGD weight
gradient is ``G = dZ X^T`` (m x d), a product of rank N, and the bias gradient is ``dZ 1``. Any
rank-N factorization ``G = L R`` (from the SVD) differs from the true one by an unknown
invertible N x N matrix A: ``dZ = L A`` and ``X^T = A^{-1} R``. What pins A down is the ReLU
after the layer: every image leaves about half of dZ's column zero (units it does not
activate), so the true columns ``a_i`` of A are the directions q for which ``L q`` is sparse.

The search (as in the paper): take N-1 random rows of L; if they all are zero rows of one image
i, their null vector is ``a_i`` and ``L a_i`` has far more than N-1 zeros, while a random
direction has exactly N-1. Directions with many zeros are collected until N distinct ones are
found; the bias gradient then fixes their scales (``L A s = db``) and ``X^T = A^{-1} R``.

Exactness is *checked*, never assumed: the recovered images must explain the gradient of the
layer (weight and bias) and reproduce the zero pattern of dZ through the known global layer
(``W x_i + b <= 0`` exactly where image i's column of dZ vanishes). Otherwise the attack
refuses with one line: batch larger than the layer allows, a non-ReLU activation, a search that
ran out of trials (the cost grows about as 2^N), or an update that is not a plain gradient.

Known limit: with 2 classes every image's upstream gradient is a multiple of the same vector, so
dZ's rows are one vector times 0/1 activation patterns, and differences of two images'
directions are as sparse as the images' own; the search then finds far more sparse directions
than images, none of whose N-subsets verifies, and the attack refuses.

Labels are not needed and none are returned. Knowledge: the architecture (level B) and the
batch size (``num_images``, level C or passed explicitly).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from fedleak.attacks.analytic import closed_form_result, leading_linear
from fedleak.attacks.base import Attack, AttackInputs, Reconstruction, register_attack
from fedleak.attacks.fit import FitTerms
from fedleak.errors import ConfigError, UpdateError

_CALLER = "attack 'spear'"
#: refuse once the search holds this many sparse directions per image (see the module docs)
_MAX_POOL = 100


def _next_module(model: nn.Module, layer: nn.Module) -> nn.Module | None:
    """The leaf module that runs right after ``layer`` (Sequential models: definition order)."""
    leaves = [m for m in model.modules() if not list(m.children())]
    for i, m in enumerate(leaves):
        if m is layer:
            return leaves[i + 1] if i + 1 < len(leaves) else None
    return None


def _layer_gradient(inputs: AttackInputs, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The first layer's weight and bias gradient (float64) from a FedSGD update."""
    wk, bk = f"{name}.weight", f"{name}.bias"
    upd = inputs.update
    if wk not in upd.tensors or bk not in upd.tensors:
        raise UpdateError(
            f"{_CALLER} needs the update of {wk!r} and {bk!r}; the update lacks them."
        )
    return upd.tensors[wk].double(), upd.tensors[bk].double()


def sparse_directions(
    unit: torch.Tensor,
    live: torch.Tensor,
    n: int,
    k: int,
    generator: torch.Generator,
    zero_tol: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One round of the search: k picks of n-1 random live rows, the null vector of each.

    ``unit`` (m, n) is the row-normalized left factor of the gradient, ``live`` the rows some
    image reaches. Returns the unit directions (K, n) whose ``unit @ q`` has clearly more zeros
    than the n-1 forced ones, picked in general position, and their zero rows (K, live).
    """
    keys = torch.rand(k, live.numel(), generator=generator, device=generator.device)
    pick = live[keys.argsort(dim=1)[:, : n - 1].to(live.device)]  # (k, n-1) random rows
    sub = unit[pick]  # (k, n-1, n)
    sv_, vh = torch.linalg.svd(sub, full_matrices=True)[1:]
    q = vh[:, -1, :]  # (k, n) null vector of each pick
    general = sv_[:, -1] > 1e-8 * sv_[:, 0] if n > 2 else torch.ones(k, dtype=torch.bool)
    is_zero = (unit[live] @ q.T).abs() < zero_tol  # (live, k)
    zeros = is_zero.sum(0)  # (k,) zero live rows
    # a true image zeroes a fair share of the units; chance structure (rows that only one or
    # two images reach are parallel, so one of them in a pick zeroes its twins) stays below
    need = (n - 1) + max(2, live.numel() // 8)
    keep = general & (zeros >= need)
    q = q[keep]
    q = q * torch.sign(q.gather(1, q.abs().argmax(1, keepdim=True)))
    return q, is_zero[:, keep].T.contiguous()


def independent_set(dirs: torch.Tensor, zeros: torch.Tensor, n: int) -> torch.Tensor | None:
    """n directions with maximal zero sets, by decreasing zero count, linearly independent.

    A spurious direction (a mix of two images' directions) is zero only where both images
    are, so its zero set ``zeros`` (K, live) lies inside each image's: only directions whose
    zero set no other contains can be images. (Similar faces share most inactive units, so
    counts alone do not separate them.)
    """
    z = zeros.float()
    inside = (z @ (1 - z).T) == 0  # inside[a, b]: zeros of a are a subset of zeros of b
    counts = zeros.sum(1)
    dominated = (inside & (counts[:, None] < counts[None, :])).any(1)
    chosen: list[torch.Tensor] = []
    for i in counts.argsort(descending=True).tolist():
        if bool(dominated[i]):
            continue
        q = dirs[i]
        if chosen:
            basis = torch.linalg.qr(torch.stack(chosen).T).Q  # (n, len)
            if float((q - basis @ (basis.T @ q)).norm()) < 1e-3:
                continue
        chosen.append(q)
        if len(chosen) == n:
            return torch.stack(chosen)
    return None


def relu_mismatch(
    dz: torch.Tensor, xs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, tol: float
) -> float:
    """Fraction of units whose gradient is non-zero although the image leaves them inactive.

    ``dz`` (m, N) the recovered pre-activation gradients, ``xs`` (N, d) the recovered inputs,
    ``weight``/``bias`` the known global layer. A true recovery has none (up to ties at 0).
    """
    pre = xs @ weight.T + bias  # (N, m)
    nonzero = dz.T.abs() > tol * dz.abs().max()
    return float((nonzero & (pre < -1e-6 * pre.abs().max())).double().mean())


def _merge(
    pool: torch.Tensor, zeros: torch.Tensor, new: torch.Tensor, new_zeros: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pool with the new unit directions that are not already in it (|cos| < 1 - 1e-6)."""
    for q, z in zip(new, new_zeros, strict=True):
        if pool.shape[0] and float((pool @ q).abs().max()) >= 1 - 1e-6:
            continue
        pool, zeros = torch.cat([pool, q[None]]), torch.cat([zeros, z[None]])
    return pool, zeros


def _solve(
    low: torch.Tensor,
    right: torch.Tensor,
    g_w: torch.Tensor,
    g_b: torch.Tensor,
    a_hat: torch.Tensor,
    w0: torch.Tensor,
    b0: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, float, float] | None:
    """Scales from the bias gradient, then dZ and the inputs; with residual and ReLU mismatch."""
    scales = torch.linalg.lstsq(low @ a_hat, g_b[:, None]).solution.flatten()  # (n,)
    if bool((scales.abs() < 1e-12 * scales.abs().max()).any()):
        return None  # an image whose bias gradient sums to zero: its scale is unknown
    dz = low @ a_hat * scales  # (m, n)
    xs = torch.linalg.solve(a_hat * scales, right)  # (n, d)
    res_w = float((g_w - dz @ xs).norm() / g_w.norm())
    res_b = float((g_b - dz.sum(1)).norm() / g_b.norm().clamp_min(1e-300))
    residual = max(res_w, res_b)
    if not math.isfinite(residual):
        return None
    return dz, xs, residual, relu_mismatch(dz, xs, w0, b0, 1e-5)


@register_attack("spear")
@dataclass(frozen=True)
class Spear(Attack):
    """Exact batch recovery from the low-rank, ReLU-sparse gradient of a leading linear layer.

    Options:
        trials: random (N-1)-row picks tried (the expected need grows about as 2^N: ~1e5 at
            N=16 for a 256-unit layer).
        tolerance: the relative residual above which the recovery is refused as inexact
            (float32 gradients give about 1e-6).
    """

    trials: int = 400_000
    tolerance: float = 1e-4

    uses_labels = False
    handles = frozenset({"gradient"})

    def _check(self) -> None:
        if not (isinstance(self.trials, int) and self.trials >= 1):
            raise ConfigError(f"`trials` of {_CALLER} must be an int >= 1; got {self.trials!r}.")
        if not self.tolerance > 0:
            raise ConfigError(f"`tolerance` of {_CALLER} must be > 0; got {self.tolerance!r}.")

    def reconstruct(self, inputs: AttackInputs) -> Reconstruction:
        """Factor the gradient, find the sparse directions, check the result is exact."""
        self._check()
        start = time.perf_counter()
        shape, n = inputs.image_shape, inputs.num_images
        name, layer, norm = leading_linear(inputs.model, shape)
        after = _next_module(inputs.model, layer)
        if not isinstance(after, nn.ReLU):
            what = "nothing" if after is None else type(after).__name__
            raise ConfigError(
                f"{_CALLER} needs a ReLU right after {name!r} (its zeros separate the images); "
                f"this model has {what}. Use an optimization attack instead."
            )
        g_w, g_b = _layer_gradient(inputs, name)
        m, d = g_w.shape
        if n > min(m, d):
            raise ConfigError(
                f"{_CALLER} recovers at most {min(m, d)} images from {name!r} ({m} units, {d} "
                f"inputs); got batch {n}: the gradient's rank cannot hold them, no exact recovery."
            )
        u, sv, vh = torch.linalg.svd(g_w, full_matrices=False)
        rank = int((sv > 1e-5 * sv[0]).sum()) if float(sv[0]) > 0 else 0
        if rank != n:
            raise ConfigError(
                f"{_CALLER}: the gradient of {name!r} has rank {rank}, not the batch size {n} "
                "(duplicate or dead images, a wrong num_images, or noise on the update); "
                "refusing an inexact recovery."
            )
        low, right = u[:, :n] * sv[:n], vh[:n]  # G = low @ right
        gen = inputs.generator()
        scale = low.norm(dim=1)
        live = torch.nonzero(scale > 1e-12 * scale.max()).flatten()  # rows some image reaches
        unit = low / scale.clamp_min(1e-300)[:, None]  # zero tests relative to each row
        w0, b0 = layer.weight.detach().double(), layer.bias.detach().double()
        pool = torch.zeros(0, n, dtype=low.dtype, device=low.device)
        zeros = torch.zeros(0, live.numel(), dtype=torch.bool, device=low.device)
        used, grown_at, tried = 0, 0, 0
        best = (float("inf"), 1.0)
        result = None
        while used < self.trials and live.numel() >= n:
            k = min(4096, self.trials - used)
            used += k
            q, c = sparse_directions(unit, live, n, k, gen)
            size = pool.shape[0]
            pool, zeros = _merge(pool, zeros, q, c)
            if pool.shape[0] > size:
                grown_at = used
            elif used - grown_at > max(8 * 4096, grown_at):
                break  # as many trials again found nothing new: the pool is complete
            if pool.shape[0] > _MAX_POOL * n:
                break  # far more sparse directions than images: the zeros do not single them out
            if pool.shape[0] == tried:
                continue
            tried = pool.shape[0]
            chosen = independent_set(pool, zeros, n)
            if chosen is None:
                continue
            out = _solve(low, right, g_w, g_b, chosen.T, w0, b0)
            if out is None:
                continue
            _, xs, residual, mismatch = out
            best = min(best, (residual, mismatch), key=lambda t: t[1])
            if residual <= self.tolerance and mismatch <= 1e-3:
                result = (xs, residual, mismatch, pool.shape[0])
                break
        found = pool.shape[0]
        if result is None and found > _MAX_POOL * n:
            raise ConfigError(
                f"{_CALLER} found {found} sparse directions for {n} images in {name!r}: the ReLU "
                "zeros do not single the images out (e.g. a 2-class model, whose images all "
                "share one upstream gradient direction); no exact recovery, refused."
            )
        if result is None:
            raise ConfigError(
                f"{_CALLER} found {found} sparse directions in {used} trials but no {n} that "
                f"explain the gradient of {name!r} exactly (best: ReLU pattern contradicted on "
                f"{100 * best[1]:.1f}% of the units): too large a batch for the budget or too "
                "few inactive units. Raise `trials` or use an optimization attack."
            )
        xs, residual, mismatch, found = result
        return closed_form_result(
            self, inputs, xs, norm, residual, iterations=used, start=start,
            extras={
                "layer": name,
                "residual": residual,
                "relu_mismatch": mismatch,
                "trials": used,
                "directions_found": found,
            },
        )

    def objective_at(
        self, inputs: AttackInputs, images: torch.Tensor, labels: torch.Tensor | None
    ) -> FitTerms | None:
        """How much of the layer's gradient the span of [x_i, 1] leaves unexplained (0: exact)."""
        name, _, norm = leading_linear(inputs.model, inputs.image_shape)
        g_w, g_b = _layer_gradient(inputs, name)
        x = images.double().to(g_w.device)
        if norm is not None:
            x = (x - norm.mean.double()) / norm.std.double()
        xs = x.reshape(x.shape[0], -1)
        basis = torch.cat([xs, torch.ones(xs.shape[0], 1, dtype=xs.dtype, device=xs.device)], 1)
        rows = torch.cat([g_w, g_b[:, None]], 1)  # (m, d+1)
        coef = torch.linalg.lstsq(basis.T, rows.T).solution
        r = float((rows - coef.T @ basis).norm() / rows.norm().clamp_min(1e-300))
        return FitTerms(objective=r, residual=r)
