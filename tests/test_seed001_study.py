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


# --- the study's statistics, curves and HTML (fedleak.report.study) --------------------------

def _records():
    """Two methods x 2 seeds, per-batch scores for the none and exact attackers."""
    out = []
    for d, acc, mse in (("none", 0.9, 0.01), ("latent-fixed", 0.7, 0.05)):
        for seed in (0, 1):
            r = {"id": f"{d}#{seed}", "defense": d, "params": {}, "seed": seed,
                 "accuracy": acc + 0.01 * seed, "rounds_trained": 2 + seed,
                 "reached_target": seed == 0, "target_accuracy": 0.85, "knowledge": "none"}
            for k in ("none", "exact"):
                base = mse if k == "none" else mse / 2
                r[f"{k}_mse_batches"] = [base, base + 0.01, base + 0.02]
                r[f"{k}_psnr_batches"] = [20.0, 21.0, 22.0]
                r[f"{k}_psnr"] = 21.0
                r[f"{k}_ssim_batches"] = [0.5, 0.6, 0.7]
                r[f"{k}_semantic_accuracy_batches"] = [1.0, 0.0, 1.0]
            out.append(r)
    return out


def test_interval_is_the_t_interval():
    from fedleak.report.study import interval

    m, half, n = interval([1.0, 2.0, 3.0, float("nan"), None])
    assert (m, n) == (2.0, 3)
    assert half == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-5)  # t(0.975, 2) x sd / sqrt(n)
    assert interval([5.0]) == (5.0, None, 1) and interval([]) == (None, None, 0)


def test_study_points_pool_seeds_and_batches_per_attacker():
    from fedleak.report.study import attackers, study_points

    recs = _records()
    assert attackers(recs) == ["none", "exact"]
    none = study_points(recs, "none")["none"][0]
    assert none["n"] == 6 and none["mse"] == pytest.approx(0.02)  # 2 seeds x 3 batches
    assert none["accuracy"] == pytest.approx(0.905) and none["accuracy_ci"] > 0
    assert none["rounds"] == pytest.approx(2.5) and none["reached"] == pytest.approx(0.5)
    assert study_points(recs, "exact")["none"][0]["mse"] == pytest.approx(0.015)


def test_plot_study_and_the_html_report_carry_the_curves(tmp_path):
    import json

    from fedleak.errors import DataError
    from fedleak.report import write_report
    from fedleak.report.study import plot_study, study_points

    pts = study_points(_records(), "none")
    png = plot_study(pts, tmp_path / "s.png", key="semantic_accuracy", knowledge="none")
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError):
        plot_study(pts, tmp_path / "s.png", key="f1")
    with pytest.raises(DataError):
        plot_study({"none": [{"accuracy": None, "mse": None}]}, tmp_path / "e.png")
    run = tmp_path / "run"
    run.mkdir()
    (run / "sweep.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records()))
    page = write_report(run).read_text()
    assert "Study per attacker" in page and "Attacker: exact" in page
    assert "0.0200 ± " in page  # the undefended MSE of the none attacker, with its interval
    for know in ("none", "exact"):  # one embedded curve per measure and attacker
        for key in ("mse", "semantic_accuracy"):
            cap = f"<figcaption>{key} vs client accuracy, attacker {know}</figcaption>"
            assert page.count(cap) == 1


def test_stop_rule_leaves_the_global_model_trainable_for_dp_sgd(tmp_path):
    # the accuracy check puts the model in eval mode; Opacus refuses to train an eval model,
    # so before the fix every DP-SGD cell with a target failed in its second round
    cfg = {**TINY, "fl": {**TINY["fl"], "target_accuracy": 1.0},
           "defenses": [{"name": "dp-sgd", "grid": {"noise_multiplier": [0.001]},
                         "train": {"optimizer": "sgd", "lr": 0.05}}]}
    summary = run_sweep(cfg, tmp_path, workers=1, log=lambda _m: None)
    assert summary["failed"] == []
    r = read_jsonl(tmp_path / "sweep.jsonl")[0]
    assert r["rounds_trained"] == 3 and len(r["accuracy_curve"]) == 3
