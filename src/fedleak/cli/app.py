"""The ``fedleak`` command line: thin shells over the jobs and the front door."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
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
# the options audit and sweep share (their configs hold the same keys)
ConfigDeviceOption = Annotated[
    str | None, typer.Option("--device", help=f"device (config `device:`): {DEVICE_HELP}")
]
RayAddressOption = Annotated[
    str | None,
    typer.Option(help="Ray cluster: auto or HOST:PORT (implies --engine ray); none: a local Ray "
                 "started for the run."),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config field: section.key=value (repeatable)."),
]


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
    """A rich progress bar with the current attack loss; silent with --quiet.

    The bar appears with the first progress report, so a run refused by a bad input shows
    none; it ends where the attack ended (an early stop says so, as metrics.json will).
    """
    if STATE["quiet"]:
        yield lambda done, loss: None
        return
    prog = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )
    state: dict[str, Any] = {"task": None, "done": 0}

    def update(done: int, loss: float) -> None:
        if state["task"] is None:
            prog.start()
            state["task"] = prog.add_task(description, total=total, loss="-")
        state["done"] = done
        prog.update(state["task"], completed=min(done, total), loss=f"{loss:.3e}")

    try:
        yield update
    finally:
        if state["task"] is not None:
            if 0 < state["done"] < total:
                prog.update(
                    state["task"],
                    description=f"{description} (stopped at {state['done']} of {total})",
                )
            prog.stop()


@contextmanager
def engine_progress(what: str) -> Iterator[Callable[[Any], None] | None]:
    """A rich bar of units across the engine: done / running / queued / failed and the last
    unit's seconds (an :class:`~fedleak.engines.EngineStatus` per call); None with --quiet."""
    if STATE["quiet"]:
        yield None
        return
    with Progress(
        TextColumn(what), BarColumn(), MofNCompleteColumn(),
        TextColumn("running {task.fields[running]}, queued {task.fields[queued]}, "
                   "failed {task.fields[failed]}, last {task.fields[last]}"),
        TimeElapsedColumn(), console=err_console,
    ) as prog:
        task = prog.add_task(what, total=None, running=0, queued=0, failed=0, last="-")

        def update(st: Any) -> None:
            last = "-" if st.last_seconds is None else f"{st.last_seconds:.1f} s"
            prog.update(task, completed=st.done + st.failed, total=st.total, running=st.running,
                        queued=st.queued, failed=st.failed, last=last)

        yield update


ENGINES = {"local": "local", "inprocess": "local", "ray": "ray", "flower": "flower"}


def engine_overrides(engine: str | None, ray_address: str | None, allowed: str) -> list[str]:
    """``engine.*`` config overrides from --engine / --ray-address."""
    out = []
    if engine is not None:
        if engine not in ENGINES or ENGINES[engine] not in allowed.split("|"):
            raise ConfigError(f"`--engine` must be one of {allowed.replace('|', ', ')}; "
                              f"got {engine!r}.")
        out.append(f"engine.name={json.dumps(ENGINES[engine])}")
    if ray_address is not None:
        if engine is None:
            out.append('engine.name="ray"')
        out.append(f"engine.address={json.dumps(ray_address)}")
    return out


def describe_attack(name: str, options: dict[str, Any]) -> str:
    """The bar's label: the attack and how many restarts its iterations cover."""
    import dataclasses

    from fedleak.attacks import ATTACKS

    cls = ATTACKS.get(name)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(
        cls) else {}
    restarts = options.get("restarts", defaults.get("restarts", 1))
    if restarts is None and "restarts" in defaults:
        return f"{name} (one restart per label spread, up to 8)"
    if isinstance(restarts, int) and restarts > 1:
        return f"{name} ({restarts} restarts)"
    return name


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


_FIT_STYLE = {"fits": "green", "attack-underfit": "red", "approximate-replay": "yellow"}


def _objective(v: Any) -> str:
    return "-" if v is None else f"{v:.3g}"


