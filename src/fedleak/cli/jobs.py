"""The jobs behind the CLI, as plain functions: simulate a client, attack it, write the run.

Ground truth stays here, in the simulation: attacks only get the update and the threat model;
the truth is used by the checkpoint callback (to log PSNR/SSIM progress) and by scoring after.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import fedleak
from fedleak.attacks import Checkpoint, Reconstruction
from fedleak.attacks.fedavg_epochs import route_attack
from fedleak.audit.config import DIFFUSION_ATTACKS
from fedleak.data import ImageDataset, load_dataset
from fedleak.device import resolve_device
from fedleak.errors import ConfigError
from fedleak.fl import ThreatModel
from fedleak.metrics import score_images
from fedleak.models import build_model
from fedleak.report import append_jsonl, claim_run_folder, save_grid, write_config, write_json

Progress = Callable[[int, float], None]


@dataclass
class AttackJob:
    """Everything that defines one simulated attack; saved as the run's config."""

    data: str = "lfw-faces"
    size: int | None = 32
    channels: int | None = None
    model: str = "lenet"
    model_options: dict[str, Any] = field(default_factory=dict)
    protocol: str = "fedsgd"
    num_images: int = 1
    batch_size: int | None = None
    local_steps: int | None = None
    local_epochs: int | None = None
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.0
    bn_mode: str = "train"
    attack: str = "dlg"
    attack_options: dict[str, Any] = field(default_factory=dict)
    threat: str = "C"
    grant_labels: bool = False
    prior: bool = False
    seed: int = 0
    checkpoint_every: int = 100
    task: str = "classification"  # or "diffusion": the client trains a DDPM UNet (seed 002)
    schedule: str = "cosine:16"  # diffusion: "<linear|cosine>:<T>"
    prediction: str = "v"  # diffusion: "v" or "eps"
    share_noise: bool = False  # diffusion: the client sends its eps and t in the clear
    prior_model: str | None = None  # gidm/gidm-plus: a saved prior; None: train one
    prior_steps: int = 1000  # steps of that training, on the data set's public split
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps (fedleak.device.resolve_device)

    def training(self) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "protocol": self.protocol,
            "lr": self.lr,
            "bn_mode": self.bn_mode,
        }
        if self.protocol == "fedavg":
            if self.batch_size is not None and not 1 <= self.batch_size <= self.num_images:
                raise ConfigError(
                    f"`--batch-size` must be between 1 and `--num-images` ({self.num_images}); "
                    f"got {self.batch_size}."
                )
            opts |= {
                "batch_size": self.batch_size,
                "local_steps": self.local_steps,
                "local_epochs": self.local_epochs,
                "optimizer": self.optimizer,
                "momentum": self.momentum,
            }
        elif any(v is not None for v in (self.batch_size, self.local_steps, self.local_epochs)):
            raise ConfigError(
                "`--batch-size`, `--local-steps` and `--local-epochs` need `--protocol fedavg` "
                "(FedSGD sends one gradient on all the client's images)."
            )
        return opts


def check_attack(name: str, options: dict[str, Any], level: str) -> None:
    """The attack's options against its schema and its needs against the threat level."""
    from fedleak.attacks import ATTACKS

    cls = ATTACKS.get(name)
    cls.create(**options)
    ThreatModel(level=level).check(set(cls.requires) - {"labels"}, f"attack {name!r}")


