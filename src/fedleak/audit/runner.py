"""Run a federation and audit it: attack chosen clients' updates at chosen rounds, score, stream.

Results are written as they are produced (JSONL and CSV per audited update, a grid per update,
the global model after every round), so a stopped audit loses nothing and ``resume=True``
continues it: finished rounds are not retrained and finished attacks are not rerun.
"""

from __future__ import annotations

import copy
import csv
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import fedleak
from fedleak.attacks.fedavg_epochs import route_attack
from fedleak.audit.config import AuditConfig, ClientSpec
from fedleak.audit.selfcheck import SelfCheck
from fedleak.data import ImageDataset, load_dataset, partition, resize, to_channels
from fedleak.defenses import compose, make_filter
from fedleak.device import resolve_device
from fedleak.engines import ENGINE_KEY, Engine, EngineStatus, PlacementLog, make_engine
from fedleak.errors import ConfigError, DataError
from fedleak.fl import ClientData, ClientUpdate, ThreatModel, federate, local_update
from fedleak.models import build_model
from fedleak.report import append_jsonl, read_jsonl, save_grid, write_config, write_json
from fedleak.report.run import RunLock, fit_fields

LEAKAGE_FIELDS = [
    "round",
    "client",
    "num_images",
    "batch_size",
    "local_steps",
    "attack",
    "threat",
    "psnr",
    "ssim",
    "mse",
    "flat_psnr",
    "rdlv",
    "label_accuracy",
    "t_accuracy",
    "attack_loss",
    "fit",
    "fit_attack_objective",
    "fit_truth_objective",
    "fit_attack_residual",
    "fit_truth_residual",
    "iterations",
    "seconds",
    "filters",
    "grid",
]


def load_prior(spec: str, public: ImageDataset) -> torch.Tensor | None:
    """The RDLV reference image: the mean public image, none, or a user's image file."""
    if spec == "none":
        return None
    if spec == "mean":
        return public.images.mean(0)
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"{path}: prior image not found (use 'mean', 'none' or an image file).")
    from skimage import io

    try:
        arr = io.imread(path)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means a bad file
        raise DataError(f"{path}: not a readable image ({type(exc).__name__}).") from None
    img = torch.tensor(arr, dtype=torch.float32)
    img = img / 255.0 if img.max() > 1 else img
    img = img[None, None] if img.ndim == 2 else img.permute(2, 0, 1)[None]
    c, h, w = public.image_shape
    return resize(to_channels(img[:, :3] if img.shape[1] > 3 else img, c), (h, w))[0]


