"""Federated diffusion clients and the attacks on their updates (small, CPU-fast cases)."""

from __future__ import annotations

import pytest
import torch

import fedleak
from fedleak.attacks.diffusion import embedding_residuals, t_accuracy
from fedleak.diffusion import (
    NoiseSchedule,
    UNet,
    UNetConfig,
    ddim_sample,
    ddpm_sample,
    diffusion_loss,
    diffusion_update,
    load_model,
    parse_diffusion_loss,
    save_model,
    to_model_space,
    train_prior,
)
from fedleak.errors import ConfigError, DataError, InsufficientKnowledgeError
from fedleak.fl.threat import ThreatModel
from fedleak.metrics import flat_psnr, psnr

TINY = UNetConfig(image_size=8, channels=8, groups=4, num_timesteps=16)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(TINY)


def smooth_images(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    """Blurry random images in [0, 1] (what an image looks like, more or less)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size // 2, size // 2, generator=g)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear")


# ------------------------------------------------------------------------------------ UNet


def test_unet_shapes_and_size():
    m = UNet()
    assert m.input_shape == (1, 16, 16)
    out = m(torch.randn(3, 1, 16, 16), torch.tensor([0, 7, 15]))
    assert out.shape == (3, 1, 16, 16)
    assert 50_000 <= sum(p.numel() for p in m.parameters()) <= 100_000
    rgb = UNet(image_size=8, in_channels=3, channels=8, groups=4)
    assert rgb(torch.randn(2, 3, 8, 8), torch.tensor(3)).shape == (2, 3, 8, 8)
    with pytest.raises(ConfigError):
        UNetConfig(image_size=7, mults=(1, 2))


def test_unet_double_backward():
    m = tiny_unet()
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    loss = diffusion_loss(m, x, torch.tensor([2, 9]), torch.randn(2, 1, 8, 8), NoiseSchedule())
    grads = torch.autograd.grad(loss, list(m.parameters()), create_graph=True)
    second = torch.autograd.grad(sum(g.pow(2).sum() for g in grads), x)[0]
    assert second.shape == x.shape and torch.isfinite(second).all() and second.abs().sum() > 0


# ------------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", ["cosine", "linear"])
@pytest.mark.parametrize("steps", [16, 1000])
def test_schedule_monotone(name, steps):
    s = NoiseSchedule(name, steps)
    ab = s.alphas_cumprod
    assert ab.shape == (steps,)
    assert (ab[1:] < ab[:-1]).all() and 0 < ab[-1] < 0.05 and ab[0] > 0.98
    assert NoiseSchedule.from_spec(s.spec) == s


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_x0_recovered_from_prediction(prediction):
    s = NoiseSchedule()
    x0 = to_model_space(torch.rand(4, 1, 8, 8))
    eps = torch.randn_like(x0)
    t = torch.tensor([0, 5, 10, 14])
    x_t = s.q_sample(x0, t, eps)
    target = s.target(x0, t, eps, prediction)
    x0_hat, eps_hat = s.predict_x0_eps(x_t, t, target, prediction)
    assert torch.allclose(x0_hat, x0, atol=1e-4) and torch.allclose(eps_hat, eps, atol=1e-4)


def test_float_t_interpolates():
    s = NoiseSchedule()
    ab = s.alpha_bar(torch.tensor([3.0, 3.5, 4.0]))
    assert torch.allclose(ab[[0, 2]], s.alphas_cumprod[[3, 4]])
    assert ab[2] < ab[1] < ab[0]


# -------------------------------------------------------------------------------- samplers


def test_ddim_deterministic_and_differentiable():
    m, s = tiny_unet(), NoiseSchedule()
    z = torch.randn(2, 1, 8, 8, requires_grad=True)
    a = ddim_sample(m, z, s, steps=4)
    b = ddim_sample(m, z, s, steps=4)
    assert torch.equal(a, b) and a.shape == z.shape
    (g,) = torch.autograd.grad(a.sum(), z)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    full = ddpm_sample(m, (2, 1, 8, 8), s, generator=torch.Generator().manual_seed(0))
    assert full.shape == (2, 1, 8, 8) and full.min() >= 0 and full.max() <= 1


# ------------------------------------------------------------------------------- the client


def test_update_shares_or_keeps_noise_and_never_the_images():
    m, x = tiny_unet(), smooth_images(3)
    pub = diffusion_update(m, x, share_noise=True, seed=4)
    priv = diffusion_update(m, x, share_noise=False, seed=4)
    assert set(pub.shared) == {"epsilon", "t"}
    assert pub.shared["epsilon"].shape == x.shape and pub.shared["t"].shape == (3,)
    assert dict(priv.shared) == {}
    for name, g in pub.tensors.items():  # same seed -> same noise -> same gradient
        assert torch.equal(g, priv.tensors[name])
    assert set(pub.tensors) == {k for k, _ in m.named_parameters()}
    sent = [*pub.tensors.values(), *pub.buffers.values(), *pub.shared.values()]
    assert not any(v.shape == x.shape and torch.allclose(v, x) for v in sent)
    assert pub.training.task == "diffusion"
    assert parse_diffusion_loss(pub.training.loss) == ("v", NoiseSchedule("cosine", 16))
    given = diffusion_update(m, x, t=torch.tensor([1, 2, 3]), share_noise=True)
    assert given.shared["t"].tolist() == [1, 2, 3]
    avg = diffusion_update(m, x, protocol="fedavg", local_steps=2, lr=0.1, share_noise=True)
    assert avg.kind == "delta" and avg.shared["t"].shape == (2, 3)
    with pytest.raises(ConfigError):
        diffusion_update(m, x, t=torch.tensor([16, 0, 0]))


# ---------------------------------------------------------------------------------- priors


def test_prior_roundtrip_and_corrupt_file(tmp_path):
    m = train_prior(smooth_images(8), config=TINY, steps=2, batch_size=4)
    path = save_model(m, tmp_path / "prior.pt", info={"data": "synthetic"})
    payload = torch.load(path, weights_only=True)  # plain tensors + JSON only
    assert set(payload) == {"state_dict", "config"}
    back = load_model(path)
    assert back.config == m.config and back.diffusion_meta == m.diffusion_meta
    for (k, a), (_, b) in zip(m.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(DataError, match="not a fedleak diffusion model"):
        load_model(bad)
    with pytest.raises(DataError, match="no such model file"):
        load_model(tmp_path / "missing.pt")


# --------------------------------------------------------------------------------- attacks


def test_known_noise_attack_beats_flat_baseline():
    m, x = tiny_unet(1), smooth_images(1, seed=3)
    upd = diffusion_update(m, x, share_noise=True, seed=2)
    rec = fedleak.attack("diffusion-ig", m, upd, iterations=100, seed=0)
    assert rec.images.shape == x.shape and rec.labels is None
    assert float(psnr(rec.images, x)) > float(flat_psnr(x)) + 10


def test_diffusion_ig_refuses_private_noise_without_joint_noise():
    m, x = tiny_unet(), smooth_images(1)
    upd = diffusion_update(m, x, share_noise=False)
    with pytest.raises(InsufficientKnowledgeError, match="private"):
        fedleak.attack("diffusion-ig", m, upd, iterations=2)


def test_t_embedding_recovers_timesteps():
    m, x = tiny_unet(2), smooth_images(2)
    upd = diffusion_update(m, x, t=torch.tensor([3, 11]), share_noise=False)
    resid, rank = embedding_residuals(m, dict(upd.tensors), range(16), max_rank=2)
    assert rank == 2 and set(resid.argsort()[:2].tolist()) == {3, 11}
    assert resid[[3, 11]].max() < 1e-3 < resid.sort().values[2]


def test_t_enumeration_by_short_attacks_recovers_t():
    m, x = tiny_unet(3), smooth_images(1, seed=1)
    upd = diffusion_update(m, x, t=torch.tensor([9]), share_noise=False, seed=5)
    rec = fedleak.attack(
        "diffusion-ig", m, upd, joint_noise=True, t_search="enumerate",
        t_candidates=[1, 5, 9, 13], search_iterations=60, iterations=1, seed=0,
    )
    assert rec.extras["t"] == [9]
    d = rec.extras["t_distances"][0]
    assert min(range(4), key=d.__getitem__) == 2


def test_gidm_needs_level_d_and_shared_noise(tmp_path):
    m, x = tiny_unet(), smooth_images(1)
    upd = diffusion_update(m, x, share_noise=True)
    with pytest.raises(InsufficientKnowledgeError, match="surrogate_data"):
        fedleak.attack("gidm", m, upd, threat=ThreatModel("C"), prior_model=m)
    with pytest.raises(InsufficientKnowledgeError, match="surrogate_data"):
        fedleak.attack("gidm-plus", m, upd, threat=ThreatModel("C"), prior_model=m)
    private = diffusion_update(m, x, share_noise=False)
    with pytest.raises(InsufficientKnowledgeError, match="gidm-plus"):
        fedleak.attack("gidm", m, private, threat=ThreatModel("D"), prior_model=m)
    with pytest.raises(ConfigError, match="prior_model"):
        fedleak.attack("gidm", m, upd, threat=ThreatModel("D"))


def test_gidm_and_gidm_plus_run_and_report(tmp_path):
    m, x = tiny_unet(4), smooth_images(1, seed=2)
    prior = train_prior(smooth_images(16, seed=9), config=TINY, steps=3, batch_size=8)
    path = save_model(prior, tmp_path / "prior.pt")
    upd = diffusion_update(m, x, share_noise=True, seed=1)
    rec = fedleak.attack(
        "gidm", m, upd, threat=ThreatModel("D"), prior_model=str(path), ddim_steps=4,
        phase1_iterations=3, phase2_iterations=3,
    )
    assert rec.extras["phase1_images"].shape == x.shape and rec.iterations == 6
    assert rec.extras["t"] == upd.shared["t"].tolist()
    private = diffusion_update(m, x, share_noise=False, seed=1)
    rec = fedleak.attack(
        "gidm-plus", m, private, threat=ThreatModel("D"), prior_model=prior, ddim_steps=4,
        phase1_iterations=3, phase2_iterations=3, t_search="embedding",
    )
    assert rec.extras["t"] == upd.shared["t"].tolist()  # recovered, not given
    assert rec.images.shape == x.shape and torch.isfinite(rec.images).all()
    assert t_accuracy(rec, x, upd.shared["t"]) == 1.0


def test_t_accuracy_pairs_reconstructions_with_originals():
    from fedleak.attacks import Reconstruction

    x = smooth_images(3, seed=7)
    rec = Reconstruction(
        images=x[[2, 0, 1]], labels=None, attack="gidm-plus", threat_level="D",
        loss_history=[], restart_losses=[0.0], best_restart=0, iterations=0, seconds=0.0,
        extras={"t": [9, 4, 1]},  # slot 0 holds image 2 (t=9), slot 1 image 0 (t=4), ...
    )
    assert t_accuracy(rec, x, torch.tensor([4, 2, 9])) == pytest.approx(2 / 3)
