"""Split a data set among federated clients (IID, label-skewed Dirichlet, or explicit sizes).

How data is spread over clients changes what an attacker sees in one update, so the split must be
reproducible from ``seed`` alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedleak.errors import DataError

SCHEMES = ("iid", "dirichlet", "sizes")
MAX_DIRICHLET_TRIES = 1000


def _as_labels(labels: torch.Tensor | np.ndarray | Sequence[int]) -> np.ndarray:
    arr = labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    if arr.size == 0:
        arr = arr.astype(np.int64)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise DataError(
            f"`labels` of partition must be a 1-D sequence of ints; got shape {arr.shape}, "
            f"dtype {arr.dtype}."
        )
    if arr.size and arr.min() < 0:
        raise DataError("`labels` of partition must be non-negative class indices.")
    return arr.astype(np.int64)


def _int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def partition(
    labels: torch.Tensor | np.ndarray | Sequence[int],
    num_clients: int,
    *,
    scheme: str = "iid",
    alpha: float = 0.5,
    sizes: Sequence[int] | None = None,
    seed: int = 0,
    min_size: int = 1,
) -> list[torch.Tensor]:
    """Disjoint int64 index tensors, one per client, each in shuffled order.

    ``iid``: a seeded permutation cut into near-equal parts. ``dirichlet``: each class is spread
    over clients by Dirichlet(``alpha``) proportions (small alpha -> skewed label mixes), re-drawn
    until every client holds ``min_size`` images. ``sizes``: client ``k`` gets ``sizes[k]``
    random images (leftovers are unused).
    """
    y = _as_labels(labels)
    n = len(y)
    if not _int(num_clients) or num_clients <= 0:
        raise DataError(f"`num_clients` of partition must be a positive int; got {num_clients!r}.")
    if not _int(min_size) or min_size < 0:
        raise DataError(f"`min_size` of partition must be an int >= 0; got {min_size!r}.")
    if not _int(seed) or seed < 0:
        raise DataError(f"`seed` of partition must be an int >= 0; got {seed!r}.")
    if scheme not in SCHEMES:
        raise DataError(
            f"`scheme` of partition must be one of {', '.join(SCHEMES)}; got {scheme!r}."
        )
    if sizes is not None and scheme != "sizes":
        raise DataError(
            f"`sizes` of partition is only used with scheme='sizes'; got scheme={scheme!r}."
        )
    k, rng = int(num_clients), np.random.default_rng(seed)

    if scheme == "sizes":
        parts = _by_sizes(n, k, sizes, min_size, rng)
    else:
        if n < k * min_size:
            raise DataError(
                f"partition: {n} images cannot give {k} clients at least {min_size} each; "
                "lower num_clients or min_size."
            )
        if scheme == "iid":
            parts = np.array_split(rng.permutation(n), k)
        else:
            parts = _dirichlet(y, k, alpha, min_size, rng)
    return [torch.from_numpy(np.ascontiguousarray(p, dtype=np.int64)) for p in parts]


def _by_sizes(
    n: int, k: int, sizes: Sequence[int] | None, min_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    if sizes is None:
        raise DataError("partition: scheme='sizes' needs `sizes`, a list of one size per client.")
    sizes = list(sizes)
    if len(sizes) != k or not all(_int(s) for s in sizes):
        raise DataError(f"`sizes` of partition must be {k} ints (one per client); got {sizes!r}.")
    if any(s < min_size for s in sizes):
        raise DataError(f"`sizes` of partition must each be >= min_size={min_size}; got {sizes!r}.")
    if sum(sizes) > n:
        raise DataError(
            f"`sizes` of partition sum to {sum(sizes)} but the data set holds only {n} images; "
            "lower the sizes."
        )
    perm = rng.permutation(n)
    cuts = np.cumsum([0, *sizes])
    return [perm[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def _dirichlet(
    y: np.ndarray, k: int, alpha: float, min_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, (int, float, np.number))
        or not (np.isfinite(alpha) and alpha > 0)
    ):
        raise DataError(f"`alpha` of partition must be a positive number; got {alpha!r}.")
    classes = np.unique(y)
    for _ in range(MAX_DIRICHLET_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(k)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            props = rng.dirichlet(np.full(k, float(alpha)))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(np.int64)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].append(chunk)
        merged = [np.concatenate(p) if p else np.empty(0, np.int64) for p in parts]
        if min(len(p) for p in merged) >= min_size:
            return [rng.permutation(p) for p in merged]
    raise DataError(
        f"partition: no Dirichlet(alpha={alpha}) draw in {MAX_DIRICHLET_TRIES} tries gave all "
        f"{k} clients at least {min_size} images; raise alpha, lower num_clients or min_size."
    )
