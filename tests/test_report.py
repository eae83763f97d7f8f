"""Plots and the offline HTML report read a run folder and never reach for the network."""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import matplotlib
import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from fedleak.errors import ConfigError, DataError
from fedleak.report import (
    append_jsonl,
    plot_accuracy,
    plot_leakage_per_round,
    plot_leakage_vs,
    plot_privacy_utility,
    read_jsonl,
    save_grid,
    write_json,
    write_report,
)

NETWORK_REF = re.compile(
    r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?\s*(?:https?:)?//""", re.IGNORECASE
)


def _png(path: Path) -> np.ndarray:
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50 and img.shape[2] in (3, 4)
    assert img[..., :3].std() > 0.01  # something was drawn
    return img


def _leakage_records() -> list[dict]:
    recs = []
    g = torch.Generator().manual_seed(0)
    for rnd in (1, 3, 5):
        for client, n, bs in ((0, 1, 1), (1, 4, 2), (2, 8, 8)):
            ssim = float(0.8 / n / rnd + 0.05 * torch.rand(1, generator=g))
            recs.append({
                "round": rnd, "client": client, "num_images": n, "batch_size": bs,
                "local_steps": 1 if client == 0 else 5, "attack": "dlg", "threat": "C",
                "psnr": 10 + 20 * ssim, "ssim": ssim, "mse": 10 ** (-(1 + 2 * ssim)),
                "flat_psnr": 11.5, "rdlv": ssim - 0.2 if client != 2 else None,
                "label_accuracy": None, "attack_loss": 1e-3 / rnd, "seconds": 2.5,
                "grid": f"grids/r{rnd:03d}_c{client}.png", "filters": "gaussian",
                "sigma0": [0.0, 10.0, 30.0][client], "extra_key": [1, 2],
            })
    recs[-1]["ssim"] = float("nan")  # skipped, not plotted as 0
    return recs


def _sweep_cells() -> list[dict]:
    cells = []
    for seed in (0, 1):
        cells.append({"defense": "none", "params": {}, "seed": seed, "accuracy": 0.96,
                      "f1": 0.95, "psnr": 28.0, "ssim": 0.8, "mse": 0.002,
                      "semantic_accuracy": 0.9})
        for s0 in (10, 25, 50):
            cells.append({"defense": "gaussian", "params": {"sigma0": s0, "clip": 1.0},
                          "seed": seed, "accuracy": 0.96 - s0 / 500, "f1": 0.9,
                          "psnr": 28 - s0 / 3, "ssim": 0.8 - s0 / 70, "mse": 0.002 * s0,
                          "semantic_accuracy": None, "epsilon": 8.0 / s0})
        for frac in (0.1, 0.5):
            cells.append({"defense": "percentile", "params": {"fraction": frac},
                          "seed": seed, "accuracy": 0.9 + frac / 10, "f1": 0.88,
                          "psnr": 15 + 10 * frac, "ssim": 0.3 + frac, "mse": 0.01 / frac,
                          "semantic_accuracy": 0.2 + frac})
    return cells


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    write_json(run / "config.json", {
        "command": "audit", "fedleak_version": "0.1.0", "data": "lfw-faces",
        "note": "<script>alert(1)</script>", "nested": {"defense": "a & b"},
    })
    for r in range(1, 6):
        append_jsonl(run / "rounds.jsonl", {
            "round": r, "accuracy": None if r == 2 else 0.5 + r / 20,
            "clients": [0, 1, 2], "withheld": [1] if r == 3 else [],
        })
    torch.manual_seed(0)
    for rec in _leakage_records():
        img = torch.rand(2, 3, 8, 8)
        save_grid(run / rec["grid"], [img, img.flip(0)], row_titles=["original", "rec."])
        append_jsonl(run / "leakage.jsonl", rec)
    append_jsonl(run / "selfcheck.jsonl", {"round": 3, "client": 1, "rdlv": 0.4, "ssim": 0.5,
                                           "threshold_rdlv": 0.1, "threshold_ssim": 0.3,
                                           "withheld": True})
    append_jsonl(run / "selfcheck.jsonl", {"round": 3, "client": 2, "rdlv": -0.1, "ssim": 0.1,
                                           "threshold_rdlv": 0.1, "threshold_ssim": 0.3,
                                           "withheld": False})
    for cell in _sweep_cells():
        append_jsonl(run / "sweep.jsonl", cell)
    with (run / "leakage.jsonl").open("a") as f:
        f.write('{"round": 7, "client": 0, "ps')  # a crash mid-write
    return run


