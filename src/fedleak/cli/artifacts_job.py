"""``fedleak attack`` on real artifacts: a user's model, saved global and client weights.

The job loads the model (the user's file or a built-in), the global weights, the client's
weights or gradient and the stated training settings; runs the preflight
(:mod:`fedleak.fl.preflight`) and writes it to ``metrics.json`` before any attack; refuses
errors; then attacks. The truth (``--truth``), when given, is used only for the scores and the
fit check's verdict, after the attack.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fedleak
from fedleak._config_io import read_config_file
from fedleak.errors import ConfigError, DataError
from fedleak.fl import ClientUpdate, ThreatModel
from fedleak.fl.artifacts import (
    SETTING_DEFAULTS,
    load_global_model,
    load_state,
    model_bn_buffer_names,
    training_from_settings,
    update_from_states,
)
from fedleak.fl.preflight import Preflight, preflight
from fedleak.models.adapter import (
    adapt_model,
    adapt_update,
    check_image_shape,
    check_pixels,
    input_transform,
    load_model_def,
)
from fedleak.report import claim_run_folder, save_grid, write_config, write_json

Progress = Callable[[int, float], None]


@dataclass
class ArtifactJob:
    """One audit of saved artifacts; saved as the run's config."""

    global_file: str
    client_file: str | None = None
    update_file: str | None = None
    model_def: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    model: str = "lenet"
    num_classes: int | None = None
    image_shape: tuple[int, int, int] | None = None
    training: dict[str, Any] = field(default_factory=dict)  # stated settings only
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None
    input_range: tuple[float, float] | None = None
    logits: str | None = None
    truth: str | None = None
    attack: str = "inverting-gradients"
    attack_options: dict[str, Any] = field(default_factory=dict)
    threat: str = "C"
    grant_labels: bool = False
    seed: int = 0


