"""Run a sweep: cells on an engine, each record written the moment it is done.

The parent process owns every file: it appends one record per finished cell to ``sweep.jsonl``
(with the cell's id, so ``resume=True`` skips it), rewrites ``sweep.csv``, writes the cell's
grid, and at the end draws the privacy-utility plots. The engine (``cfg.engine``: in this
process, a pool of spawned processes with one torch thread each, or Ray tasks) only runs
:func:`~fedleak.sweep.cell.run_cell` on plain dicts in a scratch folder and hands back the record
and the files the cell wrote.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedleak.engines import ENGINE_KEY, EngineStatus, PlacementLog, make_engine, with_files
from fedleak.engines import write_files as write_task_files
from fedleak.errors import ConfigError, DataError, FedleakError
from fedleak.report import append_jsonl, read_jsonl, write_config
from fedleak.report.run import RunLock
from fedleak.sweep.cell import run_cell, train_classifier
from fedleak.sweep.config import SweepConfig, load_sweep_config

__all__ = ["CSV_FIELDS", "run_sweep"]

CSV_FIELDS = [
    "id", "defense", "method", "params", "seed", "accuracy", "f1", "psnr", "ssim", "mse",
    "flat_psnr", "semantic_accuracy", "label_accuracy", "num_images", "epsilon", "delta",
    "noise_multiplier", "max_grad_norm", "sample_rate", "dp_steps", "probe_epsilon",
    "attack_seconds", "seconds", "grid",
]
PLOTTED = ("psnr", "mse", "ssim", "semantic_accuracy")


def write_csv(path: Path, records: list[dict[str, Any]]) -> Path:
    """The table of all cells (params as JSON), rewritten whole."""
    extra = sorted({
        k for r in records for k, v in r.items()
        if k not in CSV_FIELDS and isinstance(v, int | float | str | bool) and v is not None
    })
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS + extra, extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow({**r, "params": json.dumps(r.get("params", {}), sort_keys=True)})
    tmp.replace(path)
    return path


def _check_resume(out: Path, cfg: SweepConfig, resume: bool) -> None:
    cfg_path = out / "config.json"
    if resume:
        if not cfg_path.is_file():
            raise ConfigError(f"{out}: nothing to resume (no config.json); drop resume.")
        old = json.loads(cfg_path.read_text()).get("sweep_config") or {}
        new = json.loads(json.dumps(cfg.to_dict()))
        old.pop(ENGINE_KEY, None), new.pop(ENGINE_KEY, None)  # any engine may resume a sweep
        if old != new:
            raise ConfigError(
                f"{out}: the config differs from the one this sweep started with; resume with "
                "the same config or choose another output folder."
            )
    elif read_jsonl(out / "sweep.jsonl"):
        raise ConfigError(f"{out} already holds a sweep; resume it or choose another folder.")


def plot_sweep(out: Path, records: list[dict[str, Any]]) -> list[Path]:
    """Privacy-utility plots (leakage vs accuracy, one curve per defense) for each measure."""
    from fedleak.report import plot_privacy_utility

    written = []
    for leak in PLOTTED:
        try:
            written.append(plot_privacy_utility(
                records, out / f"privacy_utility_{leak}.png", leakage=leak, utility="accuracy"
            ))
        except DataError:
            continue  # no cell has this measure (e.g. semantic leakage disabled)
    return written


def run_sweep(
    config: str | Path | SweepConfig | dict[str, Any],
    out: str | Path,
    *,
    resume: bool = False,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] = print,
    status: Callable[[EngineStatus], None] | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Run every cell of ``config`` into the folder ``out`` and return a summary.

    Args:
        config: a YAML/TOML path, a mapping or a :class:`SweepConfig` (validated first).
        resume: skip the cells whose id is already in ``out/sweep.jsonl``.
        workers: worker processes of the local engine (1: run in this process, one cell after
            the other); ``cfg.engine`` ``ray`` runs each cell as a Ray task instead.
        progress: called as ``progress(done, total)`` at the start and after each cell.
        log: one line per finished cell (default ``print``; pass ``lambda m: None`` to mute).
        status: called with the engine's :class:`~fedleak.engines.EngineStatus` (cells done,
            running, queued, failed, the last cell's seconds) after each submit and cell.
        device: overrides the config's ``device`` (auto, cpu, cuda, cuda:N, mps).

    Writes ``config.json``, ``sweep.jsonl`` (one record per cell), ``sweep.csv``, the
    undefended classifier(s) in ``classifiers/``, a reconstruction grid per cell in ``grids/``,
    ``placement.json`` (where each cell ran) and ``privacy_utility_<measure>.png``. A failed
    cell is logged and left out (a resumed run retries it); its id is listed under ``failed``.
    """
    cfg = load_sweep_config(config)
    if device is not None:
        cfg = dataclasses.replace(cfg, device=device).validate()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"`workers` of run_sweep must be an int >= 1; got {workers!r}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(out, cfg, resume)
    with RunLock(out):  # one run per folder
        return _run_sweep(cfg, out, workers=workers, progress=progress, log=log, status=status)


