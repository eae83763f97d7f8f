"""PNG plots of a run's records: leakage per round, leakage vs a knob, accuracy, privacy-utility.

Inputs are the plain dicts of the run folder's JSONL files (see :mod:`fedleak.report.run`), so a
plot can be redrawn from disk long after the run. Like :func:`~fedleak.report.save_grid`, every
function draws on a standalone :class:`~matplotlib.figure.Figure` with an Agg canvas: no pyplot,
no ``matplotlib.use``, so the caller's backend and open figures are untouched and it works
headless. ``None``/NaN values are skipped (a crashed attack writes ``null``), never plotted as 0.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedleak.errors import ConfigError, DataError
from fedleak.metrics import HIGHER_IS_BETTER

__all__ = [
    "LEAKAGE_METRICS",
    "SWEEP_LEAKAGE",
    "UNDEFENDED",
    "VS_KNOBS",
    "plot_accuracy",
    "plot_leakage_per_round",
    "plot_leakage_vs",
    "plot_privacy_utility",
]

# Axis text per metric; the direction comes from the metrics' own ``HIGHER_IS_BETTER``.
_LABELS: dict[str, str] = {
    "ssim": "SSIM",
    "psnr": "PSNR (dB)",
    "mse": "MSE",
    "rdlv": "RDLV",
    "flat_psnr": "flat-image PSNR (dB)",
    "label_accuracy": "label accuracy",
    "semantic_accuracy": "semantic accuracy",
    "accuracy": "test accuracy",
    "f1": "test F1",
}
_HIGHER_LEAKS: dict[str, bool] = {
    **HIGHER_IS_BETTER, "flat_psnr": True, "semantic_accuracy": True,  # better = more leaked
}
LEAKAGE_METRICS: tuple[str, ...] = ("ssim", "psnr", "rdlv", "mse", "flat_psnr")
VS_KNOBS: tuple[str, ...] = ("sigma0", "batch_size", "num_images", "local_steps")
SWEEP_LEAKAGE: tuple[str, ...] = ("psnr", "ssim", "mse", "semantic_accuracy")
_UTILITY: tuple[str, ...] = ("accuracy", "f1")
UNDEFENDED: frozenset[str] = frozenset({"none", "undefended", "baseline", "no_defense", ""})
_KNOB_LABELS = {
    "sigma0": "noise level sigma0 (x 95th percentile of |update|)",
    "batch_size": "local batch size",
    "num_images": "images per client",
    "local_steps": "local steps",
}
_MAX_LEGEND = 12  # more series than this: no per-series legend, it would hide the data
_FIGSIZE = (6.0, 4.0)
_DPI = 100


def _num(v: object) -> float | None:
    """``v`` as a finite float, or None: JSON ``null``, NaN, inf, bools and text are skipped."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _check_choice(value: str, choices: Sequence[str], param: str, caller: str) -> str:
    if value not in choices:
        raise ConfigError(
            f"`{param}` of {caller} must be one of {', '.join(map(repr, choices))}; got {value!r}."
        )
    return value


def _check_records(records: object, param: str, caller: str, what: str) -> list[dict[str, Any]]:
    if isinstance(records, Mapping | str | bytes) or not isinstance(records, Iterable):
        raise ConfigError(
            f"`{param}` of {caller} must be a list of {what} dicts (read_jsonl's output); "
            f"got {type(records).__name__!r}."
        )
    out = list(records)
    if not out:
        raise DataError(f"`{param}` of {caller} must hold at least one {what}; got none.")
    for i, r in enumerate(out):
        if not isinstance(r, Mapping):
            raise DataError(
                f"`{param}[{i}]` of {caller} must be a dict ({what}); got {type(r).__name__!r}."
            )
    return out


def _check_path(path: str | Path, caller: str) -> Path:
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise ConfigError(f"`path` of {caller} must end in .png; got {str(path)!r}.")
    return p


def _no_values(param: str, caller: str, key: str, n: int) -> DataError:
    return DataError(
        f"`{param}` of {caller} has no finite {key!r} value in its {n} records "
        "(all missing, null or NaN); nothing to plot."
    )


