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


def _audit_folder(tmp_path: Path, audited: int) -> Path:
    from fedleak.report import append_jsonl, write_json

    run = tmp_path / "audit"
    write_json(run / "config.json", {
        "command": "audit",
        "audit_config": {"federation": {"rounds": 3, "clients": [{"images": 1}] * 2},
                         "audit": {"start": 1, "every": 1, "clients": "all"}},
    })
    for r in range(1, 4):
        append_jsonl(run / "rounds.jsonl", {"round": r, "accuracy": 0.5})
    for i in range(audited):
        append_jsonl(run / "leakage.jsonl", {"round": 1 + i // 2, "client": i % 2, "psnr": 20.0,
                                             "ssim": 0.5, "flat_psnr": 15.0, "attack": "ig"})
    return run


def test_report_says_when_an_audit_is_partial(tmp_path: Path) -> None:
    from fedleak.report import write_report

    html = write_report(_audit_folder(tmp_path, 2)).read_text()
    assert "2 of 6 planned: PARTIAL" in html
    full = write_report(_audit_folder(tmp_path / "full", 6)).read_text()
    assert "6 of 6 planned" in full and "PARTIAL" not in full
