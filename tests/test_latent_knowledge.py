"""What the attacker knows of a latent-noise client (issue 12): none / distribution / exact /
adaptive attackers, learned noise that moves, and the noise-to-latent ratio."""

from __future__ import annotations

import pytest
import torch

import fedleak
from fedleak.attacks.simulate import UpdateSimulator
from fedleak.defenses import make_training_defense
from fedleak.defenses.knowledge import (
    attack_for,
    attacker_model,
    client_noise,
    noise_latent_ratio,
    noise_report,
)
from fedleak.errors import ConfigError
from fedleak.fl import ThreatModel
from fedleak.models import build_model
from fedleak.sweep import load_sweep_config

SHAPE = (1, 16, 16)
IG = {"iterations": 40, "fedavg": "pseudo-gradient", "tv": 0.01}


def _setup(mean: float = 1.0, std: float = 0.1):
    torch.manual_seed(0)
    base = build_model("latent-net", input_shape=SHAPE, num_classes=4, width=2, pool=2)
    defense = make_training_defense("latent-perturbation", noise="fixed", mean=mean, std=std)
    model = defense.prepare_model(base)
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(4, *SHAPE, generator=g), torch.tensor([0, 1, 2, 3])
    u = defense(model, x, y, protocol="fedavg", local_epochs=2, batch_size=4, lr=1e-4,
                optimizer="sgd", seed=0, client_id="0", round=1)
    return defense, model, x, y, u


def _attack(knowledge, defense, model, u, y, **extra):
    name, options = attack_for(knowledge, "inverting-gradients", {**IG, **extra})
    view = attacker_model(model, knowledge, client_noise(defense, model, "0"))
    return fedleak.attack(name, view, u, threat=ThreatModel("C", labels=y), num_images=4, seed=0,
                          **options)


def test_none_attacker_replays_without_the_clients_noise():
    defense, model, x, _, u = _setup()
    view = attacker_model(model, "none")
    assert float(view.noise.mean.abs().max()) == 0 and float(view.noise.std.abs().max()) == 0
    assert float(model.noise.mean.min()) == 1.0  # the client's model is untouched
    sim = UpdateSimulator(view, u, mode="gradient")
    assert float(sim.fixed["noise.mean"].abs().max()) == 0.0
    view.eval()
    with torch.no_grad():  # the replayed function is encoder -> predictor, nothing added
        assert torch.equal(view(x), view.predictor(view.encoder(x)))
        assert not torch.allclose(model.eval()(x), view(x))
    assert attack_for("none", "inverting-gradients", IG) == ("inverting-gradients", IG)


def test_exact_attacker_reproduces_the_previous_behaviour():
    defense, model, x, y, u = _setup()
    # before the knowledge option, the attack replayed the probe's global model as it was
    before = fedleak.attack("inverting-gradients", model, u, threat=ThreatModel("C", labels=y),
                            num_images=4, seed=0, **IG)
    exact = _attack("exact", defense, model, u, y)
    assert torch.equal(before.images, exact.images)
    assert before.restart_losses == exact.restart_losses


def test_distribution_attacker_samples_the_noise_and_restores_the_model():
    defense, model, x, y, u = _setup(std=0.0)
    exact = _attack("exact", defense, model, u, y)
    same = _attack("distribution", defense, model, u, y)  # sigma 0: every draw is the mean
    assert torch.allclose(same.images, exact.images, atol=1e-6)
    assert same.extras["latent"] == "sample"
    defense, model, x, y, u = _setup(std=0.5)
    exact = _attack("exact", defense, model, u, y)
    drawn = _attack("distribution", defense, model, u, y)
    assert not torch.allclose(drawn.images, exact.images, atol=1e-4)
    assert float(model.noise.mean.min()) == 1.0 and float(model.noise.std.min()) == 0.5


def test_adaptive_attacker_learns_the_unknown_shift():
    defense, model, x, y, u = _setup(mean=1.0)
    none = _attack("none", defense, model, u, y)
    adaptive = _attack("adaptive", defense, model, u, y)
    # the shift moves towards the client's mean and explains the update much better
    assert adaptive.extras["latent_shift_mean"] > 0.1
    assert adaptive.restart_losses[0] < 0.5 * none.restart_losses[0]
    assert adaptive.extras["latent_pick"] == "shift"
    with pytest.raises(ConfigError, match="restarts"):
        fedleak.attack("inverting-gradients-latent", model, u, num_images=4, restarts=2,
                       threat=ThreatModel("C", labels=y))
    with pytest.raises(ConfigError, match="Inverting Gradients"):
        attack_for("adaptive", "dlg", {})


