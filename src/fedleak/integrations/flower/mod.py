"""The client-side Flower mod: fedleak's update filters, then the client's own leakage check.

``LeakageCheckMod`` wraps a ClientApp's train function. On the reply it rebuilds the
:class:`ClientUpdate` (reply arrays minus the global arrays it received), applies fedleak's
filters, and runs :class:`fedleak.audit.SelfCheck`: the client attacks its own outgoing update
as an honest-but-curious server would (level C) and withholds it above the threshold, either as
an empty reply (metrics only, ``fedleak.withheld = 1``; the audit strategy drops it before
aggregation) or as a zero update (the global arrays sent back). The check's numbers go into the
reply's MetricRecord (``fedleak.psnr``, ``fedleak.ssim``, ``fedleak.rdlv``, ``fedleak.withheld``)
and the full record into a ConfigRecord (``fedleak.selfcheck``).

Order with Flower's own mods: Flower applies ``mods=[a, b]`` as ``a(b(train))``, so the reply
passes ``b`` first. Put this mod *first* (outermost): it then filters and checks the update that
actually leaves the client, after ``fixedclipping_mod`` / ``LocalDpMod`` clipped and noised it,
and an empty (withheld) reply never reaches those mods, which reject a reply without an
ArrayRecord. Placed after them, it checks the update before DP, and only ``action="empty"``
works.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from torch import nn

from fedleak.audit.selfcheck import SelfCheck, empty_update
from fedleak.defenses.filters import UpdateTransform, with_reference
from fedleak.errors import ConfigError, FedleakError
from fedleak.fl import ClientData, ClientUpdate
from fedleak.fl.server import round_generator
from fedleak.integrations.flower.hygiene import adapt_for_audit, torch_threads
from fedleak.integrations.flower.records import (
    derive_training,
    from_arrays,
    parse_meta,
    state_from_arrays,
    to_arrays,
    train_options,
)
from fedleak.models.adapter import check_pixels

CLIENT_KEY = "fedleak.client"
WITHHELD_KEY = "fedleak.withheld"
SELFCHECK_KEY = "fedleak.selfcheck"
META_KEY = "fedleak.meta"
NUM_EXAMPLES = "num-examples"

ClientAppCallable = Callable[[Message, Context], Message]


def partition_id(context: Context) -> int:
    """The client's index: ``partition-id`` from its node config, else the node id."""
    pid = context.node_config.get("partition-id")
    return int(pid) if pid is not None else int(context.node_id)


def error_reply(msg: Message, mod: str, reason: str) -> Message:
    """An error reply (Flower's style: mods answer with an error instead of raising)."""
    error = Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=f"{mod}: {reason}")
    return Message(error, reply_to=msg)


def _one(records: Any, what: str) -> tuple[str, Any] | str:
    """The single (key, record) of a kind, or the reason why there is not exactly one."""
    if len(records) != 1:
        return f"expects exactly one {what}, but found {len(records)}"
    return next(iter(records.items()))


