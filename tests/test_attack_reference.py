"""`fedleak attacks` is the user's reference: every option of every attack has a meaning."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fedleak.attacks import ATTACKS, available_attacks
from fedleak.cli.app import app
from fedleak.cli.reference import option_rows


@pytest.mark.parametrize("name", available_attacks())
def test_every_option_is_explained(name: str) -> None:
    rows = option_rows(ATTACKS.get(name), ATTACKS)
    assert [r[0] for r in rows] == ATTACKS.get(name).options()
    vague = [r[0] for r in rows if r[2] in ("-", "") or r[2].lower().startswith("see above")]
    assert not vague, f"{name}: options without a meaning: {vague}"


def test_cli_lists_defaults_and_meanings() -> None:
    out = CliRunner().invoke(app, ["attacks", "dlg"], env={"COLUMNS": "160"})
    assert out.exit_code == 0, out.output
    assert "L-BFGS iterations per restart" in out.output and "1500" in out.output
    bad = CliRunner().invoke(app, ["attacks", "no-such-attack"])
    assert bad.exit_code == 2


def test_attack_help_does_not_advertise_missing_flags() -> None:
    out = CliRunner().invoke(app, ["attack", "--help"], env={"COLUMNS": "200"})
    assert "--models" not in out.output
