"""The fit check's verdict and objectives reach every place a result is reported.

Where the truth is known (the CLI's simulated client, the audit's clients), it is passed to
the front door for the fit check only. Until every attack implements ``objective_at``, the
check is replaced here by a hand-made one that also records whether the truth was given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import fedleak.api
from fedleak.attacks.fit import FitTerms, verdict
from fedleak.audit import load_config, run_audit
from fedleak.cli import app
from fedleak.report import read_jsonl, write_json, write_report

runner = CliRunner()
ATTACK = FitTerms(objective=0.5, residual=0.2)
TRUTH = FitTerms(objective=0.01, residual=0.001)


@pytest.fixture()
def underfit(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every attack reports attack-underfit when given the truth (and unchecked without)."""
    truths: list[Any] = []

    def fake(atk, inputs, rec, truth=None):  # noqa: ANN001, ANN202 - fit_check's signature
        truths.append(truth)
        return verdict(ATTACK, None if truth is None else TRUTH)

    monkeypatch.setattr(fedleak.api, "fit_check", fake)
    return truths


def _cli_attack(out: Path) -> Any:
    return runner.invoke(
        app,
        ["--quiet", "attack", "--data", "digits", "--size", "16", "--model", "lenet",
         "--attack", "dlg", "--iterations", "10", "--restarts", "1", "--out", str(out)],
    )


def test_cli_table_and_metrics_json_show_the_verdict(tmp_path: Path, underfit) -> None:
    r = _cli_attack(tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert "attack-underfit" in r.stdout and "0.01" in r.stdout and "0.5" in r.stdout
    assert "may still leak" in r.stdout  # the note under the table
    fit = json.loads((tmp_path / "run" / "metrics.json").read_text())["fit"]
    assert fit["verdict"] == "attack-underfit"
    assert fit["attack_objective"] == 0.5 and fit["truth_objective"] == 0.01
    images, labels = underfit[-1]  # the simulated client's truth reached the fit check
    assert images.shape[0] == labels.shape[0] == 1


def test_cli_shows_the_real_verdict_of_a_simulated_run(tmp_path: Path) -> None:
    r = _cli_attack(tmp_path / "run")
    assert r.exit_code == 0, r.output
    fit = json.loads((tmp_path / "run" / "metrics.json").read_text())["fit"]
    # a simulation knows the truth: the verdict is a real one, never "unchecked"
    assert fit["verdict"] in ("fits", "attack-underfit", "approximate-replay")
    assert fit["verdict"] in r.stdout and fit["truth_objective"] is not None


def test_audit_records_and_html_report_show_the_verdict(tmp_path: Path, underfit) -> None:
    cfg = load_config(None, [
        "data.size=16", 'model.options={"widths": [4, 8], "pool_after": [0]}',
        "federation.rounds=1", 'federation.clients=[{"images": 2, "batch_size": 2}]',
        'federation.train={"protocol": "fedavg", "lr": 0.05, "local_epochs": 1}',
        "audit.clients=[0]", 'audit.options={"iterations": 3}',
    ])
    out = tmp_path / "audit"
    run_audit(cfg, out)
    rec = read_jsonl(out / "leakage.jsonl")[0]
    assert rec["fit"] == "attack-underfit"
    assert rec["fit_attack_objective"] == 0.5 and rec["fit_truth_objective"] == 0.01
    assert "stopped short" in rec["fit_note"]
    assert underfit and all(t is not None for t in underfit)
    header = (out / "leakage.csv").read_text().splitlines()[0].split(",")
    assert {"fit", "fit_attack_objective", "fit_truth_objective"} <= set(header)
    page = write_report(out).read_text()
    assert '<td class="fit fit-bad" title="the truth scores' in page
    assert ">attack-underfit</td>" in page
    assert "<b>fit</b>: whether the attack fitted the update" in page
    assert "fit: attack-underfit" in page  # the grid's caption


def test_html_sweep_rows_show_each_attacks_verdict(tmp_path: Path) -> None:
    row = {"id": "c0", "defense": "none", "seed": 0, "psnr": 20.0, "accuracy": 0.5,
           "fit": "fits", "fit_note": "the attack reached the objective of the true images",
           "fit_attack_objective": 0.01, "fit_truth_objective": 0.01,
           "dlg_fit": "approximate-replay", "dlg_fit_note": "the true images leave residual 0.3"}
    (tmp_path / "sweep.jsonl").write_text(json.dumps(row) + "\n")
    write_json(tmp_path / "config.json", {"command": "sweep"})
    page = write_report(tmp_path).read_text()
    assert '<td class="fit fit-ok" title="the attack reached the objective' in page
    assert '<td class="fit fit-warn" title="the true images leave residual 0.3">' in page
