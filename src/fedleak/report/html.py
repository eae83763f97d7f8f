"""One self-contained HTML page per run folder: what was run, what leaked, what it cost.

The page must open offline and be safe to mail around, so it loads nothing: no scripts, no web
fonts, no CDN; CSS is inline, plots and grids are embedded as base64 ``data:image/png`` URIs, and
a Content-Security-Policy forbids every other source. All text from the run folder (config
strings, client ids, attack names) is HTML-escaped. Sections whose files are missing are skipped.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedleak import __version__
from fedleak.errors import DataError, FedleakError
from fedleak.report.plots import (
    SWEEP_LEAKAGE,
    plot_accuracy,
    plot_leakage_per_round,
    plot_leakage_vs,
    plot_privacy_utility,
)
from fedleak.report.run import read_jsonl

__all__ = ["write_report"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_DASH = "\u2014"

# Leakage table: (key, header, tooltip). A column is shown when any record has the key.
_FIT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("fit", "fit",
     "Fit check: the attack's objective evaluated at its reconstruction and at the true "
     "images. fits = the truth reproduces the update and the attack reached its objective; "
     "attack-underfit = the truth scores far lower: the attack failed to optimize, the update "
     "may still leak; approximate-replay = even the truth does not reproduce the update: the "
     "attack's model of the client is inexact; unchecked = no objective or no truth. Hover a "
     "verdict for its numbers."),
    ("fit_attack_objective", "attack obj.", "The attack's objective at its reconstruction."),
    ("fit_truth_objective", "truth obj.", "The same objective at the true images and labels."),
    ("fit_truth_residual", "truth residual",
     "Update-matching residual of the true images (0 = they reproduce the update exactly)."),
)
_LEAKAGE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("round", "round", "Federated round whose update was audited."),
    ("client", "client", "Client id."),
    ("attack", "attack", "Attack run on the update."),
    ("threat", "threat", "Threat level A-H (SoK, Carletti et al. 2025): what the attacker knows."),
    ("filters", "filters", "Update-level defenses applied before the update was sent."),
    ("sigma0", "sigma0",
     "Gaussian filter noise level: sigma = sigma0 x 95th percentile of |update|."),
    ("num_images", "images", "Images the client trained on this round."),
    ("batch_size", "batch", "Local batch size."),
    ("local_steps", "steps", "Local optimizer steps behind the update."),
    ("psnr", "PSNR (dB)",
     "Peak signal-to-noise ratio of each reconstruction against its best-matching original "
     "(Hungarian pairing), averaged over images. Higher = more leakage."),
    ("flat_psnr", "flat PSNR (dB)",
     "Flat PSNR: what a featureless flat image (each channel at the original's mean) scores "
     "against the originals. A reconstruction whose PSNR does not beat it recovered no "
     "structure, whatever its absolute PSNR."),
    ("ssim", "SSIM",
     "Structural similarity (11x11 Gaussian window, sigma 1.5) against the best-matching "
     "original; 1 = identical. Higher = more leakage."),
    ("mse", "MSE", "Mean squared error against the best-matching original. Lower = more leakage."),
    ("rdlv", "RDLV",
     "Relative data leakage value (Hatamizadeh et al.): (SSIM(reconstruction, x) - "
     "SSIM(prior, x)) / SSIM(prior, x), best reconstruction per original x, max over the "
     "client's originals. 0 = no better than the attacker's prior image; > 0 = the attack "
     "recovered more than the prior."),
    ("label_accuracy", "label acc.", "Share of the client's labels the attack recovered."),
    ("t_accuracy", "t acc.", "Share of a diffusion client's private timesteps recovered."),
    ("attack_loss", "attack loss",
     "Final attack objective (update-matching loss); a good fit is not always a good image."),
    *_FIT_COLUMNS,
    ("iterations", "iterations", "Attack iterations run."),
    ("seconds", "seconds", "Wall time of the attack."),
)
_SELFCHECK_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("round", "round", "Federated round."),
    ("client", "client", "Client id."),
    ("rdlv", "RDLV", "The client's own RDLV of its update (see the leakage table)."),
    ("threshold_rdlv", "RDLV threshold", "Above this the client withholds its update."),
    ("ssim", "SSIM", "The client's own SSIM of its update."),
    ("threshold_ssim", "SSIM threshold", "Above this the client withholds its update."),
    ("psnr", "PSNR (dB)", "The client's own PSNR of its update."),
    ("withheld", "withheld", "Whether the check found leakage and kept the update back."),
    ("action", "action", "What the client did: send, withhold, or send an empty update."),
    ("reasons", "reasons", "Which thresholds were exceeded."),
)
_SWEEP_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("defense", "defense", "Defense of this sweep cell."),
    ("params", "params", "The defense's parameters."),
    ("seed", "seed", "Random seed."),
    ("accuracy", "accuracy", "Test accuracy of the trained model (utility)."),
    ("f1", "F1", "Macro F1 on the test set (utility)."),
    ("psnr", "PSNR (dB)", "Reconstruction PSNR; higher = more leakage."),
    ("ssim", "SSIM", "Reconstruction SSIM; higher = more leakage."),
    ("mse", "MSE", "Reconstruction MSE; lower = more leakage."),
    ("semantic_accuracy", "semantic acc.",
     "Accuracy of a classifier (trained without defense) on the reconstructions; higher = "
     "more leakage."),
    *_FIT_COLUMNS,
)
_DIGITS = {
    "psnr": ".2f", "flat_psnr": ".2f", "ssim": ".3f", "rdlv": ".3f", "label_accuracy": ".3f",
    "t_accuracy": ".3f",
    "accuracy": ".3f", "f1": ".3f", "semantic_accuracy": ".3f", "threshold_rdlv": ".3f",
    "threshold_ssim": ".3f", "mse": ".3g", "attack_loss": ".3g", "seconds": ".1f",
    "fit_attack_objective": ".3g", "fit_truth_objective": ".3g", "fit_truth_residual": ".3g",
}
#: the fit verdict's cell colour
_FIT_CLASS = {"fits": "fit-ok", "attack-underfit": "fit-bad", "approximate-replay": "fit-warn"}
#: one sentence on how to read the fit column, under every table that has it
FIT_NOTE = (
    "<b>fit</b>: whether the attack fitted the update, judged by its own objective at the "
    "reconstruction and at the true images: <i>fits</i> (green) = the picture is what this "
    "update reveals to this attack; <i>attack-underfit</i> (red) = the optimizer stopped short, "
    "so a low PSNR does not mean the update is safe; <i>approximate-replay</i> (amber) = even "
    "the true images do not reproduce the update, the attack's model of the client is inexact; "
    "hover a verdict for its numbers."
)

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
  margin: 1.5em auto; max-width: 1150px; padding: 0 1em; color: #1d1d1f; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #d0d7de; padding-bottom: 0.2em; margin-top: 1.8em; }
nav a { margin-right: 1em; color: #0550ae; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; padding: 0.8em; overflow-x: auto;
  font-size: 0.85em; }
pre.config { max-height: 36em; }
summary { cursor: pointer; color: #57606a; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #d0d7de; padding: 0.25em 0.55em; }
th { background: #f0f3f6; text-align: left; }
th[title] { cursor: help; text-decoration: underline dotted; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.withheld td { background: #fff1c2; }
table.kv th { width: 12em; }
.scroll { overflow-x: auto; }
.plots { display: flex; flex-wrap: wrap; gap: 0 1.5em; }
.plots figure { flex: 0 1 540px; }
figure { margin: 0.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e1e4e8; }
figcaption { font-size: 0.85em; color: #444; margin-top: 0.2em; }
.note { color: #57606a; font-size: 0.9em; }
.grids figure { margin-bottom: 1em; flex: 0 1 auto; }
footer { margin-top: 3em; font-size: 0.8em; color: #57606a; }
td.fit-ok { background: #dafbe1; } td.fit-bad { background: #ffd8d3; }
td.fit-warn { background: #fff1c2; } td.fit { cursor: help; }
"""


