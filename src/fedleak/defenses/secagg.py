"""Secure aggregation, simulated: pairwise masks that cancel, so the server sees only a sum.

Bonawitz et al. (2017): every pair of clients (i, j) in a round's cohort agrees on a random mask
m_ij; client i adds m_ij for every j > i and subtracts m_ji for every j < i. Each masked update
alone is noise; their sum is the sum of the true updates. What it buys against inversion: the
server can attack only the cohort's aggregate, i.e. all the cohort's images at once (a larger
batch); what it does not buy: the aggregate itself still leaks, and a cohort of one is no
protection.

Simulation choices: masks are Gaussian with std ``mask_scale`` computed in float64 (real
deployments use integers modulo 2^k; float64 keeps the cancellation error near 1e-13 x scale);
pairwise seeds derive from (``seed``, round, i, j), standing in for the agreed keys. Each client
pre-scales its update by n_i / N x K (cohort size K, total images N), so the plain mean of the
K masked updates (what :func:`fedleak.fl.aggregate` computes with weight 1 each) is the weighted
FedAvg of the true ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedleak.defenses.training import (
    TrainingDefense,
    check_number,
    check_positive_int,
    register_training_defense,
)
from fedleak.errors import ConfigError, UpdateError
from fedleak.fl.client import local_update
from fedleak.fl.server import round_generator, sample_clients
from fedleak.fl.update import ClientUpdate

__all__ = ["SecureAggregation"]


def _pair_generator(seed: int, round: int, i: int, j: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{round}:{min(i, j)}:{max(i, j)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


@register_training_defense("secure-aggregation")
@dataclass
class SecureAggregation(TrainingDefense):
    """Clients train normally; their updates are pairwise-masked so only the sum is visible.

    Options:
        cohort: clients whose updates are summed together when a study attacks the aggregate
            (the federation's round cohort decides during training).
        mask_scale: std of the pairwise masks (large: a masked update looks like noise).
        seed: the secret from which pairwise mask seeds derive.
    """

    cohort: int = 4
    mask_scale: float = 100.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive_int(self.cohort, "cohort", "SecureAggregation")
        check_number(self.mask_scale, "mask_scale", "SecureAggregation", low=0.0, low_open=True)
        check_positive_int(self.seed, "seed", "SecureAggregation", minimum=0)

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, **train: Any
    ) -> ClientUpdate:
        """Local training is plain :func:`local_update`; the masking happens at sending time."""
        return local_update(model, images, labels, **train)

    def mask(
        self, updates: Mapping[int, ClientUpdate], *, round: int = 1
    ) -> dict[int, ClientUpdate]:
        """Masked copies of one cohort's updates (keys: client indices), weight 1 each."""
        ids = sorted(updates)
        if not ids:
            raise ConfigError("`updates` of SecureAggregation.mask must hold at least one update.")
        sizes = {i: updates[i].num_samples for i in ids}
        if any(s is None for s in sizes.values()):
            raise UpdateError("secure aggregation needs each update's num_samples.")
        total = float(sum(sizes.values()))  # type: ignore[arg-type]
        return {
            i: self._mask_one(updates[i], i, ids, round, len(ids) * sizes[i] / total)  # type: ignore[operator]
            for i in ids
        }

    def _mask_one(
        self, u: ClientUpdate, i: int, ids: Sequence[int], round: int, scale: float
    ) -> ClientUpdate:
        keys = list(u.tensors)
        bkeys = [k for k, b in u.buffers.items() if b.is_floating_point()]
        tensors = {k: u.tensors[k].to(torch.float64) * scale for k in keys}
        buffers = dict(u.buffers)
        for k in bkeys:
            buffers[k] = u.buffers[k].to(torch.float64) * scale
        for j in ids:
            if j == i:
                continue
            gen = _pair_generator(self.seed, round, i, j)
            sign = 1.0 if j > i else -1.0
            for k in keys:
                m = torch.randn(tensors[k].shape, generator=gen, dtype=torch.float64)
                m = m.to(tensors[k].device)  # masks drawn on the CPU: the same on every device
                tensors[k] = tensors[k] + sign * self.mask_scale * m
            for k in bkeys:
                m = torch.randn(buffers[k].shape, generator=gen, dtype=torch.float64)
                m = m.to(buffers[k].device)
                buffers[k] = buffers[k] + sign * self.mask_scale * m
        return u.replace(tensors=tensors, buffers=buffers, num_samples=1)

    @staticmethod
    def unmask(
        masked: Mapping[int, ClientUpdate], *, num_samples: int | None = None
    ) -> ClientUpdate:
        """What the server learns: the mean of the masked updates = the weighted FedAvg update.

        ``num_samples`` (the cohort's total, which the server learns) is set on the result.
        """
        from fedleak.fl.server import aggregate

        agg = aggregate(list(masked.values()), weights=[1.0] * len(masked))
        tensors = {k: v.to(torch.float32) for k, v in agg.tensors.items()}
        buffers = {
            k: (v.to(torch.float32) if v.is_floating_point() else v) for k, v in agg.buffers.items()
        }
        first = next(iter(masked.values()))
        return agg.replace(
            tensors=tensors, buffers=buffers, num_samples=num_samples, training=first.training
        )

    def as_filter(
        self,
        *,
        num_clients: int,
        clients_per_round: int | None,
        sizes: Sequence[int],
        federation_seed: int,
    ) -> Callable[..., ClientUpdate]:
        """A ``federate(filters=...)`` hook that masks each client's update within its cohort.

        The cohort of round r is the one :func:`fedleak.fl.federate` samples (public: the server
        announces it); ``sizes[i]`` is client i's number of images (the FedAvg weights).
        """
        per_round = clients_per_round or num_clients
        if len(sizes) != num_clients:
            raise ConfigError(
                f"`sizes` of SecureAggregation.as_filter must hold {num_clients} numbers; "
                f"got {len(sizes)}."
            )

        def secure(
            update: ClientUpdate, *, generator: torch.Generator | None = None
        ) -> ClientUpdate:
            if update.client_id is None or update.round is None:
                raise UpdateError("secure aggregation needs the update's client_id and round.")
            r, i = int(update.round), int(update.client_id)
            ids = sample_clients(num_clients, per_round, round_generator(federation_seed, r))
            total = float(sum(sizes[j] for j in ids))
            scale = len(ids) * (update.num_samples or sizes[i]) / total
            return self._mask_one(update, i, ids, r, scale)

        return secure
