"""A Flower ClientApp and ServerApp built from a fedleak :class:`AuditConfig`.

Both sides rebuild the same federation from the config (data set, size partitions, model,
prior) exactly as :func:`fedleak.audit.run_audit` does, so a Flower run and an in-process run
with the same seed train the same models. The ClientApp trains with
:func:`fedleak.fl.local_update` and sends its local model (Flower's convention); its train
function is wrapped by :class:`LeakageCheckMod` (fedleak's filters and the self-check), outermost,
before any Flower mods passed in ``mods``. :func:`serve_audit` is the ServerApp's body: an
:class:`AuditStrategy` around :class:`SeededFedAvg`, writing the in-process engine's run folder.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from torch import nn

from fedleak.audit.config import AuditConfig, from_dict
from fedleak.audit.runner import (
    check_resume,
    client_training,
    federation_data,
    generative_prior_options,
    load_prior,
    restore_rounds,
)
from fedleak.audit.selfcheck import SelfCheck
from fedleak.data import ImageDataset
from fedleak.defenses import compose, make_filter
from fedleak.defenses.filters import Compose
from fedleak.device import resolve_device
from fedleak.errors import ConfigError
from fedleak.fl import evaluate, local_update
from fedleak.integrations.flower.mod import (
    CLIENT_KEY,
    META_KEY,
    NUM_EXAMPLES,
    LeakageCheckMod,
    partition_id,
)
from fedleak.integrations.flower.records import (
    arrays_from_state,
    state_from_arrays,
    to_arrays,
    train_config_record,
    train_options,
    update_meta,
)
from fedleak.integrations.flower.strategy import AuditStrategy, SeededFedAvg
from fedleak.models import build_model
from fedleak.report import append_jsonl, read_jsonl, write_config, write_json

ClientMod = Callable[..., Message]


@dataclass
class Federation:
    """The federation an AuditConfig describes, as both Flower sides rebuild it."""

    cfg: AuditConfig
    train: ImageDataset
    public: ImageDataset
    parts: list[torch.Tensor]
    client_train: dict[int, dict[str, Any]]
    prior: torch.Tensor | None
    filters: Compose | None
    initial: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def build(cls, cfg: AuditConfig) -> Federation:
        """Load data, partition it and build the initial model as run_audit does."""
        train, public, parts = federation_data(cfg)
        client_train = {i: client_training(spec) for i, spec in enumerate(cfg.federation.clients)}
        prior = load_prior(cfg.audit.prior, public)
        sc = cfg.selfcheck
        if sc.enabled and sc.rdlv_threshold is not None and prior is None:
            raise ConfigError(
                "`selfcheck.rdlv_threshold` needs a prior: set `audit.prior` to 'mean'."
            )
        filters = (
            compose([make_filter(f.name, **f.options) for f in cfg.filters])
            if cfg.filters
            else None
        )
        out = cls(cfg, train, public, parts, client_train, prior, filters)
        torch.manual_seed(cfg.seed)
        out.initial = out.model().state_dict()
        return out

    def model(self) -> nn.Module:
        """A fresh model of the configured architecture, on the config's ``device``."""
        return build_model(
            self.cfg.model.name,
            input_shape=self.train.image_shape,
            num_classes=self.train.num_classes,
            **self.cfg.model.options,
        ).to(resolve_device(self.cfg.device))

    def client_data(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Client ``c``'s private images and labels."""
        if not 0 <= c < len(self.parts):
            raise ConfigError(
                f"client {c} has no partition: the config lists {len(self.parts)} clients; "
                "check the SuperNode's --node-config partition-id."
            )
        idx = self.parts[c]
        return self.train.images[idx], self.train.labels[idx]

    def check(self) -> SelfCheck | None:
        """The clients' self-check from ``cfg.selfcheck`` (None when disabled)."""
        sc = self.cfg.selfcheck
        if not sc.enabled:
            return None
        return SelfCheck(
            attack=sc.attack,
            options=sc.options,
            every=sc.every,
            start=sc.start,
            rdlv_threshold=sc.rdlv_threshold,
            ssim_threshold=sc.ssim_threshold,
            action=sc.action,
            prior=self.prior,
            seed=self.cfg.seed,
        )


def _key(cfg: AuditConfig) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True)