def _esc(v: object) -> str:
    return html.escape(str(v), quote=True)


def _finite(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def _fmt(key: str, v: object) -> str:
    """Plain text for a table cell: numbers rounded per metric, None as a dash."""
    if v is None:
        return _DASH
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return _DASH
        return format(v, _DIGITS.get(key, ".4g"))
    if isinstance(v, Mapping):
        return ", ".join(f"{k}={_fmt(str(k), x)}" for k, x in v.items()) or _DASH
    if isinstance(v, list | tuple):
        return ", ".join(_fmt(key, x) for x in v) or _DASH
    return str(v)


def _fit_cell(r: Mapping[str, Any], prefix: str = "") -> str:
    """The fit verdict, coloured, with its note and objectives as the tooltip."""
    verdict = str(r.get(f"{prefix}fit"))
    tip = [str(r.get(f"{prefix}fit_note") or "")]
    for key, name in (("fit_attack_objective", "attack"), ("fit_truth_objective", "truth")):
        v = _finite(r.get(f"{prefix}{key}"))
        if v is not None:
            tip.append(f"{name} objective {v:.3g}")
    cls = " ".join(["fit", _FIT_CLASS.get(verdict, "")]).strip()
    title = "; ".join(t for t in tip if t)
    return f'<td class="{cls}" title="{_esc(title)}">{_esc(verdict)}</td>'


def _table(
    records: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str, str]],
    *,
    table_id: str,
    row_class: Callable[[Mapping[str, Any]], str] | None = None,
) -> str:
    cols = [c for c in columns if any(c[0] in r for r in records)]
    head = "".join(f'<th title="{_esc(tip)}">{_esc(h)}</th>' for _, h, tip in cols)
    rows = []
    for r in records:
        cls = row_class(r) if row_class else ""
        cells = "".join(
            _fit_cell(r, prefix=k[: -len("fit")])
            if (k == "fit" or k.endswith("_fit")) and isinstance(r.get(k), str)
            else f'<td class="num">{_esc(_fmt(k, r.get(k)))}</td>'
            if _finite(r.get(k)) is not None or r.get(k) is None
            else f"<td>{_esc(_fmt(k, r.get(k)))}</td>"
            for k, _, _ in cols
        )
        attr = f' class="{cls}"' if cls else ""
        rows.append(f"<tr{attr}>{cells}</tr>")
    body = "\n".join(rows)
    return (
        f'<div class="scroll"><table id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>\n{body}\n</tbody></table></div>"
    )


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure(png: bytes, caption: str, alt: str) -> str:
    return (
        f'<figure><img src="{_data_uri(png)}" alt="{_esc(alt)}">'
        f"<figcaption>{_esc(caption)}</figcaption></figure>"
    )


