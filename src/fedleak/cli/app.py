"""The ``fedleak`` command line: thin shells over the jobs and the front door."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedleak.errors import ConfigError, FedleakError

app = typer.Typer(
    help="Measure how much of federated clients' data can be rebuilt from their updates.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out_console = Console()
err_console = Console(stderr=True, soft_wrap=True)
STATE = {"quiet": False}
DEVICE_HELP = "auto (a GPU when present), cpu, cuda, cuda:N or mps."
DeviceOption = Annotated[str, typer.Option("--device", help=DEVICE_HELP)]


def check_device(device: str) -> str:
    """Resolve ``--device`` before any work; an absent device is a one-line error."""
    from fedleak.device import resolve_device

    dev = resolve_device(device)
    if device.strip().lower() == "auto":
        log(f"device: {dev} (auto)")
    return device


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user mistakes into one red line and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FedleakError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None
        except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted: results written so far are kept in the run folder.")
            raise typer.Exit(130) from None

    return wrapper


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int, float], None]]:
    """A rich progress bar with the current attack loss; silent with --quiet."""
    if STATE["quiet"]:
        yield lambda done, loss: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    ) as prog:
        task = prog.add_task(description, total=total, loss="-")

        def update(done: int, loss: float) -> None:
            prog.update(task, completed=min(done, total), loss=f"{loss:.3e}")

        yield update
        prog.update(task, completed=total)


def log(msg: str) -> None:
    if not STATE["quiet"]:
        err_console.print(msg, highlight=False)


def parse_options(items: list[str] | None, what: str) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as JSON when they can be (numbers, lists, booleans)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"`{what}` must look like key=value; got {item!r}.")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
        if isinstance(out[key], list):
            out[key] = tuple(out[key])
    return out


def print_scores(rows: list[dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    for col in ("client", "images", "attack", "PSNR (dB)", "flat PSNR", "SSIM", "label acc."):
        table.add_column(col, justify="right")
    for r in rows:
        s = r["scores"]
        la = s.get("label_accuracy")
        table.add_row(
            str(r.get("client", "-")),
            str(len(s["psnr_per_image"])),
            r["attack"],
            f"{s['psnr']:.2f}",
            f"{s['flat_psnr']:.2f}",
            f"{s['ssim']:.3f}",
            "-" if la is None else f"{la:.0%}",
        )
    out_console.print(table)


@app.callback()
def main_options(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or logs.")] = False,
) -> None:
    STATE["quiet"] = quiet


@app.command()
@friendly
def demo(
    out: Annotated[Path, typer.Option(help="Run folder.")] = Path("fedleak-runs/demo"),
    seed: Annotated[int, typer.Option(help="Seed of the whole run.")] = 0,
    device: DeviceOption = "auto",
) -> None:
    """A small federation on lfw-faces; the server attacks one client's FedSGD update."""
    from fedleak.cli.jobs import demo as run_demo

    result = run_demo(out, seed=seed, progress_factory=progress_bar, log=log,
                      device=check_device(device))
    print_scores(
        [{"client": 0, "attack": "dlg", "scores": result["scores"]}],
        "What the server rebuilt from client 0's update",
    )
    out_console.print(
        f"Run folder: {out}  (reconstruction.png, metrics.json, config.json); "
        f"{result['seconds_total']:.0f} s in all."
    )


