"""The seed-001 study's statistics and curves (issue 12), shared by the HTML report and
``benchmarks/defense_study.py``.

A sweep whose records carry per-attacker scores (``<knowledge>_mse``, ... and per-batch
``<knowledge>_mse_batches``) is summarized per attacker: one point per (defense, params), with
the mean and a 95 % t-interval over every seed x probed batch for the leakage scores and over
seeds for client accuracy. The paper's comparison is leakage against client accuracy, one
curve per method: :func:`plot_study` draws it with the intervals as error bars.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from fedleak.errors import ConfigError, DataError

__all__ = [
    "KNOWLEDGE_LABEL",
    "STUDY_MEASURES",
    "attackers",
    "interval",
    "plot_study",
    "study_points",
    "study_table_html",
]

#: the attackers of :mod:`fedleak.defenses.knowledge`, in order, with the study's wording
KNOWLEDGE_LABEL = {
    "none": "none (the paper's attacker: no client noise)",
    "distribution": "distribution (knows mu, sigma; samples)",
    "exact": "exact (the client's noise mean)",
    "adaptive": "adaptive (optimizes a latent shift)",
}
STUDY_MEASURES = ("mse", "psnr", "ssim", "semantic_accuracy")
_PLOTTED = {"mse": "reconstruction MSE", "semantic_accuracy": "attacker accuracy",
            "psnr": "PSNR (dB)", "ssim": "SSIM"}


def _numbers(values: list[Any]) -> list[float]:
    return [float(v) for v in values
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]


def interval(values: list[Any]) -> tuple[float | None, float | None, int]:
    """(mean, half-width of the 95 % t-interval, n) of the finite numbers in ``values``.

    The half-width is None for fewer than two values (no spread to measure); the mean is None
    for none.
    """
    vals = _numbers(values)
    if not vals:
        return None, None, 0
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, None, 1
    from scipy import stats

    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
    return m, float(stats.t.ppf(0.975, len(vals) - 1)) * sd / math.sqrt(len(vals)), len(vals)


def attackers(records: list[dict[str, Any]]) -> list[str]:
    """The attacker settings whose scores the records carry, in :data:`KNOWLEDGE_LABEL` order."""
    return [k for k in KNOWLEDGE_LABEL if any(f"{k}_psnr" in r for r in records)]


def _samples(r: dict[str, Any], know: str, key: str) -> list[Any]:
    """A record's per-batch values of ``key`` for attacker ``know`` (one value if unbatched)."""
    batches = r.get(f"{know}_{key}_batches")
    if batches is not None:
        return list(batches)
    return [r.get(f"{know}_{key}", r.get(key) if know == r.get("knowledge") else None)]


