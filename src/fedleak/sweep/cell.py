"""One sweep cell: train with a defense (utility), probe one client's update (leakage).

Runs in a worker process (spawned: nothing but plain data crosses the boundary) and returns one
JSON-ready record; the parent process writes it. Utility is client 0's test accuracy and macro
F1 after a small federation trained with the defense. Leakage: client 0 (the victim) sends an
update on ``attack.num_images`` of its images after ``attack.local_epochs`` local epochs,
trained with the same defense, from the global model at the start of ``attack.round``; the
attack rebuilds the images, which are scored best-matched (MSE/PSNR/SSIM) and labelled by the
undefended classifier (semantic leakage).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import fedleak
from fedleak.attacks.latent_noise import plain_wins
from fedleak.data import ImageDataset, load_dataset, partition
from fedleak.defenses import SecureAggregation, TrainingDefense, make_training_defense
from fedleak.defenses.dpsgd import DPSGD
from fedleak.defenses.filters import Filter, with_reference
from fedleak.defenses.knowledge import attack_for, attacker_model, client_noise, noise_report
from fedleak.device import fast_layout, resolve_device
from fedleak.fl import ClientData, ThreatModel, federate, predict
from fedleak.fl.update import ClientUpdate
from fedleak.models import build_model
from fedleak.report import save_grid, write_json
from fedleak.report.run import fit_fields
from fedleak.sweep.config import Cell, SweepConfig, build_defense, slug

__all__ = ["classifier_path", "load_data", "run_cell", "train_classifier"]


def load_data(cfg: SweepConfig, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """Train and test splits (the test split capped at ``data.test_images``, seeded)."""
    d = cfg.data
    train = load_dataset(d.name, size=d.size, channels=d.channels, split="train")
    test = load_dataset(d.name, size=d.size, channels=d.channels, split="test")
    if d.test_images is not None and d.test_images < len(test):
        idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))
        test = test.subset(idx[: d.test_images].numpy())
    return train, test


def classifier_path(out: Path, cfg: SweepConfig, seed: int) -> Path:
    """Where the undefended classifier of (data set, seed) is cached inside the sweep folder."""
    d = cfg.data
    name = slug(f"{d.name}-{d.size}-{d.channels}-{cfg.semantic.model}-seed{seed}")
    return out / "classifiers" / f"{name}.pt"


def train_classifier(cfg: SweepConfig, seed: int, out: Path) -> dict[str, Any]:
    """Train the semantic-leakage classifier once (no defense, centrally) and cache it.

    Saved with ``torch.save(state_dict)``; loaded with ``weights_only=True``. Returns its test
    accuracy (the ceiling for semantic leakage).
    """
    path = classifier_path(out, cfg, seed)
    sem = cfg.semantic
    train, test = load_data(cfg, seed)
    torch.manual_seed(seed)
    model = build_model(
        sem.model, input_shape=train.image_shape, num_classes=train.num_classes, **sem.options
    )
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        opt = torch.optim.Adam(model.parameters(), lr=sem.lr)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(sem.epochs):
            model.train()
            order = torch.randperm(len(train), generator=gen)
            for s in range(0, len(train), sem.batch_size):
                idx = order[s : s + sem.batch_size]
                opt.zero_grad(set_to_none=True)
                logits = model(train.images[idx])
                torch.nn.functional.cross_entropy(logits, train.labels[idx]).backward()
                opt.step()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
    acc = float((predict(model, test.images) == test.labels).float().mean())
    # beside the weights, so a report of a finished run can say how good the attacker's
    # classifier is (the ceiling of semantic leakage)
    write_json(path.with_suffix(".json"), {"seed": seed, "test_accuracy": acc})
    return {"path": str(path), "test_accuracy": acc}


def _load_classifier(cfg: SweepConfig, seed: int, out: Path, shape: Any, k: int) -> nn.Module:
    sem = cfg.semantic
    model = build_model(sem.model, input_shape=shape, num_classes=k, **sem.options)
    state = torch.load(classifier_path(out, cfg, seed), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def _metrics(y_true: torch.Tensor, y_pred: torch.Tensor) -> tuple[float, float]:
    from sklearn.metrics import f1_score

    acc = float((y_true == y_pred).float().mean())
    f1 = float(f1_score(y_true.numpy(), y_pred.numpy(), average="macro", zero_division=0))
    return acc, f1


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def run_cell(config: dict[str, Any], cell: dict[str, Any], out: str) -> dict[str, Any]:
    """Run one cell and return its sweep.jsonl record (the caller writes it)."""
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    cfg = SweepConfig.from_dict(config)
    c = Cell(**cell)
    spec = cfg.defenses[c.index]
    out_dir = Path(out)
    seed = c.seed
    train_ds, test_ds = load_data(cfg, seed)
    d, fl, atk = cfg.data, cfg.fl, cfg.attack
    need = d.clients * d.images_per_client
    if need > len(train_ds):
        raise fedleak.errors.ConfigError(
            f"`data.clients` x `data.images_per_client` = {need} exceeds the {len(train_ds)} "
            f"training images of {d.name!r}."
        )
    parts = partition(
        train_ds.labels, d.clients, scheme="sizes", sizes=[d.images_per_client] * d.clients,
        seed=seed,
    )
    clients = [ClientData(train_ds.images[idx], train_ds.labels[idx]) for idx in parts]

    # the defense: a trainer (training-time defense) and maybe an update filter
    built = build_defense(spec, c.params, where=f"cell {c.id!r}")
    filt: Filter | None = None
    if isinstance(built, TrainingDefense):
        defense = built
    else:
        defense, filt = make_training_defense("none"), built
    torch.manual_seed(seed)
    base = build_model(
        cfg.model.name, input_shape=train_ds.image_shape, num_classes=train_ds.num_classes,
        **cfg.model.options,
    )
    # channels-last on the CPU before the defense's setup, so a pre-training gains from it too
    model = fast_layout(defense.prepare_model(base).to(resolve_device(cfg.device)))
    t0 = time.perf_counter()
    defense.setup(model, clients, seed=seed)
    setup_seconds = time.perf_counter() - t0

    train = {
        "protocol": "fedavg", "local_epochs": fl.local_epochs, "batch_size": fl.batch_size,
        "lr": fl.lr, "optimizer": fl.optimizer, "momentum": fl.momentum, **spec.train,
    }
    if "local_steps" in spec.train:
        train["local_epochs"] = None
    filters = filt
    if isinstance(defense, SecureAggregation):
        filters = defense.as_filter(
            num_clients=d.clients, clients_per_round=fl.clients_per_round,
            sizes=[len(cd.labels) for cd in clients], federation_seed=seed,
        )

    probe: dict[str, Any] = {}
    probes: list[dict[str, Any]] = []

    def take_probe(global_model: nn.Module, at: int | None = None) -> None:
        probes[:] = [
            _victim_update(cfg, c, defense, filt, global_model, clients, train, batch=b,
                           round=at)
            for b in range(atk.batches)
        ]
        probe.update(probes[0])

    t0 = time.perf_counter()
    if atk.round == 1:
        take_probe(model)
    curve: list[float] = []  # client 0's test accuracy per round (with a target only)
    rounds_trained = 0
    for res in federate(
        model, clients, rounds=fl.rounds, clients_per_round=fl.clients_per_round, train=train,
        seed=seed, filters=filters, trainer=defense,
    ):
        rounds_trained = res.round
        if fl.target_accuracy is not None:
            view = defense.client_model(model, "0")
            curve.append(_metrics(test_ds.labels, predict(view, test_ds.images))[0])
            if curve[-1] >= fl.target_accuracy:
                break  # the stop rule: the probe below attacks this trained model
        if res.round + 1 == atk.round:
            take_probe(model)
    if not probes:  # attack.round = fl.rounds + 1 after an early stop: the trained model
        take_probe(model, at=rounds_trained + 1)
    train_seconds = time.perf_counter() - t0

    # utility: client 0's model (its private view of the global model) on the test set
    pred = predict(defense.client_model(model, "0"), test_ds.images)
    accuracy, f1 = _metrics(test_ds.labels, pred)

    # leakage: attack the probe update
    t0 = time.perf_counter()
    leak = _knowledge_leakage(cfg, c, probes, out_dir, train_ds, defense)
    attack_seconds = time.perf_counter() - t0

    record: dict[str, Any] = {
        "id": c.id,
        "defense": c.defense,
        "method": c.method,
        "params": c.params,
        "options": spec.options,
        "seed": seed,
        "accuracy": accuracy,
        "f1": f1,
        "rounds_trained": rounds_trained,
        "probe_round": min(atk.round, rounds_trained + 1),  # the victim's round
        **leak,
    }
    if fl.target_accuracy is not None:
        record.update({"target_accuracy": fl.target_accuracy,
                       "reached_target": bool(curve and curve[-1] >= fl.target_accuracy),
                       "accuracy_curve": curve})
    if isinstance(defense, DPSGD):
        acct = defense.accounting("0")
        record.update({
            "epsilon": _finite(acct["epsilon"]),
            "delta": acct["delta"],
            "noise_multiplier": acct["noise_multiplier"],
            "max_grad_norm": acct["max_grad_norm"],
            "sample_rate": acct["sample_rate"],
            "dp_steps": acct["steps"],
            "accountant": acct["accountant"],
            "probe_epsilon": _finite(probe["dp"]["epsilon"]),
        })
    record.update({
        "setup_seconds": round(setup_seconds, 2),
        "train_seconds": round(train_seconds, 2),
        "attack_seconds": round(attack_seconds, 2),
        "seconds": round(time.perf_counter() - t_start, 2),
    })
    return record


def _victim_update(
    cfg: SweepConfig,
    c: Cell,
    defense: TrainingDefense,
    filt: Filter | None,
    global_model: nn.Module,
    clients: list[ClientData],
    train: dict[str, Any],
    batch: int = 0,
    round: int | None = None,
) -> dict[str, Any]:
    """The update(s) the attacker gets, from a copy of the defense (the FL run is untouched).

    ``batch`` b probes client 0's images b k .. (b + 1) k (k = ``attack.num_images``).
    ``round``: the round the victim trains in (default ``attack.round``; earlier after a stop
    rule ended the federation).
    """
    atk = cfg.attack
    at = atk.round if round is None else round
    k = atk.num_images
    if batch:
        clients = [ClientData(clients[0].images[batch * k:], clients[0].labels[batch * k:]),
                   *clients[1:]]
    opts = {
        **train, "local_epochs": atk.local_epochs, "local_steps": None,
        "batch_size": atk.batch_size or k,
    }
    if atk.lr is not None:
        opts["lr"] = atk.lr
    if atk.optimizer is not None:
        opts["optimizer"] = atk.optimizer
    snapshot = copy.deepcopy(global_model)
    victim = copy.deepcopy(defense)
    seed = c.seed * 1_000_003 + 12_345
    if isinstance(victim, SecureAggregation):
        cohort = list(range(min(victim.cohort, len(clients))))
        updates = {
            i: victim(snapshot, clients[i].images[:k], clients[i].labels[:k], seed=seed + i,
                      client_id=str(i), round=at, **opts)
            for i in cohort
        }
        masked = victim.mask(updates, round=at)
        images = torch.cat([clients[i].images[:k] for i in cohort])
        labels = torch.cat([clients[i].labels[:k] for i in cohort])
        agg = victim.unmask(masked, num_samples=len(labels))
        # the attacker models the cohort as one client holding all of its images
        t = updates[cohort[0]].training
        assert t is not None
        n = len(labels)
        agg = agg.replace(training=t.__class__.from_dict(
            {**t.to_dict(), "batch_size": n, "batch_sizes": [n] * t.local_steps}
        ))
        masked_corr = _correlation(masked[cohort[0]], updates[cohort[0]])
        return {"update": agg, "images": images, "labels": labels, "model": snapshot,
                "extra": {"cohort": len(cohort), "masked_correlation": masked_corr}}
    images, labels = clients[0].images[:k], clients[0].labels[:k]
    update = victim(snapshot, images, labels, seed=seed, client_id="0", round=at, **opts)
    if filt is not None:
        gen = torch.Generator().manual_seed(seed)
        update = with_reference(filt, snapshot)(update, generator=gen)
    out: dict[str, Any] = {"update": update, "images": images, "labels": labels,
                           "model": snapshot, "extra": {},
                           "noise": client_noise(victim, snapshot, "0")}
    if isinstance(victim, DPSGD):
        # the victim forks the federation's defense, so its ledger already holds client 0's
        # earlier rounds; the probe round is composed into that same Opacus accountant
        out["dp"] = {"epsilon": victim.accounting("0")["epsilon"]}
    return out


_AVERAGED = ("psnr", "ssim", "mse", "flat_psnr", "label_accuracy", "semantic_accuracy",
             "attack_loss")


def _knowledge_leakage(
    cfg: SweepConfig,
    c: Cell,
    probes: list[dict[str, Any]],
    out: Path,
    train_ds: ImageDataset,
    defense: TrainingDefense,
) -> dict[str, Any]:
    """:func:`_attack` once per attacker knowledge setting and probed batch.

    Each setting's scores are averaged over the batches and written with the prefix
    ``<knowledge>_`` (per-batch values in ``<knowledge>_<score>_batches``); the first setting's
    are also written unprefixed (the record's main row). Also records how large the client's
    noise is next to the latent (this model, and a plain default-init encoder) and, for learned
    noise, how far the pre-training moved it.
    """
    atk = cfg.attack
    result: dict[str, Any] = {"knowledge": atk.knowledge[0], "batches": len(probes)}
    noise = probes[0].get("noise")
    noiseless = noise is None or not (bool(noise[0].any()) or bool(noise[1].any()))
    done: dict[str, dict[str, Any]] = {}
    batch_runs: dict[str, list[dict[str, Any]]] = {}
    for i, know in enumerate(atk.knowledge):
        # a client without latent noise: none, distribution and exact replay the same model,
        # and the adaptive attacker, who knows the defense (Kerckhoffs) but not its secrets,
        # has no latent shift to look for: every setting is the plain attack, run once
        if noiseless and done:
            src = next(iter(done))
            same = {k: v for k, v in done[src].items() if k != "latent_pick"}
            same.update(_plain_pick(know, len(probes)))
            batch_runs[know] = batch_runs[src]
            if i == 0:
                result.update(same)
            result.update({f"{know}_{k}": v for k, v in same.items()})
            continue
        name, options = attack_for("none" if noiseless else know, atk.name, atk.options)
        # the adaptive attacker's fallback (plain IG from the same start on the same noiseless
        # replay) is the `none` attacker's run, bit for bit: reuse it instead of running it again
        reuse = (know == "adaptive" and "none" in batch_runs and not atk.extra
                 and atk.name == "inverting-gradients" and options.get("fallback", True) is True)
        if reuse:
            options = {**options, "fallback": False}
        run_cfg = dataclasses.replace(
            cfg, attack=dataclasses.replace(atk, name=name, options=options)
        )
        runs = []
        for b, pr in enumerate(probes):
            view = {**pr, "model": attacker_model(pr["model"], know, pr.get("noise"))}
            tag = "" if i == 0 and b == 0 else f"~{know}~b{b}"
            runs.append(_attack(run_cfg, dataclasses.replace(c, id=c.id + tag), view, out,
                                train_ds))
        if reuse:
            runs = [_lower_loss(shift, plain) for shift, plain in zip(runs, batch_runs["none"],
                                                                    strict=True)]
        batch_runs[know] = runs
        merged: dict[str, Any] = dict(runs[0])
        for key in _AVERAGED:
            vals = [r.get(key) for r in runs]
            nums = [v for v in vals if isinstance(v, int | float) and math.isfinite(v)]
            merged[key] = float(np.mean(nums)) if nums else None
            if len(runs) > 1:
                merged[f"{key}_batches"] = vals
        if any("latent_pick" in r for r in runs):
            merged["latent_pick"] = [r.get("latent_pick") for r in runs]
        if noiseless:
            merged.update(_plain_pick(know, len(runs)))
        done[know] = merged
        if i == 0:
            result.update(merged)
        result.update({f"{know}_{k}": v for k, v in merged.items()})
    result.update(noise_report(probes[0]["model"], probes[0]["images"], probes[0].get("noise"),
                               defense))
    return result


def _plain_pick(know: str, batches: int) -> dict[str, Any]:
    """The adaptive attacker's record on a client without latent noise: plain IG, by rule."""
    return {"latent_pick": ["plain"] * batches} if know == "adaptive" else {}


def _lower_loss(shift: dict[str, Any], plain: dict[str, Any]) -> dict[str, Any]:
    """The adaptive attacker's pick between two scored runs, by its fallback's rule."""
    a, b = shift.get("attack_loss"), plain.get("attack_loss")
    pick, run = ("plain", plain) if plain_wins(a, b) else ("shift", shift)
    return {**run, "latent_pick": pick, "latent_shift_loss": a, "latent_plain_loss": b}


def _correlation(masked: ClientUpdate, plain: ClientUpdate) -> float:
    """Pearson correlation of a masked update with the true one (about 0: it looks random)."""
    a = torch.cat([v.flatten().double() for v in masked.tensors.values()])
    b = torch.cat([plain.tensors[k].flatten().double() for k in masked.tensors])
    return float(np.corrcoef(a.cpu().numpy(), b.cpu().numpy())[0, 1])


def _attack(
    cfg: SweepConfig, c: Cell, probe: dict[str, Any], out: Path, train_ds: ImageDataset
) -> dict[str, Any]:
    atk = cfg.attack
    images, labels = probe["images"], probe["labels"]
    threat = ThreatModel(atk.threat, labels=labels if atk.grant_labels else None)
    result: dict[str, Any] = {
        "attack": atk.name, "num_images": len(labels), **probe["extra"],
    }
    classifier = None
    if cfg.semantic.enabled:
        classifier = _load_classifier(cfg, c.seed, out, train_ds.image_shape, train_ds.num_classes)
    specs = [(atk.name, atk.options, "")] + [
        (s.name, s.options, f"{s.name}_") for s in atk.extra
    ]
    for name, options, prefix in specs:
        rec = fedleak.attack(
            name, probe["model"], probe["update"], threat=threat, num_images=len(labels),
            seed=c.seed, truth=(images, labels), **options,  # truth: the fit check only
        )
        sc = fedleak.score(rec, images, labels=labels)
        part: dict[str, Any] = {
            "psnr": sc["psnr"], "ssim": sc["ssim"], "mse": sc["mse"], "flat_psnr": sc["flat_psnr"],
            "label_accuracy": sc.get("label_accuracy"), "attack_loss": _finite(
                rec.restart_losses[rec.best_restart] if rec.restart_losses else None
            ),
            "iterations": rec.iterations, **fit_fields(rec.fit),
        }
        if "latent_pick" in rec.extras:  # the adaptive attacker: did the shift or plain IG win
            part["latent_pick"] = rec.extras["latent_pick"]
        pairs = sc["pairing"]
        order = [r for r, _ in pairs]
        if classifier is not None:
            pred = predict(classifier, rec.images)
            hits = [int(pred[r]) == int(labels[o]) for r, o in pairs]
            part["semantic_accuracy"] = float(np.mean(hits)) if hits else None
        grid = out / "grids" / f"{slug(c.id)}{'-' + name if prefix else ''}.png"
        save_grid(
            grid, [images[[o for _, o in pairs]], rec.images[order]],
            row_titles=["original", "reconstruction"],
            captions=[None, [f"{p:.1f} dB" for p in sc["psnr_per_image"]]],
            title=f"{c.id}: {name}",
        )
        part["grid"] = str(grid.relative_to(out))
        result.update({f"{prefix}{k}": v for k, v in part.items()})
    return result