@app.command()
@friendly
def attack(
    data: Annotated[str, typer.Option(help="Built-in name or FORMAT:PATH.")] = "lfw-faces",
    task: Annotated[
        str, typer.Option(help="classification, or diffusion (the client trains a DDPM UNet).")
    ] = "classification",
    size: Annotated[
        int | None,
        typer.Option(help="Resize images to SIZE x SIZE (0: native; default 32, diffusion 16)."),
    ] = None,
    channels: Annotated[int, typer.Option(help="1 or 3 (0: native).")] = 0,
    model: Annotated[str, typer.Option(help="Model name (fedleak attacks --models).")] = "lenet",
    model_option: Annotated[
        list[str] | None, typer.Option(help="Model option key=value (repeatable).")
    ] = None,
    protocol: Annotated[str, typer.Option(help="fedsgd or fedavg.")] = "fedsgd",
    num_images: Annotated[int, typer.Option(help="Images the client holds.")] = 1,
    batch_size: Annotated[int | None, typer.Option(help="FedAvg batch size.")] = None,
    local_steps: Annotated[int | None, typer.Option(help="FedAvg local steps.")] = None,
    local_epochs: Annotated[int | None, typer.Option(help="FedAvg local epochs.")] = None,
    lr: Annotated[float, typer.Option(help="Client learning rate.")] = 0.01,
    optimizer: Annotated[str, typer.Option(help="sgd or adam.")] = "sgd",
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.0,
    bn_mode: Annotated[str, typer.Option(help="BatchNorm mode of the client: train/eval.")] = (
        "train"
    ),
    attack_name: Annotated[
        str | None, typer.Option("--attack", help="Attack name (default dlg; diffusion-ig).")
    ] = None,
    iterations: Annotated[int | None, typer.Option(help="Attack iterations.")] = None,
    restarts: Annotated[int | None, typer.Option(help="Attack restarts.")] = None,
    option: Annotated[
        list[str] | None, typer.Option(help="Attack option key=value (repeatable).")
    ] = None,
    threat: Annotated[str, typer.Option(help="Threat level A-E.")] = "C",
    grant_labels: Annotated[bool, typer.Option(help="Give the attacker the true labels.")] = False,
    prior: Annotated[
        bool, typer.Option(help="Give the attacker the mean test image as prior (level D+).")
    ] = False,
    schedule: Annotated[str, typer.Option(help="Diffusion noise schedule, e.g. cosine:16.")] = (
        "cosine:16"
    ),
    prediction: Annotated[str, typer.Option(help="Diffusion target: v or eps.")] = "v",
    share_noise: Annotated[
        bool, typer.Option(help="Diffusion: the client sends its eps and t in the clear.")
    ] = False,
    prior_model: Annotated[
        Path | None,
        typer.Option(help="gidm/gidm-plus: a saved prior (default: train OUT/prior_model.pt)."),
    ] = None,
    prior_steps: Annotated[int, typer.Option(help="Training steps of that prior.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the whole run.")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Log progress every N iterations.")] = 100,
    out: Annotated[Path, typer.Option(help="Run folder.")] = Path("fedleak-runs/attack"),
    device: DeviceOption = "auto",
) -> None:
    """Simulate one client update and attack it; writes metrics, grid and config to OUT."""
    from fedleak.audit.runner import planned_iterations
    from fedleak.cli.jobs import AttackJob, run_attack_job

    diffusion = task == "diffusion"
    attack_name = attack_name or ("diffusion-ig" if diffusion else "dlg")
    if size is None:
        size = 16 if diffusion else 32

    attack_options = parse_options(option, "--option")
    if iterations is not None:
        attack_options["iterations"] = iterations
    if restarts is not None:
        attack_options["restarts"] = restarts
    job = AttackJob(
        data=data,
        size=size or None,
        channels=channels or None,
        model=model,
        model_options=parse_options(model_option, "--model-option"),
        protocol=protocol,
        num_images=num_images,
        batch_size=batch_size,
        local_steps=local_steps,
        local_epochs=local_epochs,
        lr=lr,
        optimizer=optimizer,
        momentum=momentum,
        bn_mode=bn_mode,
        attack=attack_name,
        attack_options=attack_options,
        threat=threat,
        grant_labels=grant_labels,
        prior=prior,
        seed=seed,
        checkpoint_every=checkpoint_every,
        task=task,
        schedule=schedule,
        prediction=prediction,
        share_noise=share_noise,
        prior_model=None if prior_model is None else str(prior_model),
        prior_steps=prior_steps,
        device=check_device(device),
    )
    total = planned_iterations(attack_name, attack_options)
    with progress_bar(f"{attack_name}", total) as prog:
        result = run_attack_job(job, out, progress=prog, log=log)
    print_scores([{"attack": attack_name, "scores": result["scores"]}], f"{attack_name} on {data}")
    if "t_accuracy" in result:
        out_console.print(
            f"timesteps recovered: {result['t_accuracy']:.0%} (true t {result['true_t']})"
        )
    out_console.print(f"Run folder: {out}")


@app.command()
@friendly
def audit(
    config: Annotated[
        Path | None, typer.Argument(help="YAML or TOML audit config (defaults if omitted).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config field: section.key=value (repeatable)."),
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="task: classification or diffusion (seed 002).")
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="federation.rounds")] = None,
    attack_name: Annotated[str | None, typer.Option("--attack", help="audit.attack")] = None,
    iterations: Annotated[int | None, typer.Option(help="audit.options.iterations")] = None,
    seed: Annotated[int | None, typer.Option(help="seed")] = None,
    out: Annotated[Path, typer.Option(help="Run folder.")] = Path("fedleak-runs/audit"),
    resume: Annotated[bool, typer.Option(help="Continue a stopped audit in OUT.")] = False,
    report: Annotated[bool, typer.Option(help="Write report.html at the end.")] = True,
    engine: Annotated[
        str, typer.Option(help="inprocess (default) or flower (Flower's Simulation Engine).")
    ] = "inprocess",
    device: Annotated[
        str | None, typer.Option("--device", help=f"device (config `device:`): {DEVICE_HELP}")
    ] = None,
) -> None:
    """Run a federation from a config and audit its leakage per round and per client."""
    from fedleak.audit import load_config, run_audit

    if engine == "flower":
        try:
            from fedleak.integrations.flower import run_flower_audit as run_audit  # noqa: F811
        except ImportError as exc:
            raise ConfigError(
                f"--engine flower needs Flower: pip install -e '.[flower]' ({exc})."
            ) from None
    elif engine != "inprocess":
        raise ConfigError(f"`--engine` must be 'inprocess' or 'flower'; got {engine!r}.")

    overrides = list(set_ or [])
    for key, value in (
        ("task", task),
        ("federation.rounds", rounds),
        ("audit.attack", attack_name),
        ("audit.options.iterations", iterations),
        ("seed", seed),
        ("device", device),
    ):
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    cfg = load_config(config, overrides)
    if engine == "flower" and cfg.task != "classification":
        raise ConfigError("--engine flower runs classification federations; drop it for diffusion.")
    summary = run_audit(cfg, out, resume=resume, log=log, progress_factory=progress_bar)
    if report:
        _write_report(out)
    if summary.get("final_test_loss") is not None:
        utility = f"final test loss {summary['final_test_loss']:.4f}"
    elif summary.get("final_accuracy") is not None:
        utility = f"final accuracy {summary['final_accuracy']:.3f}"
    else:
        utility = "no round run"
    out_console.print(
        f"{summary['audited_updates']} audited updates, {summary['withheld']} withheld, "
        f"{utility}; run folder {out}"
    )


