"""Server side: an audit wrapper for any Flower strategy, and FedAvg sampled like fedleak.

:class:`AuditStrategy` passes every call through to the strategy it wraps (FedAvg by default).
It remembers the global arrays and the train config it sent in ``configure_train``; in
``aggregate_train`` it rebuilds each chosen client's update (reply arrays minus global arrays,
with the training configuration derived from the config sent and the client's ``num-examples``:
threat level C) and attacks it with a fedleak attack. Without the clients' data it records what
the attacker alone sees (attack loss, recovered labels, the reconstruction as a grid); with the
simulation-only ``truth`` hook (``client -> (images, labels)``) it scores them and writes the
same ``leakage.jsonl`` records as :func:`fedleak.audit.run_audit`. Withheld replies (see
:class:`~fedleak.integrations.flower.mod.LeakageCheckMod`) are dropped before aggregation.

:class:`SeededFedAvg` is FedAvg that samples clients by their partition id with fedleak's
generator and sends each client its own training options, so a Flower run repeats the
in-process engine's rounds exactly.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.logger import log as flwr_log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy
from flwr.serverapp.strategy.strategy_utils import sample_nodes
from torch import nn

import fedleak
from fedleak.attacks.fedavg_epochs import route_attack
from fedleak.audit.config import AuditSchedule
from fedleak.audit.runner import LEAKAGE_FIELDS
from fedleak.errors import ConfigError
from fedleak.fl import ThreatModel
from fedleak.fl.server import round_generator, sample_clients
from fedleak.integrations.flower.hygiene import (
    adapt_for_audit,
    strip_fedleak_metrics,
    torch_threads,
)
from fedleak.integrations.flower.mod import (
    CLIENT_KEY,
    META_KEY,
    NUM_EXAMPLES,
    SELFCHECK_KEY,
    WITHHELD_KEY,
)
from fedleak.integrations.flower.records import (
    TRAIN_KEYS,
    derive_training,
    from_arrays,
    merge_train,
    parse_meta,
    state_from_arrays,
    train_options,
)
from fedleak.report import append_jsonl, save_grid
from fedleak.report.run import fit_fields

Truth = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


def _metrics(msg: Message) -> Mapping[str, Any]:
    return next(iter(msg.content.metric_records.values()), {})


def is_withheld(msg: Message) -> bool:
    """A reply whose client withheld its update (metrics only, ``fedleak.withheld = 1``)."""
    return (
        not msg.has_error()
        and not msg.content.array_records
        and bool(_metrics(msg).get(WITHHELD_KEY, 0))
    )


class AuditStrategy(Strategy):
    """Wrap a Flower strategy and audit the leakage of the updates it receives.

    Args:
        strategy: the strategy to wrap (default ``FedAvg()``); every call is passed through.
        model_fn: ``() -> nn.Module``, the architecture (weights come from the global arrays).
        schedule: which rounds and clients to attack, the attack, its options and the threat
            level (an :class:`fedleak.audit.config.AuditSchedule`; default: every round, every
            client, Inverting Gradients, level C).
        truth: simulation only: ``client -> (images, labels)``; with it each reconstruction is
            scored (PSNR, SSIM, RDLV, label accuracy) and labels can be granted.
        prior: the RDLV reference image (and the attacker's prior with ``attacker_prior``).
        out: a folder for ``leakage.jsonl``, ``leakage.csv``, ``selfcheck.jsonl`` and
            ``grids/`` (``None``: keep the records in memory only, see ``records``).
        seed: the federation seed (attack seeds as in the in-process engine).
        filters: a description of the clients' filters for the records.
        first_round: the federation round of Flower's round 1 (a resumed run).
        done: (round, client) pairs already audited (skipped).
        on_error: "skip" (Flower's default: log and aggregate the rest) or "raise".
        client_training: what the server cannot know but you do: the clients' real
            training, as ``local_update`` options (``{"local_steps": 2, "batch_size": 32,
            "momentum": 0.9}``); it overrides the sent config for the audit only. Whatever
            neither says is assumed, recorded under ``assumed`` and warned about in Flower's
            log, and the preflight checks whether the update's size fits.
        input_transform: the clients' pipeline from pixels in [0, 1] to the model's input,
            ``{"mean": m, "std": s}`` or ``{"range": (lo, hi)}``; the attack works in pixels
            and the truth (pixels in [0, 1]) is scored in them.
        image_shape: (C, H, W) of the model's input when the model has no ``input_shape``.
        run_folder: write into ``out/run-<run id>`` (one folder per run); default: when
            ``out`` is relative (resolved against the directory the strategy is built in).
        threads: torch threads for the server's attacks (default 1: a 2-thread pool spinning
            beside Ray's actors made one attack 20x slower); None leaves torch's setting.
        restore_dtypes: give the aggregate the global arrays' dtypes: integer arrays
            (BatchNorm counters, which FedAvg averages into float64) take the clients' maximum
            as fedleak does, float arrays are cast back (clients may send float64, see
            :func:`~fedleak.integrations.flower.records.to_arrays`). False leaves the wrapped
            strategy's result alone.
    """

    def __init__(
        self,
        strategy: Strategy | None = None,
        *,
        model_fn: Callable[[], nn.Module],
        schedule: AuditSchedule | None = None,
        truth: Truth | None = None,
        prior: torch.Tensor | None = None,
        out: str | Path | None = None,
        seed: int = 0,
        filters: str = "none",
        first_round: int = 1,
        done: Iterable[tuple[int, int]] = (),
        on_error: str = "skip",
        restore_dtypes: bool = True,
        log: Callable[[str], None] = lambda m: None,
        progress_factory: Any = None,
        client_training: Mapping[str, Any] | None = None,
        input_transform: Mapping[str, Any] | None = None,
        image_shape: tuple[int, int, int] | None = None,
        run_folder: bool | None = None,
        threads: int | None = 1,
    ) -> None:
        if on_error not in ("skip", "raise"):
            raise ConfigError(f"`on_error` must be 'skip' or 'raise'; got {on_error!r}.")
        self.strategy = strategy if strategy is not None else FedAvg()
        self.model_fn = model_fn
        sched = schedule or AuditSchedule()
        if sched.attack is None:  # unset in a config: the classification default
            sched = dataclasses.replace(sched, attack="inverting-gradients")
        self.schedule = sched
        if sched.grant_labels and truth is None:
            raise ConfigError(
                "`grant_labels` gives the attacker the true labels; it needs `truth`."
            )
        if sched.attacker_prior and (prior is None or sched.threat < "D"):
            raise ConfigError("`attacker_prior` needs a `prior` and threat level D or E.")
        ThreatModel(sched.threat)  # validate the level now
        self.truth = truth
        self.prior = prior
        self.out = Path(out) if out is not None else None
        if run_folder is None:
            run_folder = self.out is not None and not self.out.is_absolute()
        if self.out is not None:
            self.out = self.out.resolve()  # here, not in the SuperLink's working directory
        self.run_folder = bool(run_folder)
        self.client_training = {k: v for k, v in (client_training or {}).items()}
        unknown = sorted(set(self.client_training) - set(TRAIN_KEYS))
        if unknown:
            raise ConfigError(
                f"`client_training` of AuditStrategy takes local_update options "
                f"({', '.join(TRAIN_KEYS)}); got {unknown[0]!r}."
            )
        local = {"local_steps", "local_epochs", "batch_size", "optimizer", "momentum"}
        if local & set(self.client_training) and "protocol" not in self.client_training:
            self.client_training["protocol"] = "fedavg"  # local steps: not a single gradient
        self.input_transform = dict(input_transform or {})
        self.image_shape = image_shape
        self.threads = threads
        self.seed = seed
        self.filters = filters
        self.offset = first_round - 1
        self.done = set(done)
        self.on_error = on_error
        self.restore_dtypes = restore_dtypes
        self.log = log
        self.progress_factory = progress_factory
        self.records: list[dict[str, Any]] = []  # leakage records of this run
        self.selfchecks: list[dict[str, Any]] = []  # the clients' own checks, as they reported
        self.rounds: dict[int, dict[str, list[int]]] = {}  # round -> clients, withheld
        self._global: dict[int, ArrayRecord] = {}
        self._sent: dict[int, dict[int, dict[str, Any]]] = {}
        self._clients: dict[int, int] = {}  # node id -> client id
        self.failures: list[dict[str, Any]] = []  # failed client replies, every round
        self.aggregated: dict[int, int] = {}  # round -> updates that reached the aggregate
        self.warned: set[str] = set()  # assumption warnings already logged

    def start(self, grid: Grid, initial_arrays: ArrayRecord, *args: Any, **kwargs: Any) -> Any:
        """Flower's loop, in a run folder of its own when ``run_folder`` (see Args)."""
        if self.out is not None and self.run_folder:
            run = getattr(getattr(grid, "run", None), "run_id", None)
            run_id = str(run) if run else time.strftime("%Y%m%d-%H%M%S")
            self.out = self.out / f"run-{run_id}"
            self.out.mkdir(parents=True, exist_ok=True)
            self._warn(f"fedleak audit: run folder {self.out}", logging.INFO)
        return super().start(grid, initial_arrays, *args, **kwargs)

    def _warn(self, message: str, level: int = logging.WARNING) -> None:
        """Into Flower's log (shown by default) and fedleak's ``log``."""
        flwr_log(level, message)
        self.log(message)

    # --- pass-through -------------------------------------------------------------------------
    def summary(self) -> None:
        self.strategy.summary()
        s = self.schedule
        self.log(
            f"audit: {s.attack} at threat level {s.threat}, every {s.every} round(s) from round "
            f"{s.start}, clients {s.clients}; scoring {'on' if self.truth else 'off'}"
        )
        failed = len(self.failures)
        withheld = sum(len(v["withheld"]) for v in self.rounds.values())
        empty = [r for r, k in self.aggregated.items() if k == 0]
        if failed or withheld or empty:
            self._warn(
                f"fedleak audit summary: {failed} client failure(s), {withheld} withheld "
                f"update(s); rounds without any aggregated update: {empty or 'none'}"
                + (f"; first failure: {self.failures[0]['reason']}" if failed else ""),
                logging.ERROR if empty else logging.WARNING,
            )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        r = server_round + self.offset
        messages = list(self.strategy.configure_train(r, arrays, config, grid))
        self._global = {r: arrays}
        self._sent[r] = {}
        for m in messages:
            sent: dict[str, Any] = {}
            for rec in m.content.config_records.values():
                sent.update(rec)
            self._sent[r][m.metadata.dst_node_id] = sent
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        r = server_round + self.offset
        replies = list(replies)
        errors = [m for m in replies if m.has_error()]
        if errors and self.on_error == "raise":
            m = errors[0]
            raise RuntimeError(
                f"round {r}: {len(errors)} client(s) failed; node {m.metadata.src_node_id}: "
                f"{m.error.reason}"
            )
        for m in errors:
            failure = {"round": r, "node": m.metadata.src_node_id, "reason": m.error.reason}
            self.failures.append(failure)
            self._warn(f"round {r}: client on node {failure['node']} failed and is left out "
                       f"of the aggregate: {failure['reason']}")
        ok = [m for m in replies if not m.has_error()]
        for m in ok:
            c = _metrics(m).get(CLIENT_KEY)
            if c is not None:
                self._clients[m.metadata.src_node_id] = int(c)
        withheld = [m for m in ok if is_withheld(m)]
        kept = [m for m in ok if not is_withheld(m)]
        for m in sorted(ok, key=self._client):
            rec = m.content.config_records.get(SELFCHECK_KEY)
            if rec is not None:
                self._selfcheck(json.loads(str(rec["record"])))
        if self._scheduled(r):
            for m in sorted(kept, key=self._client):
                c = self._client(m)
                if self._audited(c) and (r, c) not in self.done:
                    self._audit(r, c, m)
        self.rounds[r] = {
            "clients": sorted(self._client(m) for m in replies),
            "withheld": sorted(self._client(m) for m in withheld),
        }
        self.aggregated[r] = len(kept)
        if withheld:
            self._warn(f"round {r}: client(s) {self.rounds[r]['withheld']} withheld their "
                       "update (fedleak self-check) and are left out of the aggregate")
        if not kept:
            self._warn(f"round {r}: no client update to aggregate ({len(errors)} failed, "
                       f"{len(withheld)} withheld): the global model stays unchanged",
                       logging.ERROR)
        for m in kept:  # fedleak's bookkeeping stays out of the app's metric aggregates
            strip_fedleak_metrics(m)
        arrays, metrics = self.strategy.aggregate_train(r, kept)
        if arrays is not None and self.restore_dtypes and kept:
            arrays = self._restore_dtypes(r, arrays, kept)
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round + self.offset, replies)

    # --- audit --------------------------------------------------------------------------------
    def _client(self, msg: Message) -> int:
        node = msg.metadata.src_node_id
        c = _metrics(msg).get(CLIENT_KEY) if not msg.has_error() else None
        return int(c) if c is not None else self._clients.get(node, node)

    def _scheduled(self, r: int) -> bool:
        s = self.schedule
        return r >= s.start and (r - s.start) % s.every == 0

    def _audited(self, c: int) -> bool:
        return self.schedule.clients == "all" or c in self.schedule.clients

    def _selfcheck(self, record: dict[str, Any]) -> None:
        self.selfchecks.append(record)
        if self.out is not None:
            append_jsonl(self.out / "selfcheck.jsonl", record)

    def _restore_dtypes(self, r: int, arrays: ArrayRecord, kept: Sequence[Message]) -> ArrayRecord:
        glob = self._global[r]
        out = ArrayRecord(dict(arrays))
        for k, g in glob.items():
            if k not in out or out[k].dtype == g.dtype:
                continue
            dtype = np.dtype(g.dtype)
            if np.issubdtype(dtype, np.integer):
                values = [next(iter(m.content.array_records.values()))[k].numpy() for m in kept]
                out[k] = Array(np.asarray(np.max(np.stack(values), axis=0), dtype=dtype))
            else:
                out[k] = Array(np.asarray(out[k].numpy(), dtype=dtype))
        return out

    def update_of(self, r: int, msg: Message, model: nn.Module) -> fedleak.ClientUpdate:
        """The update behind a reply, as the server sees it (training details: level C)."""
        c = self._client(msg)
        metrics = _metrics(msg)
        n = metrics.get(NUM_EXAMPLES)
        sent = self._sent.get(r, {}).get(msg.metadata.src_node_id, {})
        if self.client_training:
            sent = {**sent, **{TRAIN_KEYS[k]: v for k, v in self.client_training.items()}}
        meta_rec = msg.content.config_records.get(META_KEY)
        if n is not None and any(k in sent for k in TRAIN_KEYS.values()):
            training = derive_training(train_options(sent), int(n), model)
        elif meta_rec is not None and "training" in meta_rec:
            training = parse_meta(meta_rec)["training"]
        else:
            raise ConfigError(
                f"round {r}, client {c}: the audit needs the client's training details (level "
                "C): send lr / local-epochs / batch-size in the train config, or have the client "
                f"report them ({META_KEY})."
            )
        arrays = next(iter(msg.content.array_records.values()))
        return from_arrays(
            arrays,
            base=self._global[r],
            params=model,
            kind="gradient" if training.protocol == "fedsgd" else "delta",
            training=training,
            num_samples=int(n) if n is not None else training.batch_size,
            client_id=str(c),
            round=r,
        )

    def _assumed(self, r: int, msg: Message, model: nn.Module) -> list[str]:
        """Training settings neither the sent config nor ``client_training`` gave."""
        if META_KEY in msg.content.config_records:
            return []  # the client reported its training itself
        sent = self._sent.get(r, {}).get(msg.metadata.src_node_id, {})
        given = set(sent) | {TRAIN_KEYS[k] for k in self.client_training}
        keys = ("protocol", "local-epochs", "batch-size", "optimizer", "momentum", "bn-mode")
        if "local-steps" in given:
            keys = tuple(k for k in keys if k != "local-epochs")
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            keys = tuple(k for k in keys if k != "bn-mode")
        return [k for k in keys if k not in given]

    def _audit(self, r: int, c: int, msg: Message) -> None:
        with torch_threads(self.threads):
            self._audit_one(r, c, msg)

    def _audit_one(self, r: int, c: int, msg: Message) -> None:
        s = self.schedule
        model = self.model_fn()
        model.load_state_dict(state_from_arrays(self._global[r]))
        update = self.update_of(r, msg, model)
        assumed = self._assumed(r, msg, model)
        tr0 = update.training
        if assumed and tr0 is not None:
            text = (f"fedleak audit assumed what the server does not know: {', '.join(assumed)} "
                    f"not sent, so the client is taken to run {tr0.protocol} with "
                    f"{tr0.local_steps} step(s) of batch {tr0.batch_size}, {tr0.optimizer} "
                    f"momentum {tr0.momentum:g}, BatchNorm {tr0.bn_mode}; if it trains "
                    "otherwise, pass AuditStrategy(client_training={...})")
            if text not in self.warned:
                self.warned.add(text)
                self._warn(text)
        model, update, findings = adapt_for_audit(
            model, update, image_shape=self.image_shape, transform=self.input_transform,
            assumed=[f"{k} (not sent)" for k in assumed],
        )
        for f in findings:
            if f["level"] != "info" and f["check"] != "assumed":
                key = f"{f['check']}: {f['message']}"
                if key not in self.warned:
                    self.warned.add(key)
                    self._warn(f"fedleak preflight, round {r} client {c}: {key}")
        images = labels = None
        if self.truth is not None:
            images, labels = self.truth(c)
            from fedleak.models.adapter import check_pixels

            check_pixels(images, "truth images")
        threat = ThreatModel(
            s.threat,
            labels=labels if s.grant_labels else None,
            prior=self.prior if s.attacker_prior else None,
        )
        iters = int(s.options.get("iterations", 1000))
        label = f"attack: round {r}, client {c}"
        ctx = self.progress_factory(label, iters) if self.progress_factory else None
        prog = ctx.__enter__() if ctx else None
        name = route_attack(s.attack, update, s.options)  # shuffled epochs: fedavg-epochs
        try:
            rec = fedleak.attack(
                name,
                model,
                update,
                threat=threat,
                progress=prog,
                seed=self.seed * 1_000_003 + r * 7_919 + c,
                truth=None if images is None else (images, labels),  # the fit check only
                **s.options,
            )
        finally:
            if ctx:
                ctx.__exit__(None, None, None)
        tr = update.training
        n = update.num_samples or rec.images.shape[0]
        grid = f"grids/r{r:03d}_c{c}.png"
        record: dict[str, Any] = {
            "round": r,
            "client": c,
            "num_images": n,
            "batch_size": tr.batch_size if tr else None,
            "local_steps": tr.local_steps if tr else None,
            "attack": name,
            "threat": s.threat,
            **dict.fromkeys(("psnr", "ssim", "mse", "flat_psnr", "rdlv", "label_accuracy")),
            "attack_loss": rec.restart_losses[rec.best_restart],
            **fit_fields(rec.fit),
            "iterations": rec.iterations,
            "seconds": round(rec.seconds, 2),
            "filters": self.filters,
            "grid": grid,
            "assumed": assumed,
            "preflight": [f for f in findings if f["level"] != "info"],
        }
        if images is not None:
            sc = fedleak.score(rec, images, labels=labels, prior=self.prior)
            record.update(
                {k: sc.get(k) for k in ("psnr", "ssim", "mse", "flat_psnr", "rdlv")},
                label_accuracy=sc.get("label_accuracy"),
                psnr_per_image=sc["psnr_per_image"],
                ssim_per_image=sc["ssim_per_image"],
            )
            order = [i for i, _ in sorted(sc["pairing"], key=lambda p: p[1])]
            rows, titles = [images[:16], rec.images[order][:16]], ["original", "reconstruction"]
            captions: list[Any] = [None, [f"{p:.1f} dB" for p in sc["psnr_per_image"][:16]]]
            title = f"r{r} c{c}: {sc['psnr']:.1f} dB"
            msg_scores = (
                f"PSNR {sc['psnr']:.2f} dB (flat {sc['flat_psnr']:.2f}), SSIM {sc['ssim']:.3f}"
            )
        else:
            labels_rec = rec.labels.tolist() if rec.labels is not None else None
            record.update(recovered_labels=labels_rec, label_method=rec.label_method)
            rows, titles = [rec.images[:16]], ["reconstruction"]
            captions = [[f"label {y}" for y in labels_rec[:16]] if labels_rec else None]
            title = f"r{r} c{c}: attack loss {record['attack_loss']:.3g}"
            msg_scores = f"attack loss {record['attack_loss']:.4g}, labels {labels_rec}"
        if self.out is not None:
            save_grid(self.out / grid, rows, row_titles=titles, captions=captions, title=title)
            append_jsonl(self.out / "leakage.jsonl", record)
        self.records.append(record)
        self.done.add((r, c))
        if self.out is not None:
            self._write_csv()
        self.log(f"round {r} client {c} ({n} images): {msg_scores}")

    def _write_csv(self) -> None:
        from fedleak.report import read_jsonl

        assert self.out is not None
        rows = read_jsonl(self.out / "leakage.jsonl")
        with (self.out / "leakage.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LEAKAGE_FIELDS, extrasaction="ignore")
            w.writeheader()
            for row in rows:
                w.writerow(row)


class SeededFedAvg(FedAvg):
    """FedAvg whose sampling and per-client training match fedleak's in-process engine.

    Clients are identified by their partition id (asked once with a ``query`` message that the
    ClientApp answers with a ``partition-id`` metric). Each round samples ``clients_per_round``
    of ``num_clients`` with ``round_generator(seed, round)`` and sends client ``c`` the train
    config updated with ``client_train[c]`` (:func:`fedleak.fl.local_update` options).
    """

    def __init__(
        self,
        num_clients: int,
        *,
        clients_per_round: int | None = None,
        seed: int = 0,
        client_train: Mapping[int, Mapping[str, Any]] | None = None,
        timeout: float = 600.0,
        **fedavg: Any,
    ) -> None:
        fedavg.setdefault("fraction_evaluate", 0.0)
        super().__init__(
            min_train_nodes=clients_per_round or num_clients,
            min_available_nodes=num_clients,
            **fedavg,
        )
        self.num_clients = num_clients
        self.clients_per_round = clients_per_round or num_clients
        self.seed = seed
        self.client_train = {int(k): dict(v) for k, v in (client_train or {}).items()}
        self.timeout = timeout
        self._nodes: dict[int, int] = {}  # partition id -> node id

    def nodes(self, grid: Grid) -> dict[int, int]:
        """Partition id -> node id, asked of every node once."""
        if len(self._nodes) == self.num_clients:
            return self._nodes
        node_ids, _ = sample_nodes(grid, self.num_clients, self.num_clients)
        asks = [
            Message(
                RecordDict({"config": ConfigRecord({"fedleak.ask": "partition-id"})}),
                dst_node_id=nid,
                message_type=MessageType.QUERY,
            )
            for nid in node_ids
        ]
        for reply in grid.send_and_receive(asks, timeout=self.timeout):
            if reply.has_error():
                raise RuntimeError(
                    f"node {reply.metadata.src_node_id} did not say its partition id: "
                    f"{reply.error.reason}"
                )
            pid = int(_metrics(reply)["partition-id"])
            self._nodes[pid] = reply.metadata.src_node_id
        missing = sorted(set(range(self.num_clients)) - set(self._nodes))
        if missing:
            raise RuntimeError(
                f"no node holds partition(s) {missing}; start one SuperNode per partition with "
                "--node-config 'partition-id=K num-partitions=N'."
            )
        return self._nodes

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        nodes = self.nodes(grid)
        chosen = sample_clients(
            self.num_clients, self.clients_per_round, round_generator(self.seed, server_round)
        )
        messages = []
        for c in chosen:
            cfg = merge_train(config, self.client_train.get(c, {}))
            cfg["server-round"] = server_round
            content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: cfg})
            messages.append(
                Message(content=content, dst_node_id=nodes[c], message_type=MessageType.TRAIN)
            )
        return messages