@cache
def _federation(key: str) -> Federation:
    return Federation.build(from_dict(AuditConfig, json.loads(key)).validate())


def federation(cfg: AuditConfig) -> Federation:
    """The (per-process cached) federation of ``cfg``: Ray actors and SuperNodes load it once."""
    return _federation(_key(cfg))


ConfigSource = AuditConfig | Callable[[Context], AuditConfig]


def _resolver(config: ConfigSource) -> Callable[[Context], AuditConfig]:
    if isinstance(config, AuditConfig):
        return lambda context: config
    return config


def client_mod(cfg: AuditConfig) -> LeakageCheckMod:
    """The :class:`LeakageCheckMod` for ``cfg``: its filters and self-check."""
    fed = federation(cfg)
    return LeakageCheckMod(
        model_fn=lambda context: fed.model(),
        data_fn=lambda context: fed.client_data(partition_id(context)),
        filters=fed.filters,
        check=fed.check(),
        seed=cfg.seed,
    )


def make_client_app(
    config: ConfigSource, *, mods: Sequence[ClientMod] = (), exact: bool = True
) -> ClientApp:
    """A ClientApp that trains like fedleak's in-process clients.

    ``config``: an AuditConfig, or ``context -> AuditConfig`` (e.g. from the run config).
    ``mods``: Flower mods (``fixedclipping_mod``, ``LocalDpMod(...)``) applied inside
    fedleak's mod, so the leakage check sees the update after them. ``exact``: send the local
    model in float64, so the server recovers the update bit for bit (float32, Flower's usual,
    rounds away the low bits of small updates; the AuditStrategy casts the aggregate back).
    """
    resolve = _resolver(config)
    app = ClientApp()

    def fedleak_mod(msg: Message, context: Context, call_next: Any) -> Message:
        return client_mod(resolve(context))(msg, context, call_next)

    @app.train(mods=[fedleak_mod, *mods])
    def train(msg: Message, context: Context) -> Message:
        cfg = resolve(context)
        fed = federation(cfg)
        c = partition_id(context)
        base = next(iter(msg.content.array_records.values()))
        config: dict[str, Any] = {}
        for rec in msg.content.config_records.values():
            config.update(rec)
        r = int(config.get("server-round", 0))
        model = fed.model()
        model.load_state_dict(state_from_arrays(base))
        images, labels = fed.client_data(c)
        update = local_update(
            model,
            images,
            labels,
            seed=cfg.seed * 100_003 + r * 1_009 + c,
            client_id=str(c),
            round=r,
            **train_options(config),
        )
        content = RecordDict(
            {
                "arrays": to_arrays(update, base=base, dtype=torch.float64 if exact else None),
                "metrics": MetricRecord({NUM_EXAMPLES: int(images.shape[0]), CLIENT_KEY: c}),
                META_KEY: update_meta(update),
            }
        )
        return Message(content, reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        metrics = MetricRecord({"partition-id": partition_id(context)})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def serve_audit(
    grid: Grid,
    cfg: AuditConfig,
    out: str | Path,
    *,
    resume: bool = False,
    score: bool = True,
    log: Callable[[str], None] = lambda m: None,
    progress_factory: Any = None,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """The ServerApp's body: run the audited federation on ``grid``, write the run folder.

    ``score=True`` uses the simulation-only truth hook (the server rebuilds the clients' data
    from the config, as only a simulation or a test on one machine can); ``False`` records
    attack-side quantities only.
    """
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_resume(out, cfg, resume)
    write_config(out, {"audit_config": cfg.to_dict(), "engine": "flower"}, "audit")
    fed = federation(cfg)
    fcfg = cfg.federation
    model = fed.model()
    model.load_state_dict(fed.initial)

    start_round = restore_rounds(out, model, resume)
    state_path = out / "state.pt"
    checks = [r for r in read_jsonl(out / "selfcheck.jsonl") if r["round"] < start_round]
    (out / "selfcheck.jsonl").write_text("".join(json.dumps(r) + "\n" for r in checks))
    done = {(r["round"], r["client"]) for r in read_jsonl(out / "leakage.jsonl")}
    extra = generative_prior_options(cfg, fed.public, out, log)  # its prior, before round 1
    schedule = (dataclasses.replace(cfg.audit, options={**cfg.audit.options, **extra})
                if extra else cfg.audit)

    strategy = AuditStrategy(
        SeededFedAvg(
            len(fcfg.clients),
            clients_per_round=fcfg.clients_per_round,
            seed=cfg.seed,
            client_train=fed.client_train,
            timeout=timeout,
        ),
        model_fn=fed.model,
        schedule=schedule,
        truth=fed.client_data if score else None,
        prior=fed.prior,
        out=out,
        run_folder=False,  # fedleak's own audit folder (resume, summary) is `out` itself
        seed=cfg.seed,
        filters=", ".join(f.name for f in cfg.filters) or "none",
        first_round=start_round,
        done=done,
        on_error="raise",
        log=log,
        progress_factory=progress_factory,
    )
    test = (fed.public.images, fed.public.labels)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        r = server_round + start_round - 1
        model.load_state_dict(state_from_arrays(arrays))
        acc = evaluate(model, *test)
        info = strategy.rounds.get(r, {"clients": [], "withheld": []})
        append_jsonl(
            out / "rounds.jsonl",
            {"round": r, "accuracy": acc, "clients": info["clients"], "withheld": info["withheld"]},
        )
        tmp = state_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "round": r}, tmp)
        tmp.replace(state_path)
        log(
            f"round {r}: test accuracy {acc:.3f}"
            + (f", withheld {info['withheld']}" if info["withheld"] else "")
        )
        return MetricRecord({"accuracy": acc})

    if start_round > fcfg.rounds:
        log(f"{out}: all {fcfg.rounds} rounds are already done.")
    else:
        strategy.start(
            grid=grid,
            initial_arrays=arrays_from_state(model.state_dict()),
            num_rounds=fcfg.rounds - start_round + 1,
            timeout=timeout,
            train_config=train_config_record(dict(fcfg.train)),
            evaluate_config=ConfigRecord(),
            evaluate_fn=evaluate_fn,
        )
    rounds = read_jsonl(out / "rounds.jsonl")
    summary = {
        "rounds": len(rounds),
        "final_accuracy": rounds[-1]["accuracy"] if rounds else None,
        "audited_updates": len(read_jsonl(out / "leakage.jsonl")),
        "withheld": sum(len(r.get("withheld", [])) for r in rounds),
        "seconds": round(time.perf_counter() - t0, 1),
        "engine": "flower",
    }
    write_json(out / "summary.json", summary)
    return summary


