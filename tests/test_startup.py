"""The CLI answers at once: `fedleak --help` and early errors never import PyTorch."""

from __future__ import annotations

import subprocess
import sys

import fedleak


def _imports_torch(code: str) -> bool:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1] == "True"


def test_package_and_cli_import_without_torch() -> None:
    assert not _imports_torch("import fedleak")
    assert not _imports_torch("import fedleak.cli.app")


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from fedleak.cli.app import app\n"
        "try:\n"
        "    app(['--help'], standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass"
    )
    assert not _imports_torch(code)


def test_lazy_names_resolve() -> None:
    assert callable(fedleak.attack) and callable(fedleak.observe) and callable(fedleak.score)
    assert fedleak.fl.local_update is not None
    assert sorted(dir(fedleak)) == sorted(fedleak.__all__)