def print_scores(rows: list[dict[str, Any]], title: str) -> None:
    """One row per attacked update: scores and the fit check's verdict; below the table, each
    verdict's objectives and note (a table of 80 columns must stay readable)."""
    table = Table(title=title)
    clients = any("client" in r for r in rows)
    cols = ("client",) * clients + ("images", "attack", "PSNR (dB)", "flat PSNR", "SSIM",
                                    "labels", "fit")
    for col in cols:
        table.add_column(col, justify="right", no_wrap=col == "fit")
    for r in rows:
        s = r["scores"]
        la = s.get("label_accuracy")
        fit = r.get("fit") or {}
        verdict = fit.get("verdict", "-")
        style = _FIT_STYLE.get(verdict, "dim")
        table.add_row(
            *([str(r.get("client", "-"))] if clients else []),
            str(len(s["psnr_per_image"])),
            r["attack"],
            f"{s['psnr']:.2f}",
            f"{s['flat_psnr']:.2f}",
            f"{s['ssim']:.3f}",
            "-" if la is None else f"{la:.0%}",
            f"[{style}]{verdict}[/{style}]",
        )
    out_console.print(table)
    lines = set()
    for r in rows:
        fit = r.get("fit") or {}
        if fit:
            lines.add(
                f"fit check ({r['attack']}): objective {_objective(fit.get('attack_objective'))}"
                f" at the reconstruction, {_objective(fit.get('truth_objective'))} at the truth"
                + (f"; {fit['note']}" if fit.get("note") else "")
            )
    for line in sorted(lines):
        out_console.print(line, style="dim", highlight=False)


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
        [{"client": 0, "attack": "dlg", "scores": result["scores"], "fit": result.get("fit")}],
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
    model: Annotated[str, typer.Option(help="Model name (the list: fedleak attacks).")] = "lenet",
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
    iterations: Annotated[int | None, typer.Option(help="Attack iterations (per restart).")] = None,
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
    overwrite: Annotated[
        bool, typer.Option(help="Replace the run already in OUT (never another folder).")
    ] = False,
    ctx: typer.Context = None,  # type: ignore[assignment]
    global_file: Annotated[
        Path | None, typer.Option("--global", help="Real artifacts: the global weights file.")
    ] = None,
    client_file: Annotated[
        Path | None, typer.Option("--client", help="The client's returned weights file.")
    ] = None,
    update_file: Annotated[
        Path | None, typer.Option("--update", help="A saved ClientUpdate or gradient file.")
    ] = None,
    model_def: Annotated[
        str | None, typer.Option(help="Your model: path/to/file.py:ClassName.")
    ] = None,
    model_arg: Annotated[
        list[str] | None, typer.Option(help="Argument of your model key=value (repeatable).")
    ] = None,
    training_file: Annotated[
        Path | None, typer.Option("--training", help="The client's settings (YAML/TOML).")
    ] = None,
    num_samples: Annotated[int | None, typer.Option(help="Images the client trained on.")] = None,
    image_shape: Annotated[str | None, typer.Option(help="Model input C,H,W.")] = None,
    num_classes: Annotated[int | None, typer.Option(help="Classes (built-in models).")] = None,
    input_mean: Annotated[str | None, typer.Option(help="Your pipeline's Normalize mean.")] = None,
    input_std: Annotated[str | None, typer.Option(help="Your pipeline's Normalize std.")] = None,
    input_range: Annotated[
        str | None, typer.Option(help="Or: pixels rescaled to LO,HI (e.g. -1,1).")
    ] = None,
    logits: Annotated[str | None, typer.Option(help="Output field holding the logits.")] = None,
    truth: Annotated[
        str | None, typer.Option(help="The client's real images (scoring only): .pt/.npz/DATA.")
    ] = None,
    device: DeviceOption = "auto",
) -> None:
    """Simulate one client update and attack it; writes metrics, grid and config to OUT.

    With --global and --client (or --update) it audits real saved artifacts instead.
    """
    if global_file is not None:
        from fedleak.cli.artifacts_cmd import attack_artifacts

        attack_artifacts(ctx, locals())
        return
    device = check_device(device)  # before the heavy imports: an absent device answers first
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
        device=device,
    )
    total = planned_iterations(attack_name, attack_options)
    with progress_bar(describe_attack(attack_name, attack_options), total) as prog:
        result = run_attack_job(job, out, progress=prog, log=log, overwrite=overwrite)
    print_scores(
        [{"attack": attack_name, "scores": result["scores"], "fit": result.get("fit")}],
        f"{attack_name} on {data}",
    )
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
    set_: SetOption = None,
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
        str | None,
        typer.Option(help="Where the attacks run: local (in this process; the default), ray "
                     "(Ray tasks) or flower (Flower's Simulation Engine). Config: engine.name."),
    ] = None,
    ray_address: RayAddressOption = None,
    device: ConfigDeviceOption = None,
) -> None:
    """Run a federation from a config and audit its leakage per round and per client."""
    from fedleak._config_io import read_config_file

    if config is not None:  # a missing or broken file answers before PyTorch is imported
        read_config_file(config, "audit config")
    from fedleak.audit import load_config, run_audit

    overrides = engine_overrides(engine, ray_address, "local|ray|flower") + list(set_ or [])
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
    if cfg.engine.name == "flower":
        if cfg.task != "classification":
            raise ConfigError(
                "--engine flower runs classification federations; drop it for diffusion."
            )
        try:
            import fedleak.integrations.flower  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                f"--engine flower needs Flower: pip install -e '.[flower]' ({exc})."
            ) from None
    with engine_progress("attacks") if cfg.engine.name == "ray" else nullcontext() as status:
        summary = run_audit(
            cfg, out, resume=resume, log=log, progress_factory=progress_bar, status=status
        )
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
    set_: SetOption = None,
    out: Annotated[Path, typer.Option(help="Sweep folder.")] = Path("fedleak-runs/sweep"),
    resume: Annotated[bool, typer.Option(help="Skip cells already in OUT/sweep.jsonl.")] = False,
    workers: Annotated[int, typer.Option(help="Parallel worker processes.")] = 2,
    report: Annotated[bool, typer.Option(help="Write report.html at the end.")] = True,
    engine: Annotated[
        str | None,
        typer.Option(help="Where the cells run: local (--workers processes; the default) or "
                     "ray (Ray tasks). Config: engine.name."),
    ] = None,
    ray_address: RayAddressOption = None,
    device: ConfigDeviceOption = None,
) -> None:
    """Defenses x hyperparameters x seeds: privacy-utility curves (seed 001's study)."""
    from fedleak._config_io import read_config_file

    if workers < 1:
        raise ConfigError(f"`--workers` must be >= 1; got {workers}.")
    read_config_file(config, "sweep config")  # answers before PyTorch is imported
    from fedleak.sweep import load_sweep_config, run_sweep

    overrides = [*(set_ or []), *engine_overrides(engine, ray_address, "local|ray")]
    cfg = load_sweep_config(config, overrides)
    with engine_progress("cells") as status:
        summary = run_sweep(
            cfg, out, resume=resume, workers=workers, log=log, status=status, device=device
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
    from fedleak import catalogue  # the registries' copy: no PyTorch import for a listing

    table = Table(title="Built-in data sets (no download)")
    for col in ("name", "images", "size", "channels", "classes", "description"):
        table.add_column(col)
    for d in catalogue.datasets():
        table.add_row(
            d["name"],
            str(d["num_images"]),
            f"{d['native_size'][0]}x{d['native_size'][1]}",
            str(d["channels"]),
            ", ".join(d["classes"]),
            d["description"],
        )
    out_console.print(table)
    out_console.print(
        "Your files: cifar10:DIR (cifar-10-batches-py), medmnist:FILE.npz, folder:DIR "
        "(one subfolder per class), dicom:DIR[?labels=CSV]"
    )


@app.command(name="attacks")
@friendly
def list_attacks(
    name: Annotated[
        str | None, typer.Argument(help="One attack: show only its options.")
    ] = None,
) -> None:
    """The attacks: the knowledge each needs, every option with its default and meaning; models."""
    from fedleak import catalogue  # the registries' copy: no PyTorch import for a listing

    attacks = catalogue.attacks()
    names = attacks.names() if name is None else [attacks.get(name)["name"]]
    for attack in names:
        entry = attacks.get(attack)
        needs = ", ".join(entry["requires"])
        table = Table(
            title=f"{attack}  (needs: {needs}; threat level {entry['level']} or higher)\n"
            f"{entry['summary']}",
            title_justify="left",
        )
        for col in ("option", "default", "meaning"):
            table.add_column(col, overflow="fold")
        for option, default, meaning in entry["options"]:
            table.add_row(option, default, meaning)
        out_console.print(table)
    out_console.print(
        "Set them with `fedleak attack --option key=value` or in a config's attack options."
    )
    if name is None:
        out_console.print("Models: " + ", ".join(catalogue.models()))


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - outside a command
        _exit_interrupted()
    except SystemExit as exc:
        if exc.code == 130:  # Ctrl-C inside a command (see friendly)
            _exit_interrupted()
        raise


def _exit_interrupted() -> None:
    """Exit 130 now, skipping the interpreter's teardown of PyTorch and Ray (seconds on a busy
    machine: Ctrl-C must stop within a second or two). The command has already unwound: its
    files are closed, its run lock and Ray released; only the standard streams need flushing."""
    import contextlib
    import os

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or broken pipe
            stream.flush()
    os._exit(130)