def _run_sweep(
    cfg: SweepConfig,
    out: Path,
    *,
    workers: int,
    progress: Callable[[int, int], None] | None,
    log: Callable[[str], None],
    status: Callable[[EngineStatus], None] | None,
) -> dict[str, Any]:
    """The body of :func:`run_sweep`, on a validated config and a locked folder."""
    write_config(out, {"sweep_config": cfg.to_dict()}, "sweep")
    t0 = time.perf_counter()
    cells = cfg.cells()
    done_ids = {r.get("id") for r in read_jsonl(out / "sweep.jsonl")}
    pending = [c for c in cells if c.id not in done_ids]
    total = len(cells)
    done = total - len(pending)
    if progress:
        progress(done, total)
    if done:
        log(f"{out}: {done} of {total} cells already done; running {len(pending)}.")

    classifiers = {}
    if cfg.semantic.enabled and pending:
        for seed in sorted({c.seed for c in pending}):
            classifiers[seed] = train_classifier(cfg, seed, out)
            log(f"undefended classifier (seed {seed}): test accuracy "
                f"{classifiers[seed]['test_accuracy']:.3f}")

    config_dict = cfg.to_dict()
    failed: list[str] = []

    def finish(cell_id: str, record: dict[str, Any] | None, error: BaseException | None) -> None:
        nonlocal done
        done += 1
        if record is not None:
            append_jsonl(out / "sweep.jsonl", record)
            write_csv(out / "sweep.csv", read_jsonl(out / "sweep.jsonl"))
            log(_line(done, total, record))
        else:
            failed.append(cell_id)
            kind = "" if isinstance(error, FedleakError) else f"{type(error).__name__}: "
            log(f"[{done}/{total}] {cell_id}: FAILED ({kind}{error})")
        if progress:
            progress(done, total)

    # the classifiers travel to each cell; its grid travels back (no shared disk needed)
    inputs = {
        str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("classifiers/*.pt"))
    }
    places = PlacementLog(out, cfg.engine.name)
    threads = torch.get_num_threads()
    try:
        with make_engine(cfg.engine, workers=min(workers, max(1, len(pending)))) as engine:
            for c in pending:
                engine.submit(c.id, with_files, (run_cell, inputs, config_dict, c.to_dict()))
            if status:
                status(engine.status(total, total - len(pending)))
            while engine.in_flight:
                for f in engine.wait():
                    record = None
                    if f.error is None:
                        record, files = f.value
                        write_task_files(out, files)
                    finish(f.key, record, f.error)
                    places.add(f)
                    if status:
                        status(engine.status(total, total - len(pending)))
    finally:
        torch.set_num_threads(threads)

    records = read_jsonl(out / "sweep.jsonl")
    files = [out / "config.json", out / "sweep.jsonl"]
    if records:
        files.append(write_csv(out / "sweep.csv", records))
        files += plot_sweep(out, records)
    return {
        "out": str(out),
        "total": total,
        "ran": len(pending) - len(failed),
        "skipped": total - len(pending),
        "failed": failed,
        "classifiers": classifiers,
        "files": [str(f) for f in files],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _line(done: int, total: int, r: dict[str, Any]) -> str:
    def fmt(key: str, spec: str) -> str:
        v = r.get(key)
        return "-" if v is None else format(v, spec)

    return (
        f"[{done}/{total}] {r['id']}: accuracy {fmt('accuracy', '.3f')}, "
        f"PSNR {fmt('psnr', '.2f')} dB (flat {fmt('flat_psnr', '.2f')}), "
        f"MSE {fmt('mse', '.4f')}, semantic {fmt('semantic_accuracy', '.2f')} "
        f"({fmt('seconds', '.0f')} s)"
    )