def _write_report(run_dir: Path) -> Path | None:
    try:
        from fedleak.report.html import write_report
    except ImportError:  # pragma: no cover - report module absent
        return None
    path = write_report(run_dir)
    log(f"report: {path}")
    return path


@app.command()
@friendly
def sweep(
    config: Annotated[Path, typer.Argument(help="YAML or TOML sweep config.")],
    out: Annotated[Path, typer.Option(help="Sweep folder.")] = Path("fedleak-runs/sweep"),
    resume: Annotated[bool, typer.Option(help="Skip cells already in OUT/sweep.jsonl.")] = False,
    workers: Annotated[int, typer.Option(help="Parallel worker processes.")] = 2,
    report: Annotated[bool, typer.Option(help="Write report.html at the end.")] = True,
    device: Annotated[
        str | None, typer.Option("--device", help=f"device (config `device:`): {DEVICE_HELP}")
    ] = None,
) -> None:
    """Defenses x hyperparameters x seeds: privacy-utility curves (seed 001's study)."""
    from fedleak.sweep import run_sweep

    if workers < 1:
        raise ConfigError(f"`--workers` must be >= 1; got {workers}.")
    if STATE["quiet"]:
        summary = run_sweep(config, out, resume=resume, workers=workers, log=log, device=device)
    else:
        with Progress(
            TextColumn("cells"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=err_console,
        ) as prog:
            task = prog.add_task("cells", total=None)

            def progress(done: int, total: int) -> None:
                prog.update(task, completed=done, total=total)

            summary = run_sweep(
                config, out, resume=resume, workers=workers, progress=progress, log=log,
                device=device,
            )
    if report:
        _write_report(out)
    out_console.print(f"Sweep folder: {out}")
    if isinstance(summary, dict) and summary.get("table"):
        out_console.print(summary["table"])


@app.command(name="report")
@friendly
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by audit or sweep.")],
) -> None:
    """Write RUN_DIR/report.html: config, accuracy, leakage table and plots, grids."""
    from fedleak.report.html import write_report

    out_console.print(f"Report: {write_report(run_dir)}")


@app.command()
@friendly
def datasets() -> None:
    """List the built-in data sets and the file formats fedleak reads."""
    from fedleak.data import available_datasets

    table = Table(title="Built-in data sets (no download)")
    for col in ("name", "images", "size", "channels", "classes", "description"):
        table.add_column(col)
    for d in available_datasets():
        table.add_row(
            d.name,
            str(d.num_images),
            f"{d.native_size[0]}x{d.native_size[1]}",
            str(d.channels),
            ", ".join(d.classes),
            d.description,
        )
    out_console.print(table)
    out_console.print(
        "Your files: cifar10:DIR (cifar-10-batches-py), medmnist:FILE.npz, folder:DIR "
        "(one subfolder per class), dicom:DIR[?labels=CSV]"
    )


@app.command(name="attacks")
@friendly
def list_attacks() -> None:
    """List the attacks, the knowledge each needs and their options; and the models."""
    from fedleak.attacks import ATTACKS
    from fedleak.models import available_models

    table = Table(title="Attacks")
    for col in ("name", "needs", "options"):
        table.add_column(col)
    for name in ATTACKS.names():
        cls = ATTACKS.get(name)
        table.add_row(name, ", ".join(sorted(cls.requires)), ", ".join(cls.options()))
    out_console.print(table)
    out_console.print("Models: " + ", ".join(available_models()))


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - outside a command
        sys.exit(130)
