"""Deterministic train/test splits and size limits, chosen from labels alone.

Working on labels (not pixels) lets folder loaders read only the files they keep. The split seed
is fixed so a test set never moves when a user changes ``seed``.
"""

from __future__ import annotations

import numpy as np

from fedleak.errors import DataError

SPLIT_SEED = 20_240_601  # fixed: independent of the user's seed
TEST_FRACTION = 0.2


def check_limit(limit: int | None) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit <= 0:
        raise DataError(f"`limit` must be a positive int or None; got {limit!r}.")
    return int(limit)


def check_split(split: str, allowed: tuple[str, ...], where: str) -> str:
    if not isinstance(split, str) or split not in allowed:
        raise DataError(f"{where}: `split` must be one of {', '.join(allowed)}; got {split!r}.")
    return split


def stratified_split(labels: np.ndarray, split: str) -> np.ndarray:
    """Ascending indices of ``split`` in a fixed stratified 80/20 train/test split (``all``: all).

    Each class sends ``round(0.2 * n)`` images to test but keeps at least one for train.
    """
    labels = np.asarray(labels)
    if split == "all":
        return np.arange(len(labels))
    rng = np.random.default_rng(SPLIT_SEED)
    test: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = min(int(np.floor(TEST_FRACTION * len(idx) + 0.5)), len(idx) - 1)
        test.append(idx[:n_test])
    is_test = np.zeros(len(labels), dtype=bool)
    if test:
        is_test[np.concatenate(test)] = True
    return np.flatnonzero(is_test if split == "test" else ~is_test)


def limit_indices(indices: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Keep a seeded random subset of ``limit`` indices (in their original order); all if fewer."""
    indices = np.asarray(indices)
    if limit is None or limit >= len(indices):
        return indices
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(indices), size=limit, replace=False))
    return indices[keep]
