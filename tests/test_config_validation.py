"""Audit configs are validated whole at load time: types, ranges, attack options, knowledge."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedleak.audit import load_config
from fedleak.cli.jobs import AttackJob
from fedleak.errors import ConfigError, InsufficientKnowledgeError
from fedleak.fl import local_update

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "audit-small.yaml"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("federation.train.lr=fast", "`federation.train.lr` must be a number"),
        ("federation.train.lr=-1", "`lr` must be > 0"),
        ("federation.train.speed=3", "unknown key `federation.train.speed`"),
        ("federation.train.optimizer=rmsprop", "must be 'sgd' or 'adam'"),
        ('audit.options={"iterations": 0}', "`iterations` of attack"),
        ('audit.options={"nope": 1}', "has no option 'nope'"),
        ('federation.clients=[{"images": 2, "batch_size": 5}]', "between 1 and the client's 2"),
    ],
)
def test_bad_values_stop_at_load_time(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(EXAMPLE, [override, "audit.clients=all"])


def test_attack_needs_checked_against_threat_level() -> None:
    with pytest.raises(InsufficientKnowledgeError, match="level B"):
        load_config(EXAMPLE, ["audit.threat=B"])


def test_example_configs_still_load() -> None:
    for path in sorted(EXAMPLE.parent.glob("audit-*.yaml")):
        load_config(path, ['device="cpu"'])  # the realistic recipe asks for a GPU


def test_cli_batch_larger_than_the_client_is_refused() -> None:
    job = AttackJob(protocol="fedavg", num_images=4, batch_size=50)
    with pytest.raises(ConfigError, match="between 1 and `--num-images` \\(4\\)"):
        job.training()


def test_recorded_batch_size_is_what_ran() -> None:
    import torch

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    update = local_update(
        model, torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 0]), protocol="fedavg",
        batch_size=50, local_steps=1, lr=0.1,
    )
    assert update.training.batch_size == 3 and update.training.batch_sizes == (3,)


def test_sweep_takes_set_overrides(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedleak.cli.app import app

    config = EXAMPLE.parent / "sweep-default.yaml"
    r = CliRunner().invoke(
        app, ["--quiet", "sweep", str(config), "--set", "fl.rounds=0", "--out", str(tmp_path)]
    )
    assert r.exit_code == 2 and "rounds" in r.output, r.output
    assert not (tmp_path / "config.json").exists()