class _Plotter:
    """Draws plots into a scratch folder and embeds them; a plot that cannot be drawn
    (e.g. no finite values) becomes a one-line note instead of failing the whole report."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0

    def __call__(self, fn: Callable[..., Path], data: Any, caption: str, **kw: Any) -> str:
        self.count += 1
        try:
            path = fn(data, self.folder / f"plot{self.count}.png", **kw)
        except FedleakError as e:
            return f'<p class="note">{_esc(caption)}: not drawn ({_esc(e)})</p>'
        return _figure(path.read_bytes(), caption, caption)


def _key(r: Mapping[str, Any]) -> tuple[str, str]:
    return (str(r.get("round")), str(r.get("client")))


def _withheld(
    rounds: Iterable[Mapping[str, Any]], selfcheck: Iterable[Mapping[str, Any]]
) -> set[tuple[str, str]]:
    """(round, client) pairs whose update the client kept back, from either file."""
    out = {_key(s) for s in selfcheck if s.get("withheld") is True}
    for r in rounds:
        ids = r.get("withheld")
        if isinstance(ids, list):
            out |= {(str(r.get("round")), str(c)) for c in ids}
    return out


def _distinct(records: Iterable[Mapping[str, Any]], key: str) -> list[float]:
    return sorted({v for r in records if (v := _finite(r.get(key))) is not None})


def _grid_png(run_dir: Path, rel: object) -> tuple[bytes | None, str]:
    """The PNG bytes of a grid inside the run folder, or None and why not."""
    if not isinstance(rel, str) or not rel:
        return None, "no grid path recorded"
    root = run_dir.resolve()
    p = (root / rel).resolve()
    if not p.is_relative_to(root):
        return None, f"grid path {rel!r} points outside the run folder; not embedded"
    if not p.is_file():
        return None, f"grid file {rel!r} is missing"
    data = p.read_bytes()
    if not data.startswith(_PNG_MAGIC):
        return None, f"grid file {rel!r} is not a PNG"
    return data, ""


def _utc(ts: float | None = None) -> str:
    t = datetime.now(UTC) if ts is None else datetime.fromtimestamp(ts, UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def _load_config(run_dir: Path) -> tuple[Any, str]:
    path = run_dir / "config.json"
    if not path.is_file():
        return None, "no config.json in the run folder"
    try:
        return json.loads(path.read_text()), ""
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, f"config.json could not be read ({e})"


def _planned_audits(audit_config: Any) -> int | None:
    """How many (round, client) updates the audit's config schedules for an attack."""
    if not isinstance(audit_config, Mapping):
        return None
    try:
        fed, aud = audit_config["federation"], audit_config["audit"]
        rounds, n = int(fed["rounds"]), len(fed["clients"])
        start, every = int(aud.get("start", 1)), int(aud.get("every", 1))
        clients = aud.get("clients", "all")
        audited = n if clients == "all" else len({int(c) for c in clients})
    except (KeyError, TypeError, ValueError):
        return None
    scheduled = sum(1 for r in range(1, rounds + 1) if r >= start and (r - start) % every == 0)
    return scheduled * audited


