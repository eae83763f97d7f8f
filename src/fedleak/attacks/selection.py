"""Which restart to return: by attack loss, or by agreement between restarts.

Why: the attack loss (1 - cosine + TV) ranks restarts poorly once they all fit the update
(measured on breaching's setting, GAP head, batch 1: the restarts' final losses differ by a few
percent while their PSNR spans 2-3 dB, and the loss pick is often not the best). Restarts that
found the image agree with each other; restarts stuck in different bad optima disagree in
different ways. So ``"consistency"`` (in the spirit of GradInversion's group consistency, Yin et
al. 2021) returns the medoid: the restart whose images are closest, on average, to the other
restarts' (images paired by Hungarian assignment, since a batch's order is arbitrary).
``"mean"`` returns no single restart but their consensus: the pixel mean of every restart with
a finite loss, each restart's images first paired to the lowest-loss restart's (Hungarian
assignment on MSE, only between slots of the same label). Restarts that fit the same update
err in partly independent ways, so their mean is usually closer to the image than any of them
(issue 16, breaching's GAP-head rows, 3 seeds: batch 1 18.92 -> 19.79 dB with 4 restarts,
20.67 with 8 and ``tv_decay=0``; batch 4 14.25 -> 16.13 with 4, 17.08 with 8 and
``tv_decay=0``; docs/attacks.md).
Only the candidates themselves are used, never the ground truth.
"""

from __future__ import annotations

import torch

from fedleak.errors import ConfigError
from fedleak.metrics.image import mse_matrix
from fedleak.metrics.pairing import assign

SELECTIONS = ("loss", "consistency", "mean")


def check_select(select: str, caller: str) -> str:
    if select not in SELECTIONS:
        raise ConfigError(
            f"`select` of {caller} must be one of {', '.join(map(repr, SELECTIONS))}; "
            f"got {select!r}."
        )
    return select


def paired_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean MSE between two batches (N, C, H, W) after the best one-to-one pairing."""
    cost = mse_matrix(a, b)
    rows, cols = assign(cost, maximize=False)
    return float(cost[rows, cols].mean())


def consistency_scores(images: torch.Tensor, candidates: list[int]) -> torch.Tensor:
    """Mean paired distance of each candidate restart to the other candidates: (len,)."""
    k = len(candidates)
    dist = torch.zeros(k, k, dtype=torch.float64)
    for i in range(k):
        for j in range(i + 1, k):
            d = paired_distance(images[candidates[i]], images[candidates[j]])
            dist[i, j] = dist[j, i] = d
    return dist.sum(1) / max(1, k - 1)


def pick_restart(images: torch.Tensor, losses: torch.Tensor, select: str = "loss") -> int:
    """Index of the restart to return from candidates ``images`` (R, N, C, H, W), ``losses`` (R,).

    ``"loss"``: the lowest finite attack loss. ``"consistency"``: among the restarts with a
    finite loss, the medoid (closest on average to the others); with fewer than 3 such
    restarts there is no majority, so it falls back to the loss.
    """
    check_select(select, "pick_restart")  # "mean": the lowest loss (the consensus's reference)
    finite = torch.where(torch.isfinite(losses), losses, torch.full_like(losses, float("inf")))
    by_loss = int(finite.argmin())
    cand = torch.nonzero(torch.isfinite(losses)).flatten().tolist()
    if select != "consistency" or len(cand) < 3:
        return by_loss
    with torch.no_grad():
        scores = consistency_scores(images.detach().clamp(0, 1), cand)
    return cand[int(scores.argmin())]


def consensus(images: torch.Tensor, labels: torch.Tensor, losses: torch.Tensor,
              ref: int | None = None) -> torch.Tensor:
    """The pixel mean (N, C, H, W) of the restarts ``images`` (R, N, C, H, W) with a finite
    loss, each paired slot by slot to restart ``ref`` (default: the lowest loss; Hungarian on
    MSE within equal labels: ``labels`` (R, N), since a batch's order and, under replay, its
    label spread are arbitrary)."""
    if ref is None:
        ref = pick_restart(images, losses, "loss")
    with torch.no_grad():
        x = images.detach().clamp(0, 1)
        base, base_y = x[ref], labels[ref]
        aligned = []
        for r in torch.nonzero(torch.isfinite(losses)).flatten().tolist():
            cost = mse_matrix(base, x[r]).double()
            cost = cost + 1e6 * (base_y.reshape(-1, 1) != labels[r].reshape(1, -1)).double().to(
                cost.device)
            rows, cols = assign(cost, maximize=False)
            order = torch.empty_like(cols)
            order[rows] = cols
            aligned.append(x[r][order.to(x.device)])
        return torch.stack(aligned).mean(0) if aligned else base.clone()
