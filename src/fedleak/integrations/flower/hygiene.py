"""What a Flower app written by others needs before fedleak's audit can be trusted.

Shared by :class:`~fedleak.integrations.flower.AuditStrategy` and
:class:`~fedleak.integrations.flower.LeakageCheckMod`: the user's model adapted to pixels in
[0, 1] (their stated input transform, logits found), the preflight on each update, fedleak's
metrics kept out of the app's own aggregates, and torch's thread count while attacking.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from flwr.app import Message, MetricRecord
from torch import nn

from fedleak.errors import ConfigError
from fedleak.fl import ClientUpdate
from fedleak.fl.preflight import preflight
from fedleak.models.adapter import adapt_model, adapt_update, input_transform

FEDLEAK_PREFIX = "fedleak."


def strip_fedleak_metrics(msg: Message) -> None:
    """Remove ``fedleak.*`` entries from a reply's MetricRecords (in place).

    FedAvg averages every metric of the replies; ``fedleak.client`` would come out as 0.5.
    """
    for key, rec in list(msg.content.metric_records.items()):
        if any(k.startswith(FEDLEAK_PREFIX) for k in rec):
            msg.content[key] = MetricRecord(
                {k: v for k, v in rec.items() if not k.startswith(FEDLEAK_PREFIX)}
            )


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` for the block (None: unchanged)."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise ConfigError(f"`threads` must be >= 1 or None; got {threads!r}.")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def transform_options(transform: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{"mean", "std"}`` or ``{"range": (lo, hi)}`` -> :func:`adapt_model` keywords."""
    t = dict(transform or {})
    unknown = sorted(set(t) - {"mean", "std", "range"})
    if unknown:
        raise ConfigError(
            f"`input_transform` takes mean/std or range; got {unknown[0]!r} (e.g. "
            "{'mean': 0.5, 'std': 0.5} or {'range': (-1, 1)})."
        )
    rng = t.get("range")
    return {"mean": t.get("mean"), "std": t.get("std"),
            "value_range": None if rng is None else tuple(rng)}


def adapt_for_audit(
    model: nn.Module,
    update: ClientUpdate,
    *,
    image_shape: tuple[int, int, int] | None,
    transform: Mapping[str, Any] | None,
    assumed: Sequence[str] = (),
) -> tuple[nn.Module, ClientUpdate, list[dict[str, str]]]:
    """The model and update as the attack needs them, and the preflight's findings."""
    shape = image_shape or getattr(model, "input_shape", None)
    if shape is None:
        raise ConfigError(
            "the audit needs the model's input shape: pass image_shape=(C, H, W) (the model "
            "has no `input_shape` attribute)."
        )
    shape = tuple(int(v) for v in shape)
    opts = transform_options(transform)
    desc = None
    if any(v is not None for v in opts.values()):
        desc = ", ".join(f"{k} {v}" for k, v in (transform or {}).items())
    report = preflight(
        model, update, assumed=assumed, input_transform=desc, image_shape=shape,  # type: ignore[arg-type]
        transform=input_transform(shape[0], **opts),
    )
    wrapped, _ = adapt_model(model, image_shape=shape, **opts)  # type: ignore[arg-type]
    return wrapped, adapt_update(update, wrapped), [f.to_dict() for f in report.findings]
