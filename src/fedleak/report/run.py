"""Run folders: every result is written as it is produced, next to the config that made it."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from fedleak import __version__


def _clean(obj: Any) -> Any:
    """Make ``obj`` JSON-safe: tuples to lists, paths to str, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return _clean(obj.tolist())
    return obj


def fit_fields(fit: Any) -> dict[str, Any]:
    """A reconstruction's fit check (:class:`fedleak.attacks.fit.FitCheck`) as flat record
    fields: ``fit`` (the verdict), both objectives and residuals, and the note."""
    if fit is None:
        return {"fit": None}
    d = fit.to_dict()
    return {
        "fit": d["verdict"],
        "fit_attack_objective": d["attack_objective"],
        "fit_truth_objective": d["truth_objective"],
        "fit_attack_residual": d["attack_residual"],
        "fit_truth_residual": d["truth_residual"],
        "fit_note": d["note"],
    }


def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically (temp file + rename), so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def append_jsonl(path: str | Path, obj: Any) -> None:
    """Append one JSON record and flush it to disk at once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(_clean(obj)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; a truncated last line (a crash mid-write) is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def write_config(folder: str | Path, config: dict[str, Any], command: str) -> Path:
    """The config snapshot that reproduces a run."""
    return write_json(
        Path(folder) / "config.json",
        {"command": command, "fedleak_version": __version__, **config},
    )


LOCK_NAME = ".fedleak.lock"


class RunLock:
    """An exclusive lock on a run folder, held while this object lives.

    Two runs writing into one folder would interleave their records; the second one stops at
    once with a one-line error naming the first. The lock is an OS file lock (``flock``), so
    a run that is killed releases it without leaving anything to clean up.
    """

    def __init__(self, folder: str | Path) -> None:
        from fedleak.errors import ConfigError

        self.path = Path(folder) / LOCK_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks, run unguarded
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            self._fd = None
            raise ConfigError(
                f"{folder} is in use by another fedleak run (pid {holder}); wait for it to "
                "finish or choose another --out."
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __del__(self) -> None:
        self.release()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def claim_run_folder(folder: str | Path, *, overwrite: bool) -> RunLock:
    """Lock ``folder`` for a new run; refuse a folder that already holds something.

    A folder holding an earlier fedleak run is emptied only with ``overwrite``; a folder
    holding anything else is never touched. Call it after every input has been validated, so a
    refused or mistaken run leaves an existing run as it was.
    """
    import shutil

    from fedleak.errors import ConfigError

    folder = Path(folder)
    entries = [p for p in folder.iterdir() if p.name != LOCK_NAME] if folder.is_dir() else []
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file; --out must be a folder.")
    if entries:
        if not (folder / "config.json").is_file():
            raise ConfigError(
                f"{folder} is not empty and holds no fedleak run; choose another --out."
            )
        if not overwrite:
            raise ConfigError(
                f"{folder} already holds a run; pass --overwrite to replace it, or choose "
                "another --out."
            )
    lock = RunLock(folder)
    for p in entries:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    return lock