def _summary(
    run_dir: Path,
    config: Any,
    rounds: list[dict[str, Any]],
    leakage: list[dict[str, Any]],
    withheld: set[tuple[str, str]],
    sweep: list[dict[str, Any]],
    written: str,
) -> str:
    cfg = config if isinstance(config, Mapping) else {}
    cfg_file = run_dir / "config.json"
    rows: list[tuple[str, str]] = [
        ("run folder", run_dir.name or str(run_dir)),
        ("command", _fmt("", cfg.get("command"))),
        ("fedleak version", _fmt("", cfg.get("fedleak_version"))),
        ("run written", _utc(cfg_file.stat().st_mtime) if cfg_file.is_file() else _DASH),
        ("report written", f"{written} by fedleak {__version__}"),
    ]
    if rounds:
        acc = [a for r in rounds if (a := _finite(r.get("accuracy"))) is not None]
        rows.append(("rounds", str(len(rounds))))
        if acc:
            rows.append(("final test accuracy", f"{acc[-1]:.3f}"))
        loss = [a for r in rounds if (a := _finite(r.get("test_loss"))) is not None]
        if loss:
            rows.append(("final test loss (DDPM)", f"{loss[-1]:.4f}"))
    planned = _planned_audits(cfg.get("audit_config"))
    if leakage or planned:
        done = len(leakage)
        text = str(done)
        if planned is not None and done + len(withheld) < planned:
            text = (f"{done} of {planned} planned: PARTIAL (the audit stopped early or is still "
                    "running; fedleak audit --resume continues it)")
        elif planned is not None:
            text = f"{done} of {planned} planned"
        rows.append(("audited updates", text))
    if leakage:
        rows.append(("clients audited", str(len({str(r.get("client")) for r in leakage}))))
        for key, label in (("attack", "attacks"), ("threat", "threat levels")):
            vals = sorted({str(r[key]) for r in leakage if r.get(key) is not None})
            if vals:
                rows.append((label, ", ".join(vals)))
    if withheld:
        rows.append(("withheld updates", str(len(withheld))))
    if sweep:
        rows.append(("sweep cells", str(len(sweep))))
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv" id="summary-table">{body}</table>'


def _leakage_section(
    leakage: list[dict[str, Any]],
    withheld: set[tuple[str, str]],
    sweep: list[dict[str, Any]],
    plot: _Plotter,
) -> str:
    parts = [
        '<section id="leakage"><h2>Leakage per audited update</h2>',
        '<p class="note">One row per audited update. Hover a column header for its meaning. '
        "<b>RDLV</b>: (SSIM(reconstruction, x) - SSIM(prior, x)) / SSIM(prior, x); 0 = no "
        "better than the attacker's prior, &gt; 0 = leakage beyond it. <b>flat PSNR</b>: the "
        "PSNR a featureless flat image scores; a PSNR that does not beat it recovered no "
        "structure. "
        + FIT_NOTE
        + (" Highlighted rows: the client withheld the update." if withheld else "")
        + "</p>",
        _table(leakage, _LEAKAGE_COLUMNS, table_id="leakage-table",
               row_class=lambda r: "withheld" if _key(r) in withheld else ""),
        '<div class="plots">',
    ]
    for metric in ("ssim", "psnr", "rdlv"):
        if _distinct(leakage, metric):
            parts.append(plot(plot_leakage_per_round, leakage, f"{metric.upper()} per round",
                              metric=metric))
    main = "rdlv" if _distinct(leakage, "rdlv") else "ssim"
    for knob in ("batch_size", "num_images", "local_steps"):
        if len(_distinct(leakage, knob)) > 1:
            parts.append(plot(plot_leakage_vs, leakage, f"{main.upper()} vs {knob}",
                              x=knob, metric=main))
    sigma0s = _distinct(leakage, "sigma0")
    if sigma0s:
        acc: dict[float, list[float]] = {}
        for c in sweep:
            params = c.get("params")
            s0 = _finite(params.get("sigma0")) if isinstance(params, Mapping) else None
            a = _finite(c.get("accuracy"))
            if s0 is not None and a is not None:
                acc.setdefault(s0, []).append(a)
        if len(sigma0s) > 1 or acc:  # one noise level alone says nothing
            parts.append(plot(
                plot_leakage_vs, leakage, f"{main.upper()} vs sigma0", x="sigma0", metric=main,
                accuracy={k: sum(v) / len(v) for k, v in acc.items()} or None,
            ))
    parts.append("</div></section>")
    return "\n".join(parts)