def test_adaptive_attacker_falls_back_to_no_shift_on_a_noise_free_client():
    defense, model, x, y, u = _setup(mean=0.0, std=0.0)  # the client adds no noise
    none = _attack("none", defense, model, u, y)
    adaptive = _attack("adaptive", defense, model, u, y)
    shift_only = _attack("adaptive", defense, model, u, y, fallback=False)
    # chasing a shift that is not there ends above plain IG; the fallback keeps plain IG's run
    assert shift_only.restart_losses[0] > none.restart_losses[0]
    assert adaptive.extras["latent_pick"] == "plain"
    assert adaptive.restart_losses == none.restart_losses
    assert torch.equal(adaptive.images, none.images)
    assert adaptive.extras["latent_shift_loss"] == shift_only.restart_losses[0]
    with pytest.raises(ConfigError, match="fallback"):
        _attack("adaptive", defense, model, u, y, fallback="yes")


def test_sweep_config_knowledge_key_is_checked():
    cfg = load_sweep_config({"attack": {"knowledge": ["none", "exact", "adaptive"]}})
    assert cfg.attack.knowledge == ["none", "exact", "adaptive"]
    assert load_sweep_config({}).attack.knowledge == ["none"]
    with pytest.raises(ConfigError, match="knowledge"):
        load_sweep_config({"attack": {"knowledge": ["psychic"]}})
    with pytest.raises(ConfigError, match="Inverting Gradients"):
        load_sweep_config({"attack": {"name": "dlg", "knowledge": ["distribution"]}})
    with pytest.raises(ConfigError, match="batches"):
        load_sweep_config({"attack": {"batches": 40}})


def test_learnable_noise_moves_and_stays_private():
    torch.manual_seed(0)
    base = build_model("latent-net", input_shape=SHAPE, num_classes=4, width=2, pool=2)
    g = torch.Generator().manual_seed(4)
    x, y = torch.rand(32, *SHAPE, generator=g), torch.randint(0, 4, (32,), generator=g)
    slow = make_training_defense("latent-perturbation", noise="learnable", mean=1.0,
                                 pretrain_epochs=3, pretrain_lr=1e-4)
    fast = make_training_defense("latent-perturbation", noise="learnable", mean=1.0,
                                 pretrain_epochs=3, pretrain_lr=1e-4, pretrain_noise_lr=1e-2)
    for d in (slow, fast):
        d.pretrain(d.prepare_model(base), x, y, client_id="0", seed=0)
    s, f = slow.pretrain_log["0"], fast.pretrain_log["0"]
    assert len(f["loss"]) == f["epochs"] == 3 and len(f["mean_shift"]) == 3
    assert s["mean_shift_max"] < 0.01 < f["mean_shift_max"]  # 1e-4: it cannot move
    assert f["std_shift_max"] > 0.01
    model = fast.prepare_model(base)
    assert float(model.noise.mean.min()) == 1.0  # the shared model keeps the public init
    mu, _ = client_noise(fast, model, "0")
    assert float((mu - 1.0).abs().max()) == pytest.approx(f["mean_shift_max"])
    # a tolerance stops the pre-training once the noise stops moving, but never while the
    # model is still at chance (random labels: it runs every epoch and says so)
    stop = make_training_defense("latent-perturbation", noise="learnable", pretrain_epochs=5,
                                 pretrain_noise_lr=1e-2, pretrain_tol=1.0)
    stop.pretrain(stop.prepare_model(base), x, y, client_id="0", seed=0)
    log = stop.pretrain_log["0"]
    assert log["epochs"] == 5 and not log["converged"] and not log["trained"]
    assert len(log["accuracy"]) == 5
    easy = torch.arange(4).repeat(8)  # labels the images show: brightness = class
    bright = (easy.float()[:, None, None, None] + 0.2 * torch.rand(32, *SHAPE, generator=g)) / 4
    stop = make_training_defense("latent-perturbation", noise="learnable", pretrain_epochs=40,
                                 pretrain_lr=1e-2, pretrain_noise_lr=1e-2, pretrain_tol=1.0)
    stop.pretrain(stop.prepare_model(base), bright, easy, client_id="0", seed=0)
    log = stop.pretrain_log["0"]
    assert log["converged"] and log["trained"] and log["epochs"] < 40
    assert log["accuracy"][-1] >= 0.5 > log["accuracy"][0]
    rep = noise_report(model, x[:8], (mu, model.noise.std.detach()), fast)
    assert rep["noise_pretrain"]["epochs"] == 3 and rep["noise_latent_ratio_plain"] > 0