def _axis_label(key: str) -> str:
    """Metric label plus which way leaks more, so nobody reads a plot upside down."""
    label = _LABELS.get(key, key)
    if key in _HIGHER_LEAKS:
        return label + (" (higher = more leakage)" if _HIGHER_LEAKS[key] else
                        " (lower = more leakage)")
    return label


def _privacy_label(key: str) -> str:
    label = _LABELS.get(key, key)
    return label + (", lower = more private" if _HIGHER_LEAKS.get(key, True) else
                    ", higher = more private")


def _id_key(v: object) -> tuple[int, float, str]:
    """Sort client ids numerically when they are numbers, else as text."""
    f = _num(v)
    return (0, f, "") if f is not None else (1, 0.0, str(v))


def _new_figure() -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=_FIGSIZE, dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _fmt(v: float) -> str:
    return f"{v:g}"


def _set_x(ax: Any, xs: Sequence[float]) -> None:
    """Log x when the values span more than 2 decades (symlog if 0 is among them)."""
    pos = [x for x in xs if x > 0]
    if len(pos) >= 2 and max(pos) / min(pos) > 100:
        if any(x <= 0 for x in xs):
            ax.set_xscale("symlog", linthresh=min(pos))
        else:
            ax.set_xscale("log")
    if len(xs) <= 10:
        ax.set_xticks(list(xs))
        ax.set_xticklabels([_fmt(x) for x in xs])
        ax.minorticks_off()


def _mean_std(vals: Sequence[float]) -> tuple[float, float]:
    m = sum(vals) / len(vals)
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / len(vals))