def _sweep_section(sweep: list[dict[str, Any]], plot: _Plotter) -> str:
    known = {c[0] for c in _SWEEP_COLUMNS} | {"fit_note", "fit_attack_residual"}
    extra = sorted({
        k for c in sweep for k, v in c.items()
        if k not in known and (v is None or isinstance(v, int | float | str | bool))
    })
    columns = list(_SWEEP_COLUMNS) + [(k, k, f"Recorded value {k!r}.") for k in extra]
    utility = "accuracy" if _distinct(sweep, "accuracy") else "f1"
    parts = [
        '<section id="sweep"><h2>Sweep: privacy vs utility</h2>',
        *([f'<p class="note">{FIT_NOTE}</p>'] if any("fit" in c for c in sweep) else []),
        _table(sweep, columns, table_id="sweep-table"),
        '<div class="plots">',
    ]
    for leak in SWEEP_LEAKAGE:
        if _distinct(sweep, leak):
            parts.append(plot(plot_privacy_utility, sweep, f"{leak} vs {utility} per defense",
                              leakage=leak, utility=utility))
    parts.append("</div>")
    parts.append(_study_part(sweep, plot))
    parts.append("</section>")
    return "\n".join(parts)


def _study_part(sweep: list[dict[str, Any]], plot: _Plotter) -> str:
    """Seed 001's study (issue 12): per attacker, intervals and leakage vs client accuracy."""
    from fedleak.report.study import attackers, plot_study, study_points, study_table_html

    knows = attackers(sweep)
    if not knows:
        return ""
    parts = ['<h3 id="study">Study per attacker (mean ± 95 % interval over seeds x batches)</h3>',
             study_table_html(sweep), '<div class="plots">']
    for know in knows:
        pts = study_points(sweep, know)
        for key in ("mse", "semantic_accuracy"):
            parts.append(plot(plot_study, pts, f"{key} vs client accuracy, attacker {know}",
                              key=key, knowledge=know))
    parts.append("</div>")
    return "\n".join(parts)


