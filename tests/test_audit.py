"""Audits: config validation, streamed outputs, resume, and the client's own check."""

import json

import pytest
import torch

import fedleak
from fedleak.audit import load_config, run_audit
from fedleak.errors import ConfigError, DataError, InsufficientKnowledgeError
from fedleak.report import read_jsonl

SMALL = [
    "data.size=16",
    'model.options={"widths": [4, 8], "pool_after": [0]}',
    "federation.rounds=2",
    'federation.clients=[{"images": 1, "batch_size": 1}, {"images": 4, "batch_size": 2},'
    ' {"images": 6, "batch_size": 3}]',
    'federation.train={"protocol": "fedavg", "lr": 0.05, "local_epochs": 1, "bn_mode": "train"}',
    "audit.clients=[0, 1]",
    'audit.options={"iterations": 8}',
]


def test_config_files_and_errors(tmp_path):
    y = tmp_path / "a.yaml"
    y.write_text("seed: 3\nfederation:\n  rounds: 4\naudit:\n  every: 2\n  start: 2\n")
    cfg = load_config(y)
    assert (cfg.seed, cfg.federation.rounds, cfg.audit.every) == (3, 4, 2)
    t = tmp_path / "a.toml"
    t.write_text('seed = 5\n[data]\nname = "digits"\nsize = 8\n[[filters]]\nname = "gaussian"\n'
                 "options = { sigma0 = 2.0 }\n")
    cfg = load_config(t, ["federation.rounds=7"])
    assert cfg.data.name == "digits" and cfg.filters[0].options["sigma0"] == 2.0
    assert cfg.federation.rounds == 7
    with pytest.raises(ConfigError, match="unknown key `federation.roundz`"):
        load_config(None, ["federation.roundz=3"])
    with pytest.raises(ConfigError, match="must be an integer"):
        load_config(None, ['federation.rounds="many"'])
    with pytest.raises(ConfigError, match="level|threat"):
        load_config(None, ["audit.attacker_prior=true"])
    with pytest.raises(DataError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(DataError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_audit_streams_records_and_resumes_identically(tmp_path, monkeypatch):
    cfg = load_config(None, SMALL)
    full = tmp_path / "full"
    summary = run_audit(cfg, full)
    recs = read_jsonl(full / "leakage.jsonl")
    assert [(r["round"], r["client"]) for r in recs] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert all((full / r["grid"]).is_file() for r in recs)
    assert (full / "leakage.csv").read_text().count("\n") == 5
    assert summary["rounds"] == 2 and summary["audited_updates"] == 4
    assert all(r["rdlv"] is not None and r["label_accuracy"] is not None for r in recs)
    with pytest.raises(ConfigError, match="resume"):
        run_audit(cfg, full)

    # stop the same audit at its third attack, then resume it
    real_attack = fedleak.attack
    calls = {"n": 0}

    def stopping(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_attack(*a, **k)

    part = tmp_path / "part"
    monkeypatch.setattr(fedleak, "attack", stopping)
    with pytest.raises(KeyboardInterrupt):
        run_audit(cfg, part)
    monkeypatch.setattr(fedleak, "attack", real_attack)
    assert len(read_jsonl(part / "leakage.jsonl")) == 2
    with pytest.raises(ConfigError, match="differs"):
        run_audit(load_config(None, [*SMALL, "seed=9"]), part, resume=True)
    run_audit(cfg, part, resume=True)
    again = read_jsonl(part / "leakage.jsonl")
    assert [(r["round"], r["client"]) for r in again] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    for a, b in zip(recs, again, strict=True):
        assert a["psnr"] == pytest.approx(b["psnr"], abs=1e-4)
    acc_full = [r["accuracy"] for r in read_jsonl(full / "rounds.jsonl")]
    acc_part = [r["accuracy"] for r in read_jsonl(part / "rounds.jsonl")]
    assert acc_full == acc_part


def test_self_check_withholds_exactly_the_updates_above_threshold(tmp_path):
    cfg = load_config(
        None,
        [*SMALL, "audit.clients=[0]", "selfcheck.enabled=true", "selfcheck.rdlv_threshold=null",
         "selfcheck.ssim_threshold=0.03", 'selfcheck.options={"iterations": 8}'],
    )
    run_audit(cfg, tmp_path / "sc")
    checks = read_jsonl(tmp_path / "sc" / "selfcheck.jsonl")
    assert len(checks) == 2 * 3  # every client, every round
    for c in checks:
        assert c["withheld"] == (c["ssim"] > 0.03)
    assert any(c["withheld"] for c in checks) and not all(c["withheld"] for c in checks)
    rounds = read_jsonl(tmp_path / "sc" / "rounds.jsonl")
    for r in rounds:
        expected = sorted(c["client"] for c in checks if c["round"] == r["round"] and c["withheld"])
        assert sorted(r["withheld"]) == expected
    # a withheld update never reaches the server's audit
    audited = {(r["round"], r["client"]) for r in read_jsonl(tmp_path / "sc" / "leakage.jsonl")}
    withheld = {(c["round"], c["client"]) for c in checks if c["withheld"]}
    assert not audited & withheld
    assert json.loads((tmp_path / "sc" / "summary.json").read_text())["withheld"] == len(withheld)


DIFFUSION = [
    "task=diffusion",
    "data.name=digits",
    "data.size=8",
    "federation.rounds=2",
    'federation.clients=[{"images": 1}, {"images": 3}]',
    'federation.train={"protocol": "fedsgd", "lr": 0.05}',
    "audit.clients=[0]",
    "audit.every=2",
]


def test_diffusion_audit_scores_t_and_reuses_its_trained_prior(tmp_path):
    """Seed 002 as an audit: a UNet federation, test loss per round, gidm-plus with a prior."""
    cfg = load_config(None, DIFFUSION)
    assert (cfg.model.name, cfg.audit.attack) == ("unet", "diffusion-ig")
    with pytest.raises(ConfigError, match="threat"):
        load_config(None, [*DIFFUSION, "audit.attack=gidm-plus"])
    with pytest.raises(ConfigError, match="share_noise"):
        load_config(None, [*DIFFUSION, "audit.attack=gidm", "audit.threat=D"])
    with pytest.raises(ConfigError, match="self-check"):
        load_config(None, [*DIFFUSION, "selfcheck.enabled=true"])

    cfg = load_config(None, [
        *DIFFUSION, "audit.attack=gidm-plus", "audit.threat=D", "diffusion.prior_steps=20",
        'audit.options={"phase1_iterations": 10, "phase2_iterations": 60, "restarts": 1,'
        ' "search_iterations": 30}',
    ])
    out = tmp_path / "dif"
    summary = run_audit(cfg, out)
    rounds = read_jsonl(out / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [1, 2] and summary["task"] == "diffusion"
    assert all(r["accuracy"] is None and r["test_loss"] > 0 for r in rounds)
    (rec,) = read_jsonl(out / "leakage.jsonl")
    assert rec["t_accuracy"] == 1.0 and rec["label_accuracy"] is None
    assert (out / "prior_model.pt").is_file() and (out / rec["grid"]).is_file()
    # the trained prior is reused, not retrained, when the run goes on
    stamp = (out / "prior_model.pt").stat().st_mtime_ns
    run_audit(cfg, out, resume=True)
    assert (out / "prior_model.pt").stat().st_mtime_ns == stamp


GENERATIVE = [
    *SMALL[:2],
    "federation.rounds=1",
    'federation.clients=[{"images": 2, "batch_size": 2}]',
    'federation.train={"protocol": "fedsgd", "lr": 0.05, "bn_mode": "eval"}',
    "audit.attack=generative-prior",
    "diffusion.prior_steps=3",
    'audit.options={"phase1_iterations": 2, "iterations": 2, "restarts": 1, "ddim_steps": 2}',
]


def test_classification_audit_gives_generative_prior_a_prior_trained_once(tmp_path):
    """generative-prior in a classification audit: level D, its prior trained on the public
    split into the run folder (reused on resume), a user's prior checked before round 1."""
    with pytest.raises(InsufficientKnowledgeError, match="surrogate_data"):
        load_config(None, GENERATIVE)  # threat C: no public data for a prior
    with pytest.raises(ConfigError, match="prior_steps"):
        load_config(None, [*GENERATIVE, "audit.threat=D", "diffusion.prior_steps=0"])
    with pytest.raises(ConfigError, match="selfcheck.options.prior_model"):
        load_config(None, [*GENERATIVE, "audit.threat=D", "selfcheck.enabled=true",
                           "selfcheck.attack=generative-prior", "selfcheck.ssim_threshold=0.5"])
    cfg = load_config(None, [*GENERATIVE, "audit.threat=D"])
    out = tmp_path / "gen"
    run_audit(cfg, out)
    (rec,) = read_jsonl(out / "leakage.jsonl")
    assert rec["attack"] == "generative-prior" and rec["psnr"] is not None
    assert (out / "prior_model.pt").is_file() and (out / rec["grid"]).is_file()
    stamp = (out / "prior_model.pt").stat().st_mtime_ns
    run_audit(cfg, out, resume=True)
    assert (out / "prior_model.pt").stat().st_mtime_ns == stamp

    from fedleak.diffusion import UNetConfig, load_model, save_model, train_prior

    # a user's prior file given in the attack's options is used, not trained again
    save_model(load_model(out / "prior_model.pt"), tmp_path / "mine.pt")
    mine = load_config(None, [*GENERATIVE, "audit.threat=D"])
    mine.audit.options = {**mine.audit.options, "prior_model": str(tmp_path / "mine.pt")}
    run_audit(mine, tmp_path / "mine")
    assert read_jsonl(tmp_path / "mine" / "leakage.jsonl")
    assert not (tmp_path / "mine" / "prior_model.pt").exists()
    # a module there could not be recorded in config.json: one line, before anything runs
    mine.audit.options = {**mine.audit.options, "prior_model": load_model(tmp_path / "mine.pt")}
    with pytest.raises(ConfigError, match="must be JSON values"):
        run_audit(mine, tmp_path / "module")
    assert not (tmp_path / "module").exists()

    # a user's prior that cannot make the clients' images stops the audit before round 1
    rgb = train_prior(torch.rand(4, 3, 8, 8), config=UNetConfig(
        image_size=8, in_channels=3, channels=8, mults=(1, 2), groups=4, num_timesteps=16),
        steps=1, batch_size=4)
    save_model(rgb, tmp_path / "rgb.pt")
    bad = load_config(None, [*GENERATIVE, "audit.threat=D",
                             f'diffusion.prior_model="{tmp_path / "rgb.pt"}"'])
    with pytest.raises(ConfigError, match="makes 3x8x8 images"):
        run_audit(bad, tmp_path / "bad")
    assert not (tmp_path / "bad" / "rounds.jsonl").exists()
