"""Leakage plots: a flat-image reference on PSNR plots, whole-number round ticks."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedleak.report import plots


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list:
    figs: list = []
    real = plots._save

    def keep(fig, path):
        figs.append(fig)
        return real(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figs


def test_single_round_psnr_has_integer_ticks_and_flat_line(captured: list, tmp_path: Path):
    recs = [
        {"round": 3, "client": c, "attack": "ig", "psnr": 20.0 + c, "flat_psnr": 15.5}
        for c in range(3)
    ]
    plots.plot_leakage_per_round(recs, tmp_path / "p.png", metric="psnr")
    ax = captured[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["3"]
    labels = [line.get_label() for line in ax.get_lines()]
    assert "flat image (no leakage)" in labels
    flat = next(line for line in ax.get_lines() if line.get_label().startswith("flat"))
    assert list(flat.get_ydata()) == [15.5]


def test_ssim_plot_has_no_flat_line(captured: list, tmp_path: Path):
    recs = [{"round": r, "client": 0, "ssim": 0.5, "flat_psnr": 15.0} for r in (1, 2)]
    plots.plot_leakage_per_round(recs, tmp_path / "s.png", metric="ssim")
    ax = captured[0].axes[0]
    assert not any(line.get_label().startswith("flat") for line in ax.get_lines())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2"]