def plot_leakage_per_round(
    records: Sequence[Mapping[str, Any]], path: str | Path, *, metric: str = "ssim"
) -> Path:
    """One line per client over the audited rounds: does leakage fall as the model trains?

    ``records`` are leakage.jsonl records (``round``, ``client``, the metric; ``attack`` splits a
    client's line when several attacks were run). ``metric`` is one of :data:`LEAKAGE_METRICS`;
    for ``rdlv`` a dashed line at 0 marks the prior level (no leakage beyond the prior).

    Raises:
        ConfigError: unknown metric, a path not ending in .png.
        DataError: no records, or none with a finite round and metric value.
    """
    caller = "plot_leakage_per_round"
    _check_choice(metric, LEAKAGE_METRICS, "metric", caller)
    path = _check_path(path, caller)
    recs = _check_records(records, "records", caller, "leakage record")
    attacks = {str(r.get("attack")) for r in recs}
    series: dict[tuple[Any, str], list[tuple[float, float]]] = defaultdict(list)
    for r in recs:
        x, y = _num(r.get("round")), _num(r.get(metric))
        if x is not None and y is not None:
            series[(r.get("client"), str(r.get("attack")))].append((x, y))
    if not series:
        raise _no_values("records", caller, metric, len(recs))

    fig, ax = _new_figure()
    keys = sorted(series, key=lambda k: (_id_key(k[0]), k[1]))
    legend = len(keys) <= _MAX_LEGEND
    for client, attack in keys:
        pts = sorted(series[(client, attack)])
        label = f"client {client}" + (f" ({attack})" if len(attacks) > 1 else "")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4,
                label=label if legend else None)
    if metric == "rdlv":
        ax.axhline(0.0, color="k", ls="--", lw=1, label="prior level")
    if metric == "psnr":
        # what a blob scores: the flat image at each original's mean, averaged per round
        flat: dict[float, list[float]] = defaultdict(list)
        for r in recs:
            x, f = _num(r.get("round")), _num(r.get("flat_psnr"))
            if x is not None and f is not None:
                flat[x].append(f)
        if flat:
            xs = sorted(flat)
            ax.plot(xs, [sum(flat[x]) / len(flat[x]) for x in xs], color="k", ls="--", lw=1,
                    marker="_" if len(xs) == 1 else None, ms=12, label="flat image (no leakage)")
    rounds = sorted({p[0] for pts in series.values() for p in pts})
    if len(rounds) <= 10:  # label exactly the audited rounds (one round: no 0.96, 0.98, ...)
        ax.set_xticks(rounds)
        ax.set_xticklabels([_fmt(x) for x in rounds])
        ax.minorticks_off()
    else:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(_axis_label(metric))
    n_clients = len({k[0] for k in keys})
    ax.set_title(f"{metric.upper()} per audited round ({n_clients} clients)")
    if legend or metric in ("rdlv", "psnr"):
        ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def plot_leakage_vs(
    records: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    x: str = "sigma0",
    metric: str = "rdlv",
    accuracy: Mapping[Any, float | None] | None = None,
) -> Path:
    """Mean and std of a leakage metric per value of one knob, optionally with test accuracy.

    Seed 000's figure: leakage falls with the noise level sigma0 while accuracy holds, up to a
    point. ``x`` is one of :data:`VS_KNOBS` (records without it are skipped); ``accuracy`` maps
    x values (numbers or their JSON strings) to test accuracy, drawn on a twin y axis. The x
    axis is logarithmic when its positive values span more than 2 decades (symlog with 0).

    Raises:
        ConfigError: unknown ``x`` or metric, bad ``accuracy``, a path not ending in .png.
        DataError: no records, or none with finite ``x`` and metric values.
    """
    caller = "plot_leakage_vs"
    _check_choice(x, VS_KNOBS, "x", caller)
    _check_choice(metric, ("rdlv", "ssim", "psnr", "mse", "flat_psnr"), "metric", caller)
    path = _check_path(path, caller)
    recs = _check_records(records, "records", caller, "leakage record")
    groups: dict[float, list[float]] = defaultdict(list)
    for r in recs:
        xv, yv = _num(r.get(x)), _num(r.get(metric))
        if xv is not None and yv is not None:
            groups[xv].append(yv)
    if not groups:
        raise DataError(
            f"`records` of {caller} has no record with both a finite {x!r} and {metric!r} "
            f"value among its {len(recs)} records; nothing to plot."
        )
    acc: dict[float, float] = {}
    if accuracy is not None:
        if not isinstance(accuracy, Mapping):
            raise ConfigError(
                f"`accuracy` of {caller} must be a dict of {x} value -> test accuracy; "
                f"got {type(accuracy).__name__!r}."
            )
        for k, v in accuracy.items():
            try:
                kx = float(k)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"`accuracy` of {caller} must have numeric {x} keys; got {k!r}."
                ) from None
            if _num(v) is not None and math.isfinite(kx):
                acc[kx] = float(v)  # type: ignore[arg-type]

    xs = sorted(groups)
    stats = [_mean_std(groups[v]) for v in xs]
    fig, ax = _new_figure()
    ax.errorbar(xs, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", ms=5,
                capsize=4, color="C0", label=f"{metric.upper()} (mean ± std)")
    if metric == "rdlv":
        ax.axhline(0.0, color="k", ls="--", lw=1, label="prior level")
    handles, labels = ax.get_legend_handles_labels()
    if acc:
        ax2 = ax.twinx()
        ax_x = sorted(acc)
        ax2.plot(ax_x, [acc[v] for v in ax_x], color="C3", marker="s", ms=4, ls="-",
                 label="test accuracy")
        ax2.set_ylabel("test accuracy", color="C3")
        ax2.tick_params(axis="y", colors="C3")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    _set_x(ax, sorted(set(xs) | set(acc)))
    ax.set_xlabel(_KNOB_LABELS[x])
    ax.set_ylabel(_axis_label(metric))
    n = sum(len(v) for v in groups.values())
    ax.set_title(f"{metric.upper()} vs {x} ({n} audited updates)")
    ax.legend(handles, labels, fontsize=8, loc="best")
    return _save(fig, path)


def plot_accuracy(
    rounds: Sequence[Mapping[str, Any]], path: str | Path, *, metric: str = "accuracy"
) -> Path:
    """Test accuracy per round, from rounds.jsonl: what the defense cost the federation.

    ``metric="test_loss"`` draws a diffusion federation's utility (its DDPM test loss) instead.

    Raises:
        ConfigError: a path not ending in .png, or another metric.
        DataError: no records, or none with a finite round and value.
    """
    caller = "plot_accuracy"
    if metric not in ("accuracy", "test_loss"):
        raise ConfigError(
            f"`metric` of {caller} must be 'accuracy' or 'test_loss'; got {metric!r}."
        )
    path = _check_path(path, caller)
    recs = _check_records(rounds, "rounds", caller, "round record")
    pts = sorted(
        (x, y) for r in recs
        if (x := _num(r.get("round"))) is not None and (y := _num(r.get(metric))) is not None
    )
    if not pts:
        raise _no_values("rounds", caller, metric, len(recs))
    fig, ax = _new_figure()
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) <= 50 else None,
            ms=4, color="C2")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    name = "test accuracy" if metric == "accuracy" else "test loss (DDPM)"
    ax.set_ylabel(name)
    ax.set_title(f"{name[0].upper() + name[1:]} per round (last: {pts[-1][1]:.3f})")
    return _save(fig, path)