def parse_floats(text: str | None, what: str) -> tuple[float, ...] | None:
    """``"0.5,0.5,0.5"`` -> floats; one-line error otherwise."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"`{what}` must be comma-separated numbers; got {text!r}.") from None
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"`{what}` must be finite numbers; got {text!r}.")
    return values


def read_training(path: str | Path | None, flags: dict[str, Any]) -> dict[str, Any]:
    """Stated settings: the YAML/TOML file's, overridden by flags given on the command line."""
    settings: dict[str, Any] = dict(read_config_file(path, "training")) if path else {}
    settings |= {k: v for k, v in flags.items() if v is not None}
    known = set(SETTING_DEFAULTS) | {"shuffle", "weight_decay"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(
            f"training setting {unknown[0]!r} is unknown; valid: {', '.join(sorted(known))}."
        )
    return settings


def load_truth(spec: str, shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The client's real images (N, C, H, W) in [0, 1] and labels: a .pt/.npz or a data spec."""
    path = Path(spec)
    if path.suffix.lower() in (".pt", ".pth", ".npz") and path.is_file():
        if path.suffix.lower() == ".npz":
            try:
                with np.load(path, allow_pickle=False) as z:
                    obj = {k: torch.from_numpy(z[k]) for k in z.files}
            except (ValueError, OSError) as exc:
                raise DataError(f"{path}: not a readable .npz of arrays ({exc}).") from None
        else:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001
                raise DataError(f"{path}: not a readable tensor file ({type(exc).__name__}).") \
                    from None
        if not isinstance(obj, dict) or "images" not in obj:
            raise DataError(f"{path}: expected a mapping with `images` (and `labels`).")
        images = torch.as_tensor(obj["images"]).to(torch.get_default_dtype())
        labels = obj.get("labels")
        labels = None if labels is None else torch.as_tensor(labels).long().reshape(-1)
    else:
        from fedleak.data import load_dataset

        ds = load_dataset(spec, split="all", size=(shape[1], shape[2]), channels=shape[0])
        images, labels = ds.images, ds.labels
    if images.ndim == 3:
        images = images.unsqueeze(1)
    check_pixels(images, "--truth images")
    if tuple(images.shape[1:]) != shape:
        raise DataError(
            f"`--truth` images have shape {tuple(images.shape[1:])}, not the model's {shape}."
        )
    return images, labels


def build_user_model(job: ArtifactJob, g_state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The user's model (file:Class) or a built-in one, before the global weights are loaded."""
    if job.model_def:
        return load_model_def(job.model_def, job.model_args)
    from fedleak.models import build_model

    if job.image_shape is None:
        raise ConfigError("`--image-shape C,H,W` is needed to build a built-in model.")
    classes = job.num_classes
    if classes is None:  # the classifier is the last 2D weight of the checkpoint
        mats = [v for v in g_state.values() if v.ndim == 2]
        if not mats:
            raise ConfigError("`--num-classes` is needed: no classifier found in the checkpoint.")
        classes = int(mats[-1].shape[0])
    return build_model(job.model, input_shape=job.image_shape, num_classes=classes,
                       **job.model_args)


def describe_transform(job: ArtifactJob) -> str | None:
    if job.input_range is not None:
        return f"range {list(job.input_range)}"
    if job.input_mean is None and job.input_std is None:
        return None
    return f"mean {list(job.input_mean or (0.0,))} std {list(job.input_std or (1.0,))}"


def _per_channel(values: tuple[float, ...] | None) -> Any:
    if values is None:
        return None
    return values[0] if len(values) == 1 else list(values)


def prepare(job: ArtifactJob) -> tuple[torch.nn.Module, ClientUpdate, Preflight, list[str]]:
    """Model (adapted), update (renamed to match), preflight and adapter notes."""
    g_state = load_state(job.global_file)
    user = build_user_model(job, g_state)
    ref = list(user.state_dict())
    g_state = load_state(job.global_file, reference=ref)
    load_global_model(user, g_state)
    if job.image_shape is None:
        shape = getattr(user, "input_shape", None)
        if shape is None:
            raise ConfigError("`--image-shape C,H,W` is needed (the model does not say).")
        job.image_shape = tuple(shape)  # type: ignore[assignment]
    shape = check_image_shape(job.image_shape)  # type: ignore[arg-type]
    if (job.client_file is None) == (job.update_file is None):
        raise ConfigError("give the client's weights (--client FILE) or its update "
                          "(--update FILE), exactly one.")
    assumed: list[str] = []
    client_keys: list[str] | None = None
    if job.update_file is not None:
        update = _load_update(job, user, g_state)
        if update.training is None and job.training:
            cfg, n, assumed = training_from_settings(job.training, kind=update.kind,
                                                     num_samples=update.num_samples)
            update = update.replace(training=cfg, num_samples=n)
    else:
        client_keys = list(load_state(job.client_file, reference=ref))
        update = update_from_states(
            g_state, job.client_file, model=user, training=job.training or None, kind="delta",
        )
        _, _, assumed = training_from_settings(job.training, kind="delta")
    if not model_bn_buffer_names(user):  # no BatchNorm: its mode is no assumption
        assumed = [a for a in assumed if not a.startswith("bn_mode")]
    if update.training is None and update.kind == "delta" and job.threat >= "C":
        raise ConfigError(
            "the client's lr is needed to read its weights as an update: state --lr and the "
            "steps (--local-steps, or --local-epochs with --batch-size and --num-samples), or "
            "audit as an attacker without training details (--threat B)."
        )
    mean, std = _per_channel(job.input_mean), _per_channel(job.input_std)
    model, notes = adapt_model(user, image_shape=shape, mean=mean, std=std,
                               value_range=job.input_range, logits=job.logits)
    report = preflight(user, update, client_keys=client_keys, assumed=assumed,
                       input_transform=describe_transform(job), image_shape=shape,
                       transform=input_transform(shape[0], mean=mean, std=std,
                                                 value_range=job.input_range))
    return model, adapt_update(update, model), report, notes


def _load_update(job: ArtifactJob, user: torch.nn.Module, g_state: dict) -> ClientUpdate:
    """A saved fedleak ClientUpdate, or a gradient state dict (FedSGD)."""
    path = Path(job.update_file)  # type: ignore[arg-type]
    if path.suffix.lower() in (".pt", ".pth"):
        try:
            return ClientUpdate.load(path)
        except DataError:
            pass  # not our format: a plain gradient state dict
    return update_from_states(g_state, path, model=user, kind="gradient",
                              training=job.training or None)


def run_artifact_job(
    job: ArtifactJob,
    out: Path,
    *,
    progress: Progress | None = None,
    log: Callable[[str], None] = lambda m: None,
    show_preflight: Callable[[Preflight], None] | None = None,
    progress_factory: Callable[[str, int], Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Preflight, attack, (score) and write the run folder: metrics.json, grid, config.

    ``progress_factory(label, total)``: a context manager giving the progress callback,
    opened after the preflight (so a refused run shows no empty progress bar).
    """
    model, update, report, notes = prepare(job)
    with claim_run_folder(out, overwrite=overwrite):  # after validation
        write_config(out, asdict(job), "attack (artifacts)")
        for note in notes:
            log(f"model adapter: {note}")
        truth = None
        if job.truth is not None:
            truth = load_truth(job.truth, model.input_shape)
        result: dict[str, Any] = {"preflight": report.to_dict(), "adapter": notes}
        write_json(out / "metrics.json", result)  # the preflight is on disk before any attack
        if show_preflight is not None:
            show_preflight(report)
        report.raise_errors()
        labels = None
        if job.grant_labels:
            if truth is None or truth[1] is None:
                raise ConfigError("`--grant-labels` needs --truth with labels.")
            labels = truth[1]
        n = update.num_samples if update.num_samples is not None else None
        if n is None and truth is not None:
            n = truth[0].shape[0]
        threat = ThreatModel(level=job.threat, labels=labels)
        with contextlib.ExitStack() as stack:
            if progress_factory is not None:
                from fedleak.audit.runner import planned_iterations

                total = planned_iterations(job.attack, job.attack_options)
                progress = stack.enter_context(progress_factory(job.attack, total))
            rec = fedleak.attack(
                job.attack, model, update, threat=threat, seed=job.seed, num_images=n,
                progress=progress, truth=None if truth is None else (truth[0], labels),
                **job.attack_options,
            )
        result |= {"reconstruction": rec.summary(), "loss_history": rec.loss_history,
                   "scores": None}
        torch.save({"images": rec.images, "labels": rec.labels}, out / "reconstruction.pt")
        if truth is None:
            save_grid(out / "reconstruction.png", [rec.images], row_titles=["reconstruction"],
                      title=f"{job.attack} on {Path(job.client_file or job.update_file).name}")
        else:
            scores = fedleak.score(rec, truth[0], labels=truth[1])
            order = [r for r, _ in sorted(scores["pairing"], key=lambda p: p[1])]
            caps = [f"PSNR {p:.1f}" for p in scores["psnr_per_image"]]
            save_grid(out / "reconstruction.png", [truth[0], rec.images[order]],
                      row_titles=["original", "reconstruction"], captions=[None, caps],
                      title=f"{job.attack} on {Path(job.client_file or job.update_file).name}")
            result["scores"] = scores
        write_json(out / "metrics.json", result)
        return result