class LeakageCheckMod:
    """Apply fedleak filters to the outgoing update and check its leakage before it leaves.

    Args:
        model_fn: ``context -> nn.Module``, the architecture (weights are replaced by the global
            arrays of each train message).
        data_fn: ``context -> (images, labels)``, the client's own data (needed by ``check``).
        filters: a fedleak filter or ``compose([...])``, applied to every outgoing update with
            the in-process engine's generator (``round_generator(seed, round, 1 + client)``).
        check: a :class:`fedleak.audit.SelfCheck` (attack, thresholds, schedule, ``action``
            "withhold" or "empty", prior); ``None`` applies the filters only.
        seed: the federation seed (filter noise).
        client_id_fn: ``context -> int`` (default: ``partition-id``).
        input_transform: your pipeline from pixels in [0, 1] to the model's input
            (``{"mean": m, "std": s}`` or ``{"range": (lo, hi)}``); ``data_fn`` must then
            return raw pixels in [0, 1] (normalized images are refused: they would be scored
            as pixels).
        image_shape: (C, H, W) when the model has no ``input_shape`` attribute.
        threads: torch threads while checking (default 1; None leaves torch's setting).
    """

    name = "LeakageCheckMod"

    def __init__(
        self,
        model_fn: Callable[[Context], nn.Module],
        data_fn: Callable[[Context], tuple[torch.Tensor, torch.Tensor]] | None = None,
        *,
        filters: UpdateTransform | None = None,
        check: SelfCheck | None = None,
        seed: int = 0,
        client_id_fn: Callable[[Context], int] = partition_id,
        input_transform: Mapping[str, Any] | None = None,
        image_shape: tuple[int, int, int] | None = None,
        threads: int | None = 1,
    ) -> None:
        if check is not None and data_fn is None:
            raise ConfigError(
                "LeakageCheckMod: the leakage check scores against the client's own data; pass "
                "data_fn=lambda context: (images, labels)."
            )
        if check is not None and check.action not in ("withhold", "empty"):
            raise ConfigError(
                f"`action` of the check must be 'withhold' or 'empty'; got {check.action!r}."
            )
        self.model_fn = model_fn
        self.data_fn = data_fn
        self.filters = filters
        self.check = check
        self.seed = seed
        self.client_id_fn = client_id_fn
        self.input_transform = dict(input_transform or {})
        self.image_shape = image_shape
        self.threads = threads

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if not msg.metadata.message_type.startswith(MessageType.TRAIN):
            return call_next(msg, context)
        got = _one(msg.content.array_records, "ArrayRecord in the train message")
        if isinstance(got, str):
            return error_reply(msg, self.name, got + " (the global model).")
        _, base = got
        config: dict[str, Any] = {}
        for rec in msg.content.config_records.values():
            config.update(rec)
        if "server-round" not in config:
            return error_reply(
                msg,
                self.name,
                "expects 'server-round' in the train ConfigRecord, but it is missing; Flower's "
                "strategies set it in configure_train (wrap a custom one with AuditStrategy).",
            )
        out = call_next(msg, context)
        if out.has_error():
            return out
        got = _one(out.content.array_records, "ArrayRecord in the reply")
        if isinstance(got, str):
            return error_reply(msg, self.name, got + ".")
        key, arrays = got
        if list(arrays.keys()) != list(base.keys()):
            return error_reply(
                msg,
                self.name,
                "expects the reply's ArrayRecord to have the keys of the one received (the "
                "local model), but they differ.",
            )
        if len(out.content.metric_records) > 1:
            return error_reply(
                msg,
                self.name,
                f"expects at most one MetricRecord in the reply, but found "
                f"{len(out.content.metric_records)}.",
            )
        try:
            return self._process(msg, out, context, key, base, arrays, config)
        except FedleakError as exc:
            return error_reply(msg, self.name, str(exc))

    def _process(
        self,
        msg: Message,
        out: Message,
        context: Context,
        key: str,
        base: Any,
        arrays: Any,
        config: dict[str, Any],
    ) -> Message:
        r = int(config["server-round"])
        c = int(self.client_id_fn(context))
        metric_key, metrics = next(iter(out.content.metric_records.items()), ("metrics", None))
        metrics = MetricRecord(dict(metrics)) if metrics is not None else MetricRecord()
        meta_rec = out.content.config_records.get(META_KEY)
        meta = parse_meta(meta_rec) if meta_rec is not None else {}
        n = metrics.get(NUM_EXAMPLES, meta.get("num_samples"))
        if n is None:
            raise ConfigError(
                f"the reply carries no '{NUM_EXAMPLES}' metric; the client must report it "
                "(FedAvg weights by it)."
            )
        model = self.model_fn(context)
        model.load_state_dict(state_from_arrays(base))
        training = meta.get("training") or derive_training(train_options(config), int(n), model)
        update: ClientUpdate = from_arrays(
            arrays,
            base=base,
            params=model,
            kind="gradient" if training.protocol == "fedsgd" else "delta",
            training=training,
            num_samples=int(n),
            client_id=str(c),
            round=r,
        )
        sent: ClientUpdate | None = update
        if self.filters is not None:  # the reference: the global model's buffers (NVFlare)
            filters = with_reference(self.filters, model)
            sent = filters(update, generator=round_generator(self.seed, r, salt=1 + c))
        record: dict[str, Any] | None = None
        if self.check is not None and self.check.scheduled(r) and self.data_fn is not None:
            records: list[dict[str, Any]] = []
            check = replace(self.check, record=records.append, skip=None)
            images, labels = self.data_fn(context)
            check_pixels(images, "images of data_fn")
            with torch_threads(self.threads):
                sent = self._check(check, r, c, sent, ClientData(images, labels), model)
            record = records[0] if records else None
        metrics[CLIENT_KEY] = c
        if record is not None:
            metrics[WITHHELD_KEY] = int(bool(record["withheld"]))
            for name in ("psnr", "ssim", "rdlv"):
                if record.get(name) is not None:
                    metrics[f"fedleak.{name}"] = float(record[name])
        content = out.content
        if sent is None:  # withheld: an empty reply, metrics only
            content = RecordDict({metric_key: metrics})
        else:
            content[metric_key] = metrics
            if sent is not update:  # keep the reply's float precision (see to_arrays)
                wide = any(a.dtype == "float64" for a in arrays.values())
                content[key] = to_arrays(sent, base=base, dtype=torch.float64 if wide else None)
        if record is not None:
            content[SELFCHECK_KEY] = ConfigRecord({"record": json.dumps(record)})
        out.content = content
        return out

    def _check(
        self, check: SelfCheck, r: int, c: int, update: ClientUpdate | None, data: ClientData,
        model: nn.Module,
    ) -> ClientUpdate | None:
        """The self-check on the model as the attack needs it (pixels in, logits out)."""
        if update is None:
            return None
        wrapped, adapted, _ = adapt_for_audit(
            model, update, image_shape=self.image_shape, transform=self.input_transform
        )
        result = check(r, c, adapted, data, wrapped)
        if result is None or result is adapted:
            return None if result is None else update
        return empty_update(update, model)
