"""The CLI shell of ``fedleak attack --global ...``: flags -> ArtifactJob, preflight table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import typer
from rich.table import Table

from fedleak.cli.app import err_console, log, out_console, parse_options, print_scores, progress_bar
from fedleak.cli.artifacts_job import ArtifactJob, parse_floats, read_training, run_artifact_job
from fedleak.errors import ConfigError
from fedleak.fl.preflight import Preflight

# attack flags that are the client's training settings, in the words of training_from_settings
TRAINING_FLAGS = {
    "lr": "lr",
    "local_epochs": "epochs",
    "local_steps": "steps",
    "batch_size": "batch_size",
    "optimizer": "optimizer",
    "momentum": "momentum",
    "bn_mode": "bn_mode",
    "num_samples": "num_samples",
}
COLOURS = {"error": "red", "warning": "yellow", "info": "dim"}


def stated(ctx: typer.Context | None, name: str) -> bool:
    """Whether the user gave flag ``name`` (a default is not a statement)."""
    if ctx is None:
        return True
    source = ctx.get_parameter_source(name)
    return source is not None and source != click.core.ParameterSource.DEFAULT


def print_preflight(report: Preflight) -> None:
    table = Table(title="Preflight: does the update fit the model and the stated training?")
    for col in ("level", "check", "what to know / fix"):
        table.add_column(col)
    for f in report.findings:
        c = COLOURS[f.level]
        table.add_row(f"[{c}]{f.level}[/{c}]", f.check, f.message)
    err_console.print(table)


def attack_artifacts(ctx: typer.Context | None, a: dict[str, Any]) -> None:
    """Build the job from the attack command's arguments ``a`` and run it."""
    flags = {key: a[name] for name, key in TRAINING_FLAGS.items() if stated(ctx, name)}
    if a["protocol"] != "fedsgd" and stated(ctx, "protocol"):
        raise ConfigError("`--protocol` does not apply to saved artifacts: --client FILE is a "
                          "delta of the client's weights, --update FILE a gradient or update.")
    shape = None
    if a["image_shape"] is not None:
        values = parse_floats(a["image_shape"], "--image-shape") or ()
        shape = tuple(int(v) for v in values)
    rng = parse_floats(a["input_range"], "--input-range")
    if rng is not None and len(rng) != 2:
        raise ConfigError(f"`--input-range` must be LO,HI; got {a['input_range']!r}.")
    options = parse_options(a["option"], "--option")
    for key in ("iterations", "restarts"):
        if a[key] is not None:
            options[key] = a[key]
    model_args = parse_options(a["model_arg"], "--model-arg")
    model_args |= parse_options(a["model_option"], "--model-option")
    attack_name = a["attack_name"] or "inverting-gradients"
    job = ArtifactJob(
        global_file=str(a["global_file"]),
        client_file=None if a["client_file"] is None else str(a["client_file"]),
        update_file=None if a["update_file"] is None else str(a["update_file"]),
        model_def=a["model_def"],
        model_args=model_args,
        model=a["model"],
        num_classes=a["num_classes"],
        image_shape=shape,  # type: ignore[arg-type]
        training=read_training(a["training_file"], flags),
        input_mean=parse_floats(a["input_mean"], "--input-mean"),
        input_std=parse_floats(a["input_std"], "--input-std"),
        input_range=rng,  # type: ignore[arg-type]
        logits=a["logits"],
        truth=a["truth"],
        attack=attack_name,
        attack_options=options,
        threat=a["threat"],
        grant_labels=a["grant_labels"],
        seed=a["seed"],
    )
    out: Path = a["out"]
    result = run_artifact_job(job, out, log=log, show_preflight=print_preflight,
                              progress_factory=progress_bar, overwrite=a["overwrite"])
    if result["scores"] is not None:
        print_scores([{"attack": attack_name, "scores": result["scores"]}],
                     f"{attack_name} on {Path(job.client_file or job.update_file).name}")
    fit = result["reconstruction"].get("fit") or {}
    out_console.print(
        f"attack loss {result['reconstruction']['final_loss']:.4g}; fit: "
        f"{fit.get('verdict', '-')}; run folder: {out}"
    )