def _grids_section(run_dir: Path, leakage: list[dict[str, Any]]) -> str:
    figs, notes = [], []
    for r in leakage:
        if "grid" not in r:
            continue
        where = f"round {_fmt('round', r.get('round'))}, client {_fmt('client', r.get('client'))}"
        png, why = _grid_png(run_dir, r.get("grid"))
        if png is None:
            notes.append(f"{where}: {why}")
            continue
        caption = (
            f"{where}: PSNR {_fmt('psnr', r.get('psnr'))} dB, SSIM {_fmt('ssim', r.get('ssim'))}"
            + (f", fit: {r['fit']}" if r.get("fit") else "")
        )
        alt = f"originals (top) and best-matching reconstructions (bottom), {where}"
        figs.append(_figure(png, caption, alt))
    if not figs and not notes:
        return ""
    no_grid = sum(1 for r in leakage if "grid" not in r)
    parts = [
        '<section id="grids" class="grids"><h2>Reconstructions</h2>',
        '<p class="note">Each grid: the client\'s originals above their best-matching '
        "reconstructions." + (f" {no_grid} audited updates have no grid." if no_grid else "")
        + "</p>",
        '<div class="plots">',
        *figs,
        "</div>",
    ]
    if notes:
        parts.append(
            '<ul class="note">' + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def write_report(run_dir: str | Path, *, out: str | Path | None = None) -> Path:
    """Write one offline HTML page for a run folder and return its path.

    Reads ``config.json``, ``rounds.jsonl``, ``leakage.jsonl``, ``selfcheck.jsonl`` and
    ``sweep.jsonl`` (each optional; a truncated last line is ignored) and the grid PNGs that
    leakage records name. ``out`` defaults to ``run_dir/report.html``; it is written atomically.

    Raises:
        DataError: ``run_dir`` is not a folder, or holds none of the record files.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(
            f"`run_dir` of write_report must be an existing run folder; got {str(run_dir)!r}."
        )
    rounds = [r for r in read_jsonl(run_dir / "rounds.jsonl") if isinstance(r, dict)]
    leakage = [r for r in read_jsonl(run_dir / "leakage.jsonl") if isinstance(r, dict)]
    selfcheck = [r for r in read_jsonl(run_dir / "selfcheck.jsonl") if isinstance(r, dict)]
    sweep = [r for r in read_jsonl(run_dir / "sweep.jsonl") if isinstance(r, dict)]
    if not (rounds or leakage or selfcheck or sweep):
        raise DataError(
            f"`run_dir` of write_report must hold records (rounds.jsonl, leakage.jsonl, "
            f"selfcheck.jsonl or sweep.jsonl); none found in {str(run_dir)!r}."
        )
    config, config_note = _load_config(run_dir)
    withheld = _withheld(rounds, selfcheck)
    written = _utc()
    title = f"fedleak report: {run_dir.resolve().name}"

    sections: list[str] = []
    nav: list[tuple[str, str]] = [("summary", "Summary"), ("config", "Config")]
    with tempfile.TemporaryDirectory(prefix="fedleak-report-") as tmp:
        plot = _Plotter(Path(tmp))
        cfg_text = (
            json.dumps(config, indent=2, ensure_ascii=False, default=str)
            if config is not None else config_note
        )
        sections.append(
            '<section id="config"><h2>Configuration</h2><details open><summary>config.json'
            f'</summary><pre class="config">{_esc(cfg_text)}</pre></details></section>'
        )
        if rounds and any(r.get("test_loss") is not None for r in rounds):
            nav.append(("accuracy", "Utility"))
            sections.append('<section id="accuracy"><h2>Test loss of the diffusion model</h2>'
                            + plot(plot_accuracy, rounds, "test loss per round",
                                   metric="test_loss")
                            + "</section>")
        elif rounds:
            nav.append(("accuracy", "Accuracy"))
            sections.append('<section id="accuracy"><h2>Test accuracy</h2>'
                            + plot(plot_accuracy, rounds, "test accuracy per round")
                            + "</section>")
        if leakage:
            nav.append(("leakage", "Leakage"))
            sections.append(_leakage_section(leakage, withheld, sweep, plot))
        if selfcheck:
            nav.append(("selfcheck", "Client self-check"))
            sections.append(
                '<section id="selfcheck"><h2>Client self-check</h2>'
                '<p class="note">The client\'s own leakage check of each update before sending '
                "it; highlighted rows were withheld.</p>"
                + _table(selfcheck, _SELFCHECK_COLUMNS, table_id="selfcheck-table",
                         row_class=lambda r: "withheld" if r.get("withheld") is True else "")
                + "</section>"
            )
        if sweep:
            nav.append(("sweep", "Sweep"))
            sections.append(_sweep_section(sweep, plot))
        grids = _grids_section(run_dir, leakage)
        if grids:
            nav.append(("grids", "Reconstructions"))
            sections.append(grids)

    page = "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        "<nav>" + "".join(f'<a href="#{a}">{_esc(t)}</a>' for a, t in nav) + "</nav>",
        '<section id="summary"><h2>Summary</h2>'
        + _summary(run_dir, config, rounds, leakage, withheld, sweep, written)
        + "</section>",
        *sections,
        f"<footer>Written {_esc(written)} by fedleak {_esc(__version__)}. This page is "
        "self-contained: it loads nothing from the network.</footer>",
        "</body></html>",
        "",
    ])
    path = Path(out) if out is not None else run_dir / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(path.name + ".tmp")
    tmp_path.write_text(page, encoding="utf-8")
    os.replace(tmp_path, path)
    return path