def test_plots_write_readable_pngs(tmp_path: Path) -> None:
    backend = matplotlib.get_backend()
    recs = _leakage_records()
    for metric in ("ssim", "psnr", "rdlv"):
        _png(plot_leakage_per_round(recs, tmp_path / f"round_{metric}.png", metric=metric))
    for x in ("sigma0", "batch_size", "num_images", "local_steps"):
        _png(plot_leakage_vs(recs, tmp_path / f"vs_{x}.png", x=x, metric="ssim"))
    acc = {"0.0": 0.96, 10.0: 0.95, 30: 0.9}
    path = plot_leakage_vs(recs, tmp_path / "nested" / "noise.png", x="sigma0", accuracy=acc)
    assert path == tmp_path / "nested" / "noise.png"
    _png(path)
    # values over more than 2 decades: log (symlog with 0) x axis
    wide = [{"sigma0": s, "rdlv": 0.5 / (1 + s)} for s in (0, 0.01, 1, 100)]
    _png(plot_leakage_vs(wide, tmp_path / "wide.png", x="sigma0"))
    _png(plot_accuracy([{"round": r, "accuracy": a} for r, a in ((1, 0.5), (2, None), (3, 0.7))],
                       tmp_path / "acc.png"))
    assert matplotlib.get_backend() == backend


def test_privacy_utility_two_defenses_and_baseline(tmp_path: Path) -> None:
    cells = _sweep_cells()
    for leakage in ("psnr", "ssim", "mse", "semantic_accuracy"):
        _png(plot_privacy_utility(cells, tmp_path / f"pu_{leakage}.png", leakage=leakage))
    _png(plot_privacy_utility(cells, tmp_path / "pu_f1.png", utility="f1"))


def test_plots_refuse_empty_or_useless_input(tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    with pytest.raises(DataError, match="at least one leakage record"):
        plot_leakage_per_round([], out)
    with pytest.raises(DataError, match="no finite 'rdlv'"):
        plot_leakage_per_round([{"round": 1, "client": 0, "rdlv": None}], out, metric="rdlv")
    with pytest.raises(DataError, match="'local_steps'"):
        plot_leakage_vs([{"rdlv": 0.3}], out, x="local_steps")
    with pytest.raises(DataError, match="accuracy"):
        plot_accuracy([{"round": 1, "accuracy": float("nan")}], out)
    with pytest.raises(DataError, match="no cell"):
        plot_privacy_utility([{"defense": "none", "psnr": None, "accuracy": 0.9}], out)
    with pytest.raises(DataError, match="at least one sweep cell"):
        plot_privacy_utility([], out)
    with pytest.raises(ConfigError, match="`metric` of plot_leakage_per_round must be one of"):
        plot_leakage_per_round(_leakage_records(), out, metric="lpips")
    with pytest.raises(ConfigError, match="`x` of plot_leakage_vs"):
        plot_leakage_vs(_leakage_records(), out, x="rounds")
    with pytest.raises(ConfigError, match=r"\.png"):
        plot_accuracy([{"round": 1, "accuracy": 0.5}], tmp_path / "x.jpg")
    with pytest.raises(ConfigError, match="list of"):
        plot_accuracy({"round": 1, "accuracy": 0.5}, out)  # type: ignore[arg-type]
    assert not out.exists()


def test_report_is_complete_self_contained_and_escaped(run_dir: Path) -> None:
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    page = path.read_text(encoding="utf-8")
    n_leak = len(read_jsonl(run_dir / "leakage.jsonl"))
    assert n_leak == 9  # the truncated line was ignored

    # config shown, and its strings escaped
    assert "lfw-faces" in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page.lower() and "a &amp; b" in page
    # a table row per record
    leak_table = re.search(r'<table id="leakage-table">(.*?)</table>', page, re.S).group(1)
    assert leak_table.count("<tr") == n_leak + 1  # + header
    assert 'title="Relative data leakage value' in leak_table
    assert 'title="Flat PSNR' in leak_table
    assert leak_table.count('class="withheld"') == 1  # round 3, client 1
    sweep_table = re.search(r'<table id="sweep-table">(.*?)</table>', page, re.S).group(1)
    assert sweep_table.count("<tr") == len(_sweep_cells()) + 1
    assert "sigma0=25" in sweep_table and ">epsilon<" in sweep_table
    sc_table = re.search(r'<table id="selfcheck-table">(.*?)</table>', page, re.S).group(1)
    assert sc_table.count("<tr") == 3 and sc_table.count('class="withheld"') == 1
    # images embedded: accuracy + 3 per-round + 3 knobs + sigma0 + 4 privacy-utility + 9 grids
    uris = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == 1 + 3 + 3 + 1 + 4 + n_leak
    assert all(base64.b64decode(u).startswith(b"\x89PNG") for u in uris)
    assert "round 3, client 1: PSNR" in page and " dB, SSIM " in page
    # nothing loaded from anywhere: no network references, no external files, no scripts
    assert not NETWORK_REF.search(page)
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page, re.IGNORECASE)
    assert refs and all(r.startswith(("data:image/png;base64,", "#")) for r in refs)
    assert "Content-Security-Policy" in page and "@import" not in page