def config_from_run_config(
    run_config: dict[str, Any], *, root: str | Path | None = None
) -> AuditConfig:
    """The AuditConfig of a Flower run config (the example app's ``[tool.flwr.app.config]``).

    ``fedleak-config``: a YAML/TOML audit config file ("" = defaults; a relative path is read
    from ``root``); ``fedleak-set``: ``section.key=value`` overrides separated by ``;``;
    ``num-server-rounds`` (if > 0) sets ``federation.rounds``.
    """
    from fedleak.audit.config import load_config

    name = str(run_config.get("fedleak-config", "") or "")
    path = (Path(root) / name if root is not None else Path(name)) if name else None
    sets = [s.strip() for s in str(run_config.get("fedleak-set", "") or "").split(";")]
    overrides = [s for s in sets if s]
    rounds = int(run_config.get("num-server-rounds", 0) or 0)
    if rounds > 0:
        overrides.append(f"federation.rounds={rounds}")
    return load_config(path, overrides)


def make_server_app(
    config: Callable[[Context], AuditConfig] = lambda ctx: config_from_run_config(
        dict(ctx.run_config)
    ),
    *,
    out: Callable[[Context], str | Path] = lambda ctx: str(
        ctx.run_config.get("out-dir", "fedleak-runs/flower")
    ),
    score: Callable[[Context], bool] = lambda ctx: bool(
        ctx.run_config.get("score-with-truth", False)
    ),
    log: Callable[[str], None] = print,
) -> ServerApp:
    """A ServerApp running :func:`serve_audit` with the config, folder and scoring from the run
    config (the example app's defaults) or the given callables."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = config(context)
        serve_audit(grid, cfg, out(context), score=score(context), log=log)

    return app