def generative_prior_options(
    cfg: AuditConfig, public: ImageDataset, out: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """``{"prior_model": ...}`` for a classification audit whose attack is generative-prior.

    The attacker's DDPM prior (threat level D): the user's saved model (``prior_model`` in
    ``audit.options``, or ``diffusion.prior_model``), else one trained on the public split with
    ``diffusion.schedule``, ``prediction`` and ``prior_steps`` and kept in the run folder, so
    that a resume reuses it. Loaded and checked against the clients' image shape here, before
    the federation starts. Empty for every other attack.
    """
    if cfg.audit.attack != "generative-prior":
        return {}
    from fedleak.attacks.diffusion import resolve_prior
    from fedleak.attacks.generative import check_prior_shape
    from fedleak.diffusion import prior_for

    dif, who = cfg.diffusion, "attack 'generative-prior'"
    given = cfg.audit.options.get("prior_model", dif.prior_model)
    if given is None:  # trained once, reused on resume
        prior = prior_for(
            None, public.images, cache=out / "prior_model.pt", schedule=dif.schedule,
            prediction=dif.prediction, steps=dif.prior_steps, seed=cfg.seed,
            flip=cfg.data.name == "lfw-faces", log=log, device=resolve_device(cfg.device),
        )
    else:  # the user's file: any schedule (the attack samples with the prior's own)
        prior = resolve_prior(given, who)
    check_prior_shape(prior, public.image_shape, who)
    return {"prior_model": prior}


def _diffusion_federation(
    cfg: AuditConfig,
    train: ImageDataset,
    public: ImageDataset,
    truth: dict[tuple[int, str], torch.Tensor],
    out: Path,
    log: Callable[[str], None],
) -> tuple[
    nn.Module, Callable[..., ClientUpdate], Callable[[nn.Module], float], dict[str, Any]
]:
    """Seed 002's federation: the UNet, a diffusion trainer and the test-loss utility.

    The attacker's prior model (gidm, gidm-plus) joins the attack options here: the user's
    file, or one trained on the public split and kept in the run folder for resumes.
    """
    from fedleak.diffusion import (
        NoiseSchedule,
        UNet,
        UNetConfig,
        diffusion_test_loss,
        diffusion_trainer,
        prior_for,
    )

    dif = cfg.diffusion
    schedule = NoiseSchedule.from_spec(dif.schedule)
    c, h, w = train.image_shape
    if h != w:
        raise ConfigError(f"the UNet needs square images; {cfg.data.name!r} gives {h}x{w}.")
    unet = UNetConfig.from_dict(
        {"image_size": h, "in_channels": c, "num_timesteps": schedule.steps, **cfg.model.options}
    )
    model = UNet(unet)
    trainer = diffusion_trainer(
        schedule=schedule, prediction=dif.prediction, share_noise=dif.share_noise, truth=truth
    )
    extra: dict[str, Any] = {}
    if cfg.audit.attack == "diffusion-ig" and not dif.share_noise:
        extra["joint_noise"] = cfg.audit.options.get("joint_noise", True)  # eps and t private
    if cfg.audit.attack in ("gidm", "gidm-plus") and "prior_model" not in cfg.audit.options:
        extra["prior_model"] = prior_for(
            dif.prior_model, public.images, cache=out / "prior_model.pt", schedule=schedule,
            prediction=dif.prediction, steps=dif.prior_steps, seed=cfg.seed,
            flip=cfg.data.name == "lfw-faces", log=log, device=resolve_device(cfg.device),
        )

    def evaluate(m: nn.Module) -> float:
        return diffusion_test_loss(
            m, public.images, schedule=schedule, prediction=dif.prediction, seed=cfg.seed
        )

    return model, trainer, evaluate, extra


def planned_iterations(attack: str, options: dict[str, Any]) -> int:
    """The iterations an attack will run with ``options``: the progress bar's total."""
    from fedleak.attacks import ATTACKS

    cls = ATTACKS.get(attack)

    def opt(key: str) -> int:
        return int(options.get(key, getattr(cls, key, 0) or 0))

    if hasattr(cls, "phase1_iterations"):
        return opt("phase1_iterations") + opt("phase2_iterations")
    return opt("iterations") or 1000


def _write_csv(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LEAKAGE_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow(r)


def federation_data(cfg: AuditConfig) -> tuple[ImageDataset, ImageDataset, list[torch.Tensor]]:
    """The training split, the public (test) split and each client's indices, as configured.

    Shared by the in-process engine and the Flower apps, so both federate the same clients.
    """
    train = load_dataset(cfg.data.name, size=cfg.data.size, channels=cfg.data.channels)
    public = load_dataset(
        cfg.data.name, size=cfg.data.size, channels=cfg.data.channels, split="test"
    )
    sizes = [c.images for c in cfg.federation.clients]
    if sum(sizes) > len(train):
        raise ConfigError(
            f"the clients hold {sum(sizes)} images but {cfg.data.name!r} has {len(train)} "
            "training images; reduce `federation.clients[*].images`."
        )
    parts = partition(train.labels, len(sizes), scheme="sizes", sizes=sizes, seed=cfg.seed)
    return train, public, parts


def client_training(spec: ClientSpec) -> dict[str, Any]:
    """A client's own local-training options (its unset fields fall back to ``train``)."""
    own = {
        k: v
        for k, v in (
            ("batch_size", spec.batch_size),
            ("local_epochs", spec.local_epochs),
            ("local_steps", spec.local_steps),
            ("lr", spec.lr),
        )
        if v is not None
    }
    if "local_steps" in own:
        own["local_epochs"] = None
    return own


def _with_defaults(saved: Any, default: Any) -> Any:
    """``saved`` with every key it lacks (at any depth) taken from ``default``."""
    if not (isinstance(saved, dict) and isinstance(default, dict)):
        return saved
    return {**default, **{k: _with_defaults(v, default.get(k)) for k, v in saved.items()}}


def _differences(old: Any, new: Any, path: str = "") -> list[str]:
    """The dotted keys where two saved configs differ (for the refusal's message)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in _differences(old.get(k), new.get(k), f"{path}{k}.")]
    return [] if old == new else [path.rstrip(".") or "(root)"]


def check_resume(out: Path, cfg: AuditConfig, resume: bool) -> None:
    """Resume only the same config, and never overwrite an audit."""
    cfg_path = out / "config.json"
    if resume:
        if not cfg_path.is_file():
            raise ConfigError(f"{out}: nothing to resume (no config.json); drop --resume.")
        old = json.loads(cfg_path.read_text()).get("audit_config") or {}
        new = json.loads(json.dumps(cfg.to_dict()))
        # a run saved by an older fedleak lacks the keys added since: they held their defaults
        # (filled on both sides: free-form sections such as federation.train omit defaults)
        default = json.loads(json.dumps(AuditConfig().to_dict()))
        old, new = _with_defaults(old, default), _with_defaults(new, default)
        old.pop(ENGINE_KEY, None), new.pop(ENGINE_KEY, None)  # any engine may resume an audit
        if old != new:
            keys = sorted(_differences(old, new))
            raise ConfigError(
                f"{out}: the config differs from the one this run started with "
                f"({', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}); resume with the "
                "same config or choose another --out."
            )
    elif (out / "leakage.jsonl").exists() or (out / "state.pt").exists():
        raise ConfigError(f"{out} already holds an audit; pass --resume or choose another --out.")


def restore_rounds(out: Path, model: nn.Module, resume: bool) -> int:
    """The round to start from: on resume, load the global model of the last finished round
    (``state.pt``) into ``model`` and drop any later round records; else round 1."""
    start_round = 1
    state_path = out / "state.pt"
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        start_round = int(state["round"]) + 1
    rounds_done = [r for r in read_jsonl(out / "rounds.jsonl") if r["round"] < start_round]
    (out / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds_done))
    return start_round


def audit_update(
    cfg: AuditConfig,
    r: int,
    c: int,
    global_model: nn.Module,
    update: ClientUpdate,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    attack_options: dict[str, Any],
    prior: torch.Tensor | None,
    true_t: torch.Tensor | None = None,
    progress: Any = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Attack client ``c``'s round-``r`` update and score it against its ``images``.

    The unit of work every engine runs (in this process or as a Ray task): it writes nothing
    and returns the ``leakage.jsonl`` record and the grid to draw at ``record["grid"]``
    (``save_grid`` arguments), for the driver to write. ``global_model``: the model the client
    started from; ``true_t``: a diffusion client's private timesteps (scoring only).
    """
    aud = cfg.audit
    diffusion = cfg.task == "diffusion"
    threat = ThreatModel(
        aud.threat,
        labels=labels if aud.grant_labels else None,
        prior=prior if aud.attacker_prior else None,
    )
    name = route_attack(aud.attack, update, attack_options)  # shuffled epochs: fedavg-epochs
    rec = fedleak.attack(
        name,
        global_model,
        update,
        threat=threat,
        progress=progress,
        seed=cfg.seed * 1_000_003 + r * 7_919 + c,
        truth=(images, None if diffusion else labels),  # for the fit check only
        **attack_options,
    )
    s = fedleak.score(rec, images, labels=None if diffusion else labels, prior=prior)
    grid = f"grids/r{r:03d}_c{c}.png"
    matched = rec.images[[i for i, _ in sorted(s["pairing"], key=lambda p: p[1])]]
    shown = slice(0, 16)
    picture = {
        "rows": [images[shown], matched[shown]],
        "row_titles": ["original", "reconstruction"],
        "captions": [None, [f"{p:.1f} dB" for p in s["psnr_per_image"][:16]]],
        "title": f"r{r} c{c}: {s['psnr']:.1f} dB",
    }
    tr = update.training
    record = {
        "round": r,
        "client": c,
        "num_images": len(images),
        "batch_size": tr.batch_size if tr else None,
        "local_steps": tr.local_steps if tr else None,
        "attack": name,
        "threat": aud.threat,
        "psnr": s["psnr"],
        "ssim": s["ssim"],
        "mse": s["mse"],
        "flat_psnr": s["flat_psnr"],
        "rdlv": s.get("rdlv"),
        "label_accuracy": s.get("label_accuracy"),
        "attack_loss": rec.restart_losses[rec.best_restart],
        **fit_fields(rec.fit),
        "iterations": rec.iterations,
        "seconds": round(rec.seconds, 2),
        "filters": ", ".join(f.name for f in cfg.filters) or "none",
        "grid": grid,
        "psnr_per_image": s["psnr_per_image"],
        "ssim_per_image": s["ssim_per_image"],
    }
    if true_t is not None and "t" in rec.extras:
        from fedleak.diffusion import t_accuracy

        record["t_accuracy"] = t_accuracy(rec.extras["t"], true_t, s["pairing"])
    for f in cfg.filters:
        if f.name == "gaussian":
            record["sigma0"] = f.options.get("sigma0")
    return record, picture


def run_audit(
    cfg: AuditConfig,
    out: str | Path,
    *,
    resume: bool = False,
    log: Callable[[str], None] = lambda m: None,
    progress_factory: Any = None,
    status: Callable[[EngineStatus], None] | None = None,
) -> dict[str, Any]:
    """Run the audit described by ``cfg`` into the folder ``out``; returns a summary.

    The federation runs here, round after round; the audited attacks run on ``cfg.engine``
    (``local``: here, each when its update arrives; ``ray``: as Ray tasks, while the
    federation goes on; ``flower``: :func:`fedleak.integrations.flower.run_flower_audit`).
    ``progress_factory(label, iterations)``: a bar per attack (local engine); ``status``:
    called with the engine's :class:`~fedleak.engines.EngineStatus` as attacks end.
    """
    cfg.validate()  # a config changed after load_config is checked too, before anything runs
    check_resume(Path(out), cfg, resume)  # before a Ray starts
    with RunLock(out):  # one run per folder
        if cfg.engine.name == "flower":
            from fedleak.integrations.flower import run_flower_audit

            return run_flower_audit(
                cfg, out, resume=resume, log=log, progress_factory=progress_factory
            )
        with make_engine(cfg.engine, progress_factory=progress_factory) as engine:
            return _run_audit(cfg, out, engine, resume=resume, log=log, status=status)


def _run_audit(
    cfg: AuditConfig,
    out: str | Path,
    engine: Engine,
    *,
    resume: bool = False,
    log: Callable[[str], None] = lambda m: None,
    status: Callable[[EngineStatus], None] | None = None,
) -> dict[str, Any]:
    """The body of :func:`run_audit` on an open engine."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_resume(out, cfg, resume)
    write_config(out, {"audit_config": cfg.to_dict()}, "audit")
    t0 = time.perf_counter()
    fed, aud, sc = cfg.federation, cfg.audit, cfg.selfcheck
    train, public, parts = federation_data(cfg)
    clients = [
        ClientData(train.images[idx], train.labels[idx], train=client_training(spec))
        for spec, idx in zip(fed.clients, parts, strict=True)
    ]
    diffusion = cfg.task == "diffusion"
    truth: dict[tuple[int, str], torch.Tensor] = {}  # diffusion: each client's private t
    torch.manual_seed(cfg.seed)
    if diffusion:
        model, trainer, evaluate, extra = _diffusion_federation(
            cfg, train, public, truth, out, log
        )
    else:
        model = build_model(
            cfg.model.name,
            input_shape=train.image_shape,
            num_classes=train.num_classes,
            **cfg.model.options,
        )
        trainer, evaluate = local_update, None
        extra = generative_prior_options(cfg, public, out, log)
    model.to(resolve_device(cfg.device))  # clients train and attacks run where the model is
    attack_options = {**aud.options, **extra}
    prior = load_prior(aud.prior, public)
    if sc.enabled and sc.rdlv_threshold is not None and prior is None:
        raise ConfigError("`selfcheck.rdlv_threshold` needs a prior: set `audit.prior` to 'mean'.")
    filters = (
        compose([make_filter(f.name, **f.options) for f in cfg.filters]) if cfg.filters else None
    )
    places = PlacementLog(out, engine.name)

    # resume: the global model after the last finished round, and what was already done
    start_round = restore_rounds(out, model, resume)
    state_path = out / "state.pt"
    leakage = read_jsonl(out / "leakage.jsonl")
    done = {(r["round"], r["client"]) for r in leakage}
    checks = {(r["round"], r["client"]): r for r in read_jsonl(out / "selfcheck.jsonl")}
    if start_round > fed.rounds:
        log(f"{out}: all {fed.rounds} rounds are already done.")

    audited = set(range(len(clients))) if aud.clients == "all" else set(aud.clients)

    def scheduled(r: int) -> bool:
        return r >= aud.start and (r - aud.start) % aud.every == 0

    n_attacks = sum(
        1 for r in range(1, fed.rounds + 1) if scheduled(r) for c in audited if (r, c) not in done
    )
    counter, n_before = {"n": 0}, len(done)

    def write(f: Any) -> None:  # the one writer of every engine's results
        if f.error is not None:
            raise f.error
        record, picture = f.value
        save_grid(out / record["grid"], picture.pop("rows"), **picture)
        append_jsonl(out / "leakage.jsonl", record)
        leakage.append(record)
        _write_csv(out / "leakage.csv", leakage)
        done.add((record["round"], record["client"]))
        places.add(f)
        log(
            f"round {record['round']} client {record['client']} ({record['num_images']} images): "
            f"PSNR {record['psnr']:.2f} dB (flat {record['flat_psnr']:.2f}), "
            f"SSIM {record['ssim']:.3f}"
            + (f", RDLV {record['rdlv']:.3f}" if record.get("rdlv") is not None else "")
            + (f", t accuracy {record['t_accuracy']:.0%}" if "t_accuracy" in record else "")
            + f", fit: {record['fit']}"
        )

    def collect(block: bool) -> None:
        for f in engine.wait(block):
            write(f)
        if status:
            status(engine.status(n_before + n_attacks, n_before))

    def on_update(r: int, c: int, update: ClientUpdate, global_model: nn.Module) -> None:
        if not scheduled(r) or c not in audited or (r, c) in done:
            return
        data = clients[c]
        counter["n"] += 1
        label = f"attack {counter['n']}/{n_attacks}: round {r}, client {c}"
        routed = route_attack(aud.attack, update, attack_options)  # shuffled: fedavg-epochs
        engine.submit(
            (r, c),
            audit_update,
            (cfg, r, c, global_model, update, data.images, data.labels),
            {"attack_options": attack_options, "prior": prior, "true_t": truth.get((r, str(c)))},
            progress=(label, planned_iterations(routed, attack_options)),
        )
        collect(block=False)

    # the global model after each round, kept until the round's attacks are written: state.pt
    # (where a resume restarts the federation) never moves past an attack still running
    states: dict[int, dict[str, torch.Tensor]] = {}

    def checkpoint() -> None:
        busy = {key[0] for key in engine.in_flight}
        safe = [r for r in states if not any(b <= r for b in busy)]
        if safe:
            r = max(safe)
            tmp = state_path.with_suffix(".tmp")
            torch.save({"model": states[r], "round": r}, tmp)
            tmp.replace(state_path)
            for k in [k for k in states if k <= r]:
                del states[k]

    check = None
    if sc.enabled:
        check = SelfCheck(
            attack=sc.attack,
            options=sc.options,
            every=sc.every,
            start=sc.start,
            rdlv_threshold=sc.rdlv_threshold,
            ssim_threshold=sc.ssim_threshold,
            action=sc.action,
            prior=prior,
            seed=cfg.seed,
            record=lambda rec: append_jsonl(out / "selfcheck.jsonl", rec),
            skip=lambda r, c: checks.get((r, c)),
        )

    for res in federate(
        model,
        clients,
        rounds=fed.rounds,
        clients_per_round=fed.clients_per_round,
        test=None if diffusion else (public.images, public.labels),
        train=dict(fed.train),
        seed=cfg.seed,
        filters=filters,
        client_check=check,
        on_update=on_update,
        start_round=start_round,
        trainer=trainer,
    ):
        row: dict[str, Any] = {"round": res.round, "accuracy": res.accuracy}
        if evaluate is not None:
            row["test_loss"] = evaluate(model)
        row |= {"clients": res.clients, "withheld": res.withheld}
        append_jsonl(out / "rounds.jsonl", row)
        collect(block=False)
        states[res.round] = copy.deepcopy(model.state_dict())
        checkpoint()
        utility = (
            f"test loss {row['test_loss']:.4f}" if evaluate else f"test accuracy {res.accuracy:.3f}"
        )
        log(
            f"round {res.round}: {utility}"
            + (f", withheld {res.withheld}" if res.withheld else "")
        )
    while engine.in_flight:
        collect(block=True)
    checkpoint()
    rounds = read_jsonl(out / "rounds.jsonl")
    summary = {
        "task": cfg.task,
        "rounds": len(rounds),
        "final_accuracy": rounds[-1]["accuracy"] if rounds else None,
        "final_test_loss": rounds[-1].get("test_loss") if rounds else None,
        "audited_updates": len(leakage),
        "withheld": sum(len(r.get("withheld", [])) for r in rounds),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(out / "summary.json", summary)
    return summary