def _params_key(params: object) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def _show(v: object) -> str:
    return _fmt(float(v)) if _num(v) is not None else str(v)  # type: ignore[arg-type]


def _param_label(params: Mapping[str, Any], swept: Sequence[str]) -> str:
    """"sigma0=25" for the swept parameters (all of them for a single-point defense)."""
    keys = swept or sorted(params)
    text = ", ".join(f"{k}={_show(params.get(k))}" for k in keys)
    return text if len(text) <= 40 else text[:39] + "..."


def plot_privacy_utility(
    cells: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    leakage: str = "psnr",
    utility: str = "accuracy",
) -> Path:
    """Leakage (x) against utility (y), one curve per defense: what each unit of privacy costs.

    ``cells`` are sweep.jsonl records (``defense``, ``params``, ``seed``, the two metrics);
    seeds of the same defense and params are averaged. Each curve's points are sorted by utility
    and labelled with the swept parameter's value; the undefended baseline (a defense named
    one of :data:`UNDEFENDED`) is a star. ``leakage`` is one of :data:`SWEEP_LEAKAGE`,
    ``utility`` ``"accuracy"`` or ``"f1"``.

    Raises:
        ConfigError: unknown metric names, a path not ending in .png.
        DataError: no cells, or none with finite leakage and utility values.
    """
    caller = "plot_privacy_utility"
    _check_choice(leakage, SWEEP_LEAKAGE, "leakage", caller)
    _check_choice(utility, _UTILITY, "utility", caller)
    path = _check_path(path, caller)
    recs = _check_records(cells, "cells", caller, "sweep cell")
    # defense -> params key -> (params, [leakage], [utility])
    by_def: dict[str, dict[str, tuple[Mapping[str, Any], list[float], list[float]]]] = (
        defaultdict(dict)
    )
    for c in recs:
        lv, uv = _num(c.get(leakage)), _num(c.get(utility))
        if lv is None or uv is None:
            continue
        params = c.get("params") if isinstance(c.get("params"), Mapping) else {}
        d = str(c.get("defense") if c.get("defense") is not None else "none")
        entry = by_def[d].setdefault(_params_key(params), (params, [], []))
        entry[1].append(lv)
        entry[2].append(uv)
    if not by_def:
        raise DataError(
            f"`cells` of {caller} has no cell with both a finite {leakage!r} and {utility!r} "
            f"value among its {len(recs)} cells; nothing to plot."
        )

    fig, ax = _new_figure()
    color = 0
    for d in sorted(by_def, key=lambda s: (s.lower() not in UNDEFENDED, s)):
        points = [
            (sum(u) / len(u), sum(lk) / len(lk), p) for p, lk, u in by_def[d].values()
        ]
        if d.lower() in UNDEFENDED:
            ax.plot([p[1] for p in points], [p[0] for p in points], ls="none", marker="*",
                    ms=16, color="k", label="undefended", zorder=5)
            continue
        points.sort(key=lambda p: p[0])
        all_keys = sorted({k for p in points for k in p[2]})
        swept = [
            k for k in all_keys if len({_params_key(p[2].get(k)) for p in points}) > 1
        ]
        ax.plot([p[1] for p in points], [p[0] for p in points], marker="o", ms=5,
                color=f"C{color % 10}", label=d)
        color += 1
        for u, lv, params in points:
            text = _param_label(params, swept)
            if text:
                ax.annotate(text, (lv, u), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color="0.25")
    ax.margins(0.1)  # room for the star and the point labels at the edges
    ax.set_xlabel(_privacy_label(leakage))
    ax.set_ylabel(f"{_LABELS[utility]}, higher = more useful")
    ax.set_title(f"Privacy vs utility: {leakage} vs {utility}")
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)
