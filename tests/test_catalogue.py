"""`fedleak datasets` / `fedleak attacks` answer from the catalogue, without importing PyTorch,
and the catalogue is exactly what the registries say."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fedleak import catalogue
from fedleak.cli.app import app

HEAVY = ("torch", "numpy", "scipy", "skimage")
# the fresh interpreters import this fedleak (the source tree under test), not another install
SRC = os.path.dirname(os.path.dirname(catalogue.__file__))
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}


def _run_cli(*args: str) -> tuple[int, str, str, list[str]]:
    """Run ``fedleak ARGS`` in a fresh interpreter: exit code, stdout, stderr, heavy modules."""
    code = (
        "import sys\n"
        "from fedleak.cli.app import main\n"
        f"sys.argv = ['fedleak', *{list(args)!r}]\n"
        "try:\n"
        "    main()\n"
        "    rc = 0\n"
        "except SystemExit as exc:\n"
        "    rc = exc.code or 0\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(f'@@ {rc} {\",\".join(heavy)}', file=sys.stderr)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**ENV, "COLUMNS": "200"},
    )
    *err, last = out.stderr.rstrip("\n").splitlines()
    rc, _, heavy = last.removeprefix("@@ ").partition(" ")
    return int(rc), out.stdout, "\n".join(err), [m for m in heavy.split(",") if m]


@pytest.mark.parametrize(
    "args",
    [
        ("datasets",),
        ("attacks",),
        ("attacks", "inverting-gradients"),
        ("datasets", "--help"),
        ("attacks", "--help"),
    ],
)
def test_listings_do_not_import_torch(args: tuple[str, ...]) -> None:
    rc, out, err, heavy = _run_cli(*args)
    assert rc == 0, err
    assert heavy == [], f"`fedleak {' '.join(args)}` imported {heavy}"
    assert out.strip()


def test_listings_show_the_registries_content() -> None:
    rc, out, _, _ = _run_cli("attacks", "inverting-gradients")
    entry = catalogue.attacks().get("inverting-gradients")
    assert rc == 0 and "threat level C or higher" in out and entry["summary"][:40] in out
    for option, default, _meaning in entry["options"]:
        assert option in out and default in out
    rc, out, _, _ = _run_cli("datasets")
    assert rc == 0 and all(d["name"] in out for d in catalogue.datasets())


def test_unknown_attack_is_one_line_without_torch() -> None:
    rc, out, err, heavy = _run_cli("attacks", "inverting-gradient")
    assert rc == 2 and heavy == [] and out == ""
    assert err.count("\n") == 0 and "unknown attack 'inverting-gradient'" in err
    assert "Did you mean 'inverting-gradients'?" in err


def test_catalogue_matches_the_registries() -> None:
    """Fresh process, so nothing a test registered leaks in; the message says how to fix it."""
    out = subprocess.run(
        [sys.executable, "-m", "fedleak.catalogue", "--check"],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert out.returncode == 0, (
        f"{out.stdout}{out.stderr}The checked-in catalogue differs from the registries: "
        f"run `{catalogue.REGENERATE}` and commit src/fedleak/_catalogue_data.py."
    )


def test_catalogue_options_are_every_attack_option() -> None:
    from fedleak.attacks import ATTACKS

    attacks = catalogue.attacks()
    assert attacks.names() == ATTACKS.names()
    for name in ATTACKS.names():
        assert [row[0] for row in attacks.get(name)["options"]] == ATTACKS.get(name).options()


def test_render_round_trips() -> None:
    data = {"X": [{"a": "word " * 40, "b": [1, 2]}], "Y": ["m"]}
    namespace: dict[str, object] = {}
    exec(catalogue.render(data), namespace)
    assert namespace["X"] == data["X"] and namespace["Y"] == data["Y"]
    assert max(len(line) for line in catalogue.render(data).splitlines()) <= 100


def test_cli_in_process_uses_the_catalogue() -> None:
    out = CliRunner().invoke(app, ["attacks"], env={"COLUMNS": "200"})
    assert out.exit_code == 0
    assert "Models: " + ", ".join(catalogue.models()) in out.output
