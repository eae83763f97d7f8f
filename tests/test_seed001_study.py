"""Seed 001 study (issue 12): the matched-utility stop rule and the study's statistics/plots."""

import pytest

from fedleak.errors import ConfigError
from fedleak.report import read_jsonl
from fedleak.sweep import load_sweep_config, run_sweep

TINY = {
    "data": {"name": "digits", "size": 8, "clients": 2, "images_per_client": 12,
             "test_images": 40},
    "model": {"name": "latent-net", "options": {"width": 2, "pool": 2}},
    "fl": {"rounds": 3, "local_epochs": 1, "batch_size": 6},
    "attack": {"options": {"iterations": 2}, "num_images": 1, "local_epochs": 1, "round": 4},
    "semantic": {"enabled": False},
    "defenses": [{"name": "none"}],
}


def _run(tmp_path, target):
    cfg = {**TINY, "fl": {**TINY["fl"], "target_accuracy": target}}
    summary = run_sweep(cfg, tmp_path, workers=1, log=lambda _m: None)
    assert summary["failed"] == []
    return read_jsonl(tmp_path / "sweep.jsonl")[0]


def test_stop_rule_stops_at_the_target_and_probes_the_trained_model(tmp_path):
    r = _run(tmp_path, 0.01)  # any model reaches 1 %: stop after the first round
    assert r["rounds_trained"] == 1 and r["reached_target"] is True
    assert r["probe_round"] == 2 and r["target_accuracy"] == 0.01
    assert len(r["accuracy_curve"]) == 1 and r["accuracy_curve"][0] >= 0.01


def test_stop_rule_caps_at_fl_rounds_and_says_so(tmp_path):
    r = _run(tmp_path, 1.0)  # unreachable in 3 rounds of 24 images
    assert r["rounds_trained"] == 3 and r["reached_target"] is False
    assert len(r["accuracy_curve"]) == 3 and r["probe_round"] == 4


def test_without_target_every_round_runs(tmp_path):
    summary = run_sweep(TINY, tmp_path, workers=1, log=lambda _m: None)
    assert summary["failed"] == []
    r = read_jsonl(tmp_path / "sweep.jsonl")[0]
    assert r["rounds_trained"] == 3 and "reached_target" not in r


@pytest.mark.parametrize("bad", [0, 1.5, -0.2])
def test_target_accuracy_out_of_range_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="fl.target_accuracy"):
        load_sweep_config({**TINY, "fl": {**TINY["fl"], "target_accuracy": bad}})