def test_default_init_makes_the_noise_large_next_to_the_latent():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(8, 1, 28, 28, generator=g)
    ratios = {}
    for init in ("he", "default"):
        torch.manual_seed(0)
        m = build_model("latent-net", input_shape=(1, 28, 28), num_classes=10, width=8, pool=3,
                        init=init, noise_std=0.1)
        ratios[init] = noise_latent_ratio(m, x)
    assert ratios["default"] > 3 * ratios["he"]
    with pytest.raises(ConfigError, match="init"):
        build_model("latent-net", input_shape=SHAPE, num_classes=4, init="xavier")


def test_plain_noise_scale_gives_the_plain_encoders_ratio():
    from fedleak.fl import ClientData

    torch.manual_seed(0)
    base = build_model("latent-net", input_shape=(1, 28, 28), num_classes=4, width=2, pool=3)
    g = torch.Generator().manual_seed(6)
    x, y = torch.rand(16, 1, 28, 28, generator=g), torch.randint(0, 4, (16,), generator=g)
    d = make_training_defense("latent-perturbation", mean=1.0, std=0.1, noise_scale="plain")
    model = d.prepare_model(base)
    d.setup(model, [ClientData(x, y)])
    assert d.scale_factor > 2  # He init: a larger latent than PyTorch's default init
    assert float(model.noise.mean.mean()) == pytest.approx(d.scale_factor)
    rep = noise_report(model, x, client_noise(d, model, "0"), d)
    assert rep["noise_latent_ratio"] == pytest.approx(rep["noise_latent_ratio_plain"], rel=1e-4)
    assert rep["noise_std"] == pytest.approx(0.1 * d.scale_factor, rel=1e-5)


def _sweep_knowledge(tmp_path, knowledge, monkeypatch):
    """One tiny sweep cell (a noise-free and a fixed-noise client, 2 batches) and the number of
    plain Inverting Gradients runs it made."""
    from fedleak.attacks.inverting import InvertingGradients
    from fedleak.report import read_jsonl
    from fedleak.sweep import run_sweep

    calls = []
    real = InvertingGradients.reconstruct
    monkeypatch.setattr(InvertingGradients, "reconstruct",
                        lambda self, inputs: calls.append(1) or real(self, inputs))
    cfg = {
        "data": {"name": "digits", "size": 8, "clients": 2, "images_per_client": 12,
                 "test_images": 40},
        "model": {"name": "latent-net", "options": {"width": 2, "pool": 2}},
        "fl": {"rounds": 1, "local_epochs": 1, "batch_size": 6},
        "attack": {"options": {"iterations": 40, "fedavg": "pseudo-gradient"},
                   "num_images": 1, "batches": 2, "local_epochs": 2, "knowledge": knowledge},
        "semantic": {"enabled": False},
        "defenses": [{"name": "none"},
                     {"name": "latent-perturbation", "options": {"noise": "fixed", "mean": 1.0}}],
    }
    out = tmp_path / "-".join(knowledge)
    run_sweep(cfg, out, workers=1, log=lambda _m: None)
    return read_jsonl(out / "sweep.jsonl"), len(calls)


def test_sweep_reuses_the_none_run_as_the_adaptive_fallback(tmp_path, monkeypatch):
    alone, n_alone = _sweep_knowledge(tmp_path, ["adaptive"], monkeypatch)
    both, n_both = _sweep_knowledge(tmp_path, ["none", "adaptive"], monkeypatch)
    # alone: 2 cells x 2 batches, each with its fallback run; both: the 4 `none` runs, no more
    assert (n_alone, n_both) == (4, 4)
    for a, b in zip(alone, both, strict=True):
        assert b["adaptive_latent_pick"] == a["adaptive_latent_pick"]
        for key in ("psnr", "attack_loss", "mse"):
            assert b[f"adaptive_{key}_batches"] == a[f"adaptive_{key}_batches"], key
    # where plain IG wins, the pick is exactly the `none` attacker's reconstruction
    picks = [(r, b) for r in both for b, p in enumerate(r["adaptive_latent_pick"]) if p == "plain"]
    assert picks, "no batch exercised the plain pick"
    for r, b in picks:
        assert r["adaptive_psnr_batches"][b] == r["none_psnr_batches"][b]
    # a client without latent noise: the adaptive attacker knows the defense, so it runs plain
    # IG (no shift to look for), and alone it runs no more than the none attacker would
    clean = [r for r in alone + both if r["defense"] == "none"]
    assert len(clean) == 2
    for r in clean:
        assert r["adaptive_latent_pick"] == ["plain", "plain"]
        assert "none_latent_pick" not in r
    assert clean[0]["adaptive_psnr_batches"] == clean[1]["none_psnr_batches"]