def pick_images(ds: ImageDataset, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random choice of ``n`` of the data set's images: the client's private batch."""
    if not 1 <= n <= len(ds):
        raise ConfigError(f"`num_images` must be between 1 and {len(ds)}; got {n}.")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    return ds.images[idx], ds.labels[idx]


def truth_logger(path: Path, images: torch.Tensor) -> Callable[[Checkpoint], None]:
    """A checkpoint callback that logs PSNR/SSIM against the truth, for the record only."""

    def log(cp: Checkpoint) -> None:
        s = score_images(cp.images, images)  # best-matched; never fed back to the attack
        append_jsonl(
            path,
            {
                "iteration": cp.iteration,
                "attack_loss": cp.loss,
                "psnr": s["psnr"],
                "ssim": s["ssim"],
            },
        )

    return log


def run_attack_job(
    job: AttackJob,
    out: Path,
    *,
    progress: Progress | None = None,
    command: str = "attack",
    log: Callable[[str], None] = lambda m: None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Simulate one client, attack its update, score, and write the run folder.

    Everything is validated before the folder is touched: an existing run in ``out`` is
    replaced only with ``overwrite``, and never by a run that stops at a bad option.
    """
    if job.task not in ("classification", "diffusion"):
        raise ConfigError(f"`--task` must be 'classification' or 'diffusion'; got {job.task!r}.")
    resolve_device(job.device)  # an absent device fails before anything is written
    check_attack(job.attack, job.attack_options, job.threat)
    if job.task == "diffusion":
        with claim_run_folder(out, overwrite=overwrite):
            write_config(out, asdict(job), command)
            return run_diffusion_attack_job(job, out, progress=progress, log=log)
    training = job.training()
    ds = load_dataset(job.data, size=job.size, channels=job.channels, split="train")
    torch.manual_seed(job.seed)
    model = build_model(
        job.model, input_shape=ds.image_shape, num_classes=ds.num_classes, **job.model_options
    ).to(resolve_device(job.device))
    images, labels = pick_images(ds, job.num_images, job.seed)
    update = fedleak.observe(model, images, labels, seed=job.seed, **training)
    with claim_run_folder(out, overwrite=overwrite):  # validated: now the folder is ours
        write_config(out, asdict(job), command)
        update.save(out / "update.pt")
        prior = None
        if job.prior:
            public = load_dataset(job.data, size=job.size, channels=job.channels, split="test")
            prior = public.images.mean(0)
        threat = ThreatModel(
            level=job.threat,
            labels=labels if job.grant_labels else None,
            prior=prior,
        )
        ckpt = out / "checkpoints.jsonl"
        ckpt.unlink(missing_ok=True)
        name = route_attack(job.attack, update, job.attack_options)  # shuffled: fedavg-epochs
        if name != job.attack:
            log(f"the client reshuffled over several epochs: {job.attack} -> {name}")
        rec = fedleak.attack(
            name,
            model,
            update,
            threat=threat,
            seed=job.seed,
            checkpoint_every=job.checkpoint_every,
            progress=progress,
            callback=truth_logger(ckpt, images),
            truth=(images, labels),  # for the fit check only
            **job.attack_options,
        )
        return finish_run(out, rec, images, labels, prior=prior, title=f"{name} on {job.data}")


def run_diffusion_attack_job(
    job: AttackJob, out: Path, *, progress: Progress | None = None, log: Callable[[str], None]
) -> dict[str, Any]:
    """Seed 002: one client's diffusion update, attacked; t recovery scored beside the images.

    The client's timesteps and noise are drawn here, outside the update, so that the run can
    score t recovery even when they stay private (they never reach the attack).
    """
    from fedleak.attacks import ATTACKS
    from fedleak.diffusion import (
        NoiseSchedule,
        UNet,
        UNetConfig,
        diffusion_update,
        prior_for,
        t_accuracy,
    )
    from fedleak.diffusion.client import draw_noise

    if job.attack not in DIFFUSION_ATTACKS:
        raise ConfigError(
            f"`--attack` for `--task diffusion` must be one of {', '.join(DIFFUSION_ATTACKS)}; "
            f"got {job.attack!r}."
        )
    if job.grant_labels:
        raise ConfigError("diffusion clients have no labels: drop `--grant-labels`.")
    schedule = NoiseSchedule.from_spec(job.schedule)
    ds = load_dataset(job.data, size=job.size, channels=job.channels, split="train")
    c, h, w = ds.image_shape
    if h != w:
        raise ConfigError(f"the UNet needs square images; {job.data!r} gives {h}x{w}.")
    torch.manual_seed(job.seed)
    config = {"image_size": h, "in_channels": c, "num_timesteps": schedule.steps}
    model = UNet(UNetConfig.from_dict({**config, **job.model_options}))
    model.to(resolve_device(job.device))
    images, _ = pick_images(ds, job.num_images, job.seed)
    training: dict[str, Any] = {"protocol": job.protocol, "lr": job.lr, "seed": job.seed}
    true_t = None
    if job.protocol == "fedsgd":
        if any(v is not None for v in (job.batch_size, job.local_steps, job.local_epochs)):
            raise ConfigError("`--batch-size`/`--local-steps`/`--local-epochs` need fedavg.")
        gen = torch.Generator().manual_seed(job.seed)
        true_t, eps = draw_noise(len(images), (c, h, w), schedule, gen)
        training |= {"t": true_t, "epsilon": eps}
    else:
        training |= {"local_steps": job.local_steps or 1, "batch_size": job.batch_size}
    update = diffusion_update(
        model, images, schedule=schedule, prediction=job.prediction,
        share_noise=job.share_noise, **training,
    )
    update.save(out / "update.pt")
    options = dict(job.attack_options)
    if job.attack == "diffusion-ig" and not job.share_noise:
        options.setdefault("joint_noise", True)  # private noise: optimize eps, search t
    if "surrogate_data" in ATTACKS.get(job.attack).requires and "prior_model" not in options:
        public = load_dataset(job.data, size=job.size, channels=job.channels, split="test")
        options["prior_model"] = prior_for(
            job.prior_model, public.images, cache=out / "prior_model.pt", schedule=schedule,
            prediction=job.prediction, steps=job.prior_steps, seed=job.seed,
            flip=job.data == "lfw-faces", log=log, device=resolve_device(job.device),
        )
    ckpt = out / "checkpoints.jsonl"
    ckpt.unlink(missing_ok=True)
    rec = fedleak.attack(
        job.attack,
        model,
        update,
        threat=ThreatModel(level=job.threat),
        seed=job.seed,
        checkpoint_every=job.checkpoint_every,
        progress=progress,
        callback=truth_logger(ckpt, images),
        truth=(images, None),  # for the fit check only
        **options,
    )
    phase1 = rec.extras.get("phase1_images")
    result = finish_run(
        out, rec, images, None, title=f"{job.attack} on a diffusion client",
        more={"phase 1": phase1} if torch.is_tensor(phase1) else None,
    )
    if true_t is not None and "t" in rec.extras:
        result["t_accuracy"] = t_accuracy(rec.extras["t"], true_t, result["scores"]["pairing"])
        result["true_t"] = true_t.tolist()
        write_json(out / "metrics.json", result)
    return result


def finish_run(
    out: Path,
    rec: Reconstruction,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    prior: torch.Tensor | None = None,
    title: str = "",
    name: str = "reconstruction",
    more: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Score a reconstruction and write metrics, a grid and the tensors.

    ``more`` adds grid rows indexed like ``rec.images`` (e.g. GIDM's phase-1 images), shown
    in the same best-match order as the reconstruction.
    """
    scores = fedleak.score(rec, images, labels=labels, prior=prior)
    pairs = scores["pairing"]
    order = [r for r, _ in sorted(pairs, key=lambda p: p[1])]
    captions = [f"PSNR {p:.1f}" for p in scores["psnr_per_image"]]
    rows = [images] + [v[order] for v in (more or {}).values()] + [rec.images[order]]
    titles = ["original", *(more or {}), "reconstruction"]
    save_grid(
        out / f"{name}.png",
        rows,
        row_titles=titles,
        captions=[None] * (len(rows) - 1) + [captions],
        title=title,
    )
    torch.save({"images": rec.images, "labels": rec.labels}, out / f"{name}.pt")
    result = {
        "scores": scores,
        "fit": None if rec.fit is None else rec.fit.to_dict(),
        "reconstruction": rec.summary(),
        "loss_history": rec.loss_history,
    }
    write_json(out / f"{name}.json" if name != "reconstruction" else out / "metrics.json", result)
    return result


def demo(
    out: Path, *, seed: int = 0, progress_factory=None, log=print, device: str = "auto"
) -> dict[str, Any]:
    """The main job: a small federation on lfw-faces; the server attacks one client's update.

    Four clients hold 1, 3, 8 and 24 images (faces and non-faces) and send FedSGD gradients of a
    sigmoid LeNet (the architecture DLG was shown on) for 30 rounds at lr 0.1, enough to move
    test accuracy from chance (0.5) to about 0.95 (at lr 0.01 it alternates between 0.5 and
    0.7: the bias overshoots). The server, honest but curious (threat level C: it configured
    the training), runs DLG with iDLG labels on the smallest client's first-round gradient.
    """
    t0 = time.perf_counter()
    resolve_device(device)  # an absent device fails before anything is written
    with claim_run_folder(out, overwrite=True):  # a rerun replaces the demo
        config = {
            "data": "lfw-faces",
            "size": 32,
            "model": "lenet",
            "protocol": "fedsgd",
            "lr": 0.1,
            "client_sizes": [1, 3, 8, 24],
            "rounds": 30,
            "attacked_round": 1,
            "attacked_client": 0,
            "attack": "dlg",
            "attack_options": {"iterations": 1000, "restarts": 3, "tolerance": 1e-5},
            "threat": "C",
            "seed": seed,
            "device": device,
        }
        write_config(out, config, "demo")
        train = load_dataset("lfw-faces", size=32, split="train")
        test = load_dataset("lfw-faces", size=32, split="test")
        from fedleak.data import partition
        from fedleak.fl import ClientData, federate

        parts = partition(train.labels, 4, scheme="sizes", sizes=config["client_sizes"], seed=seed)
        clients = [ClientData(train.images[p], train.labels[p]) for p in parts]
        torch.manual_seed(seed)
        model = build_model("lenet", input_shape=train.image_shape, num_classes=train.num_classes)
        captured: dict[str, Any] = {}

        def on_update(r: int, c: int, update, global_model) -> None:
            if r == config["attacked_round"] and c == config["attacked_client"]:
                captured.update(update=update, model=global_model)

        for res in federate(
            model,
            clients,
            rounds=config["rounds"],
            test=(test.images, test.labels),
            seed=seed,
            train={"protocol": "fedsgd", "lr": config["lr"]},
            on_update=on_update,
            device=device,
        ):
            append_jsonl(out / "rounds.jsonl", {"round": res.round, "accuracy": res.accuracy})
            if res.round == 1 or res.round % 5 == 0:
                log(f"round {res.round}: test accuracy {res.accuracy:.3f}")
        victim = clients[config["attacked_client"]]
        captured["update"].save(out / "update.pt")
        ckpt = out / "checkpoints.jsonl"
        ckpt.unlink(missing_ok=True)
        with progress_factory("DLG on client 0", config["attack_options"]["iterations"]) as prog:
            rec = fedleak.attack(
                "dlg",
                captured["model"],
                captured["update"],
                threat=ThreatModel("C"),
                seed=seed,
                progress=prog,
                callback=truth_logger(ckpt, victim.images),
                truth=(victim.images, victim.labels),  # for the fit check only
                **config["attack_options"],
            )
        result = finish_run(
            out,
            rec,
            victim.images,
            victim.labels,
            title="DLG on a FedSGD update of an lfw-faces client (1 image)",
        )
        result["seconds_total"] = round(time.perf_counter() - t0, 1)
        write_json(out / "metrics.json", result)
        return result