def study_points(records: list[dict[str, Any]], know: str) -> dict[str, list[dict[str, Any]]]:
    """Per defense label: one point per params, sorted by client accuracy.

    Each point has ``accuracy`` / ``accuracy_ci`` (over seeds), every
    :data:`STUDY_MEASURES` key with ``<key>_ci`` (over seeds x batches) and ``n`` (samples),
    ``rounds`` (mean rounds trained), ``reached`` (share of seeds that reached the stop rule's
    target; None without one), ``flat_psnr``, ``epsilon`` (DP: what the probed client spent)
    and the noise-to-latent ratios of latent cells.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        params = r.get("params") if isinstance(r.get("params"), dict) else {}
        groups[(str(r.get("defense")), repr(sorted(params.items())))].append(r)
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (defense, _), rs in groups.items():
        pt: dict[str, Any] = {"params": rs[0].get("params") or {}, "seeds": len(rs)}
        pt["accuracy"], pt["accuracy_ci"], _ = interval([r.get("accuracy") for r in rs])
        for key in STUDY_MEASURES:
            vals = [v for r in rs for v in _samples(r, know, key)]
            pt[key], pt[f"{key}_ci"], pt["n"] = interval(vals)
        pt["rounds"] = interval([r.get("rounds_trained") for r in rs])[0]
        reached = [r["reached_target"] for r in rs if "reached_target" in r]
        pt["reached"] = sum(map(bool, reached)) / len(reached) if reached else None
        for key, src in (("flat_psnr", "flat_psnr"), ("epsilon", "probe_epsilon"),
                         ("noise_latent_ratio", "noise_latent_ratio"),
                         ("noise_latent_ratio_plain", "noise_latent_ratio_plain")):
            pt[key] = interval([r.get(src) for r in rs])[0]
        out[defense].append(pt)
    for pts in out.values():
        pts.sort(key=lambda p: (p["accuracy"] is None, p["accuracy"] or 0.0))
    return dict(out)


def plot_study(
    points: dict[str, list[dict[str, Any]]], path: str | Path, *, key: str = "mse",
    knowledge: str = "none",
) -> Path:
    """``key`` (y) against client accuracy (x), one curve per method, 95 % intervals as bars.

    ``points`` is :func:`study_points`' result. The undefended baseline is a star.

    Raises:
        ConfigError: an unknown ``key`` or a path not ending in .png.
        DataError: no point with a finite accuracy and ``key``.
    """
    if key not in _PLOTTED:
        raise ConfigError(f"`key` of plot_study must be one of {', '.join(_PLOTTED)}; got {key!r}.")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"`path` of plot_study must end in .png; got {str(path)!r}.")
    curves = {d: [p for p in ps if p.get(key) is not None and p.get("accuracy") is not None]
              for d, ps in points.items()}
    curves = {d: ps for d, ps in curves.items() if ps}
    if not curves:
        raise DataError(f"`points` of plot_study has no point with accuracy and {key!r}.")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 3.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.grid(True, alpha=0.3)
    for d in sorted(curves, key=lambda s: (s != "none", s)):
        ps = curves[d]
        ax.errorbar([p["accuracy"] for p in ps], [p[key] for p in ps],
                    xerr=[p.get("accuracy_ci") or 0 for p in ps],
                    yerr=[p.get(f"{key}_ci") or 0 for p in ps],
                    marker="*" if d == "none" else "o", ms=10 if d == "none" else 5,
                    capsize=3, label="undefended" if d == "none" else d)
    ax.set_xlabel("client accuracy")
    ax.set_ylabel(_PLOTTED[key])
    ax.set_title(f"attacker: {KNOWLEDGE_LABEL.get(knowledge, knowledge)}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _pm(v: Any, ci: Any, spec: str) -> str:
    if v is None:
        return "-"
    return format(v, spec) + (f" ± {format(ci, spec)}" if ci is not None else "")


def study_table_html(records: list[dict[str, Any]]) -> str:
    """One table per attacker: every (defense, params) with mean ± 95 % interval."""
    parts = []
    for know in attackers(records):
        pts = study_points(records, know)
        rows = []
        for d in sorted(pts, key=lambda s: (s != "none", s)):
            for p in pts[d]:
                params = ", ".join(f"{k}={v}" for k, v in p["params"].items()) or "-"
                reached = "-" if p["reached"] is None else f"{p['reached']:.2f}"
                cells = [d, params, _pm(p["accuracy"], p["accuracy_ci"], ".3f"),
                         "-" if p["rounds"] is None else f"{p['rounds']:.1f}", reached,
                         _pm(p["mse"], p["mse_ci"], ".4f"), _pm(p["psnr"], p["psnr_ci"], ".2f"),
                         _pm(p["ssim"], p["ssim_ci"], ".3f"),
                         _pm(p["semantic_accuracy"], p["semantic_accuracy_ci"], ".2f"),
                         str(p["n"])]
                rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
                            + "</tr>")
        head = ("defense", "params", "client acc", "rounds", "reached target", "MSE", "PSNR",
                "SSIM", "attacker acc", "n")
        parts.append(
            f"<h3>Attacker: {html.escape(KNOWLEDGE_LABEL[know])}</h3><table><thead><tr>"
            + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>"
        )
    return "\n".join(parts)