def test_report_sections_follow_the_files(tmp_path: Path) -> None:
    run = tmp_path / "plain"
    append_jsonl(run / "rounds.jsonl", {"round": 1, "accuracy": 0.5})
    append_jsonl(run / "leakage.jsonl", {"round": 1, "client": "c<1>", "psnr": 12.3456,
                                         "ssim": 0.123456, "grid": "../../etc/passwd"})
    out = write_report(run, out=tmp_path / "elsewhere" / "r.html")
    page = out.read_text()
    assert out.parent.name == "elsewhere" and not (run / "report.html").exists()
    assert "no config.json" in page and "c&lt;1&gt;" in page and "c<1>" not in page
    assert "12.35" in page and "0.123" in page and "outside the run folder" in page
    for absent in ('id="sweep"', 'id="selfcheck"', "vs batch_size"):
        assert absent not in page


def test_report_refuses_missing_or_empty_runs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="existing run folder"):
        write_report(tmp_path / "nope")
    write_json(tmp_path / "empty" / "config.json", {"command": "audit"})
    with pytest.raises(DataError, match="must hold records"):
        write_report(tmp_path / "empty")


# ------------------------------------------------------------------------- in a real browser

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def _browse(binary: str, args: list[str], profile: Path) -> str:
    """Run headless Chromium in its own process group; kill the whole group after 60 s."""
    proc = subprocess.Popen(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("headless chromium did not finish within 60 s")
    assert proc.returncode == 0, err[-2000:]
    return out


@pytest.mark.slow
def test_report_renders_offline_in_chromium(run_dir: Path, tmp_path: Path) -> None:
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium binary: install Debian's `chromium` package "
                    "(apt-get install -y chromium)")
    report = write_report(run_dir).resolve()
    url = report.as_uri()
    dom = _browse(binary, ["--dump-dom", url], tmp_path / "profile-dom")
    imgs = re.findall(r"<img\b[^>]*>", dom)
    assert len(imgs) >= 10
    assert all('src="data:image/png;base64,' in i for i in imgs)
    assert 'id="leakage-table"' in dom
    shot = tmp_path / "shot.png"
    _browse(binary, [f"--screenshot={shot}", "--window-size=1200,2000", url],
            tmp_path / "profile-shot")
    pixels = mpimg.imread(shot)
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels[..., :3].var() > 0
    if os.environ.get("FEDLEAK_KEEP_SHOT"):  # for eyeballing: copy the screenshot out
        shutil.copy(shot, os.environ["FEDLEAK_KEEP_SHOT"])
