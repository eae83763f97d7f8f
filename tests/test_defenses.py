"""Training-time defenses: each mechanism checked against its definition, on tiny models."""

import copy
import math

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn
from torch.nn import functional as F

import fedleak
from fedleak.defenses import (
    DPSGD,
    TRAINING_DEFENSES,
    BiDO,
    LatentDecoder,
    LatentNet,
    LatentPerturbation,
    SecureAggregation,
    available_training_defenses,
    coco,
    dp_epsilon,
    make_training_defense,
    mixup_batch,
    normalized_hsic,
    pearson,
)
from fedleak.defenses.bido import center, gaussian_kernel, hidden_layers, linear_kernel
from fedleak.errors import ConfigError, UnknownNameError
from fedleak.fl import ClientData, aggregate, federate, local_update
from fedleak.models import build_model

SHAPE = (1, 8, 8)
TRAIN = {"protocol": "fedavg", "local_epochs": 1, "batch_size": 4, "lr": 0.01, "optimizer": "sgd"}
# options that keep every registered defense cheap in tests
OPTIONS = {"latent-perturbation": {"mean": 1.0, "std": 0.1, "lam": 1.0}}


def _data(n=8, seed=0, classes=3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=g), torch.randint(0, classes, (n,), generator=g)


def _latent(seed=0, **options):
    torch.manual_seed(seed)
    return build_model("latent-net", input_shape=SHAPE, num_classes=3, width=2, pool=2, **options)


def _flat(u):
    return torch.cat([v.flatten().double() for v in u.tensors.values()])


# --- registry and conformance -----------------------------------------------------------------


def test_registry_lists_every_defense():
    assert {"none", "latent-perturbation", "dp-sgd", "bido", "mixup", "secure-aggregation"} <= set(
        available_training_defenses()
    )
    with pytest.raises(UnknownNameError, match="available"):
        make_training_defense("dp-sdg")
    with pytest.raises(ConfigError, match="noise_multipler"):
        make_training_defense("dp-sgd", noise_multipler=1.0)
    with pytest.raises(ConfigError, match="lam"):
        make_training_defense("latent-perturbation", lam=-1.0)
    with pytest.raises(ConfigError, match="measure"):
        make_training_defense("bido", measure="mi")


@pytest.mark.parametrize("name", sorted(TRAINING_DEFENSES.names()))
def test_every_defense_is_a_trainer_for_federate_and_attacks(name):
    """Same signature as local_update: federate runs it; the update fits the model; attacks run."""
    defense = make_training_defense(name, **OPTIONS.get(name, {}))
    model = defense.prepare_model(_latent())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _data()
    u = defense(model, x, y, seed=0, client_id="0", round=1, **TRAIN)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # not mutated
    assert set(u.tensors) == {k for k, p in model.named_parameters() if p.requires_grad}
    assert u.kind == "delta" and u.num_samples == 8 and u.training.local_steps == 2
    assert all(torch.isfinite(t).all() for t in u.tensors.values())
    clients = [ClientData(*_data(8, s)) for s in range(2)]
    results = list(federate(model, clients, rounds=1, train=TRAIN, trainer=defense))
    assert len(results[0].updates) == 2
    rec = fedleak.attack("inverting-gradients", model, u, threat=fedleak.ThreatModel("C", labels=y),
                         iterations=2)
    assert rec.images.shape == (8, *SHAPE)


def test_fedsgd_protocol_sends_the_defense_gradient():
    x, y = _data()
    for name in ("bido", "mixup", "latent-perturbation", "dp-sgd"):
        defense = make_training_defense(name)
        u = defense(defense.prepare_model(_latent()), x, y, protocol="fedsgd", lr=0.1)
        assert u.kind == "gradient" and u.training.local_steps == 1


# --- latent perturbation (seed 001) ----------------------------------------------------------


def test_latent_net_shapes_and_noise():
    model = _latent(noise_mean=1.0, noise_std=0.5)
    assert isinstance(model, LatentNet) and model.latent_shape == (8, 4, 4)
    x, _ = _data(4)
    z = model.encoder(x)
    assert z.shape == (4, 8, 4, 4)
    assert model.noise.mean.shape == model.noise.std.shape == (8, 4, 4)
    model.eval()  # eval: the expected perturbation, deterministic
    assert torch.allclose(model.noise(z), z + 1.0)
    model.train()
    z = z.detach()
    n1, n2 = model.noise(z).detach() - z, model.noise(z).detach() - z
    assert not torch.allclose(n1, n2)
    assert abs(float(n1.mean()) - 1.0) < 0.2 and abs(float(n1.std()) - 0.5) < 0.15
    assert model(x).shape == (4, 3)
    dec = LatentDecoder(model.latent_shape, SHAPE)
    assert dec(z).shape == (4, *SHAPE)
    # the paper's sizes: 32x32 and 28x28 need no resize, and the predictor sees 2304 inputs
    for size in (32, 28):
        big = build_model("latent-net", input_shape=(3, size, size), num_classes=10)
        assert big.predictor[-1].in_features == 2304
        d = LatentDecoder(big.latent_shape, (3, size, size))
        assert d.size is None
        assert d(torch.zeros(1, *big.latent_shape)).shape == (1, 3, size, size)


def test_pearson_values():
    x = torch.rand(3, 1, 5, 5)
    assert torch.allclose(pearson(x, 2 * x + 3), torch.ones(3), atol=1e-5)
    assert torch.allclose(pearson(x, -x), -torch.ones(3), atol=1e-5)
    a, b = x[0].flatten().numpy(), torch.rand(25).numpy()
    assert float(pearson(x[:1], torch.tensor(b)[None])) == pytest.approx(
        np.corrcoef(a, b)[0, 1], abs=1e-5
    )


def test_minimax_signs_decoder_raises_rho_encoder_lowers_it():
    torch.manual_seed(0)
    net = _latent(noise_std=0.0)  # no sampling: rho changes only through the updated weights
    net.train()
    dec = LatentDecoder(net.latent_shape, SHAPE)
    dec.eval()  # BatchNorm with running stats: the same function before and after each step
    x, y = _data(8)
    defense = LatentPerturbation(lam=100.0)

    def rho():
        with torch.no_grad():
            return float(pearson(x, dec(net.perturbed_latent(x))).mean())

    r0 = rho()
    dec_opt = torch.optim.SGD(dec.parameters(), lr=0.05)
    loss = defense._minimax_step(net, dec, dec_opt, x, y)  # decoder step happens inside
    r1 = rho()
    assert r1 > r0  # the decoder maximizes rho
    enc_opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.01)
    dec_grads = [p.grad.clone() for p in dec.parameters()]
    loss.backward()
    # the encoder/predictor loss puts no gradient on the decoder
    assert all(torch.equal(g, p.grad) for g, p in zip(dec_grads, dec.parameters(), strict=True))
    enc_opt.step()
    assert rho() < r1  # encoder/predictor minimize CE + lambda * rho


def test_learnable_noise_learns_in_pretraining_and_stays_fixed_in_fl():
    model = LatentPerturbation(noise="learnable", mean=1.0, std=0.1, pretrain_epochs=2,
                               pretrain_batch_size=4).prepare_model(_latent())
    defense = LatentPerturbation(noise="learnable", mean=1.0, std=0.1, pretrain_epochs=2,
                                 pretrain_batch_size=4)
    x, y = _data(8)
    # the noise parameters receive gradients during pre-training ...
    probe = _latent(noise_mean=1.0, noise_std=0.1)
    probe.noise.set_learnable(True)
    probe.train()
    dec = LatentDecoder(probe.latent_shape, SHAPE)
    defense._minimax_step(probe, dec, torch.optim.SGD(dec.parameters(), lr=0.0), x, y).backward()
    assert probe.noise.mean.grad is not None and probe.noise.mean.grad.abs().sum() > 0
    assert probe.noise.std.grad is not None and probe.noise.std.grad.abs().sum() > 0
    # ... and Algorithm 1 moves them away from their initial values, per element
    clients = [ClientData(x, y), ClientData(*_data(8, 1))]
    defense.setup(model, clients, seed=0)
    mean0, std0 = (t.clone() for t in defense.learned["0"])
    assert mean0.shape == model.latent_shape
    assert not torch.allclose(mean0, torch.ones_like(mean0))
    assert (std0 >= 0).all() and not torch.allclose(std0, torch.full_like(std0, 0.1))
    assert not torch.allclose(mean0, defense.learned["1"][0])  # private to each client
    # in FL the noise is frozen: not trained, not sent; the global model keeps the public init
    u = defense(model, x, y, seed=0, client_id="0", round=1, **TRAIN)
    assert not any(k.startswith("noise.") for k in u.tensors)
    assert torch.equal(defense.learned["0"][0], mean0)
    assert torch.equal(model.noise.mean, torch.ones_like(mean0))
    personal = defense.client_model(model, "0")
    assert torch.equal(personal.noise.mean, mean0) and personal is not model
    list(federate(model, clients, rounds=1, train=TRAIN, trainer=defense))
    assert torch.equal(defense.learned["0"][0], mean0)
    assert torch.equal(model.noise.mean, torch.ones_like(mean0))


def test_latent_perturbation_needs_its_architecture():
    conv = build_model("convnet", input_shape=SHAPE, num_classes=3, widths=[4], pool_after=[0])
    with pytest.raises(ConfigError, match="latent-net"):
        LatentPerturbation().prepare_model(conv)


# --- BiDO: kernels and dependence measures ----------------------------------------------------


def _np_center(k):
    m = k.shape[0]
    h = np.eye(m) - np.ones((m, m)) / m
    return h @ k @ h


def test_kernels_match_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 4, generator=g, dtype=torch.float64)
    an = a.numpy()
    d2 = ((an[:, None, :] - an[None, :, :]) ** 2).sum(-1)
    assert np.allclose(gaussian_kernel(a, 5.0).numpy(), np.exp(-d2 / (2 * 25 * 4)))
    assert np.allclose(linear_kernel(a).numpy(), an @ an.T)
    k = gaussian_kernel(a, 5.0).numpy()
    assert np.allclose(center(torch.tensor(k)).numpy(), _np_center(k))


def test_hsic_and_coco_values():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g, dtype=torch.float64)
    z = torch.randn(200, 5, generator=g, dtype=torch.float64)  # independent of x
    kx, kz = gaussian_kernel(x, 1.0), gaussian_kernel(z, 1.0)
    kd = gaussian_kernel(x + 0.01 * z, 1.0)  # almost x
    # normalized HSIC: identical -> 1, nearly identical -> near 1, independent -> near 0
    assert float(normalized_hsic(kx, kx)) == pytest.approx(1.0, abs=1e-9)
    assert float(normalized_hsic(kd, kx)) > 0.99
    assert float(normalized_hsic(kz, kx)) < 0.1  # finite-sample bias only, O(1/m)
    # hand computation on a small case
    a, b = kx[:10, :10].numpy(), kz[:10, :10].numpy()
    ca, cb = _np_center(a), _np_center(b)
    hand = (ca * cb).sum() / (np.linalg.norm(ca) * np.linalg.norm(cb))
    assert float(normalized_hsic(kx[:10, :10], kz[:10, :10])) == pytest.approx(hand, abs=1e-9)
    hand_coco = math.sqrt(max(np.linalg.eigvals(ca @ cb).real)) / 10
    assert float(coco(kx[:10, :10], kz[:10, :10])) == pytest.approx(hand_coco, rel=1e-6)
    # COCO: identical -> lambda_max(K~) / m, the largest; independent -> much smaller
    same = float(coco(kx, kx))
    assert same == pytest.approx(float(torch.linalg.eigvalsh(center(kx))[-1]) / 200, rel=1e-6)
    assert float(coco(kz, kx)) < 0.3 * same
    # labels that depend on x (linear kernel on one-hot): dependent >> independent
    ky = linear_kernel(torch.nn.functional.one_hot((x[:, 0] > 0).long(), 2).double())
    assert float(coco(kx, ky)) > 3 * float(coco(kz, ky))
    assert float(normalized_hsic(kx, ky)) > 10 * float(normalized_hsic(kz, ky))


def test_bido_loss_hooks_hidden_layers_and_is_differentiable():
    model = _latent()
    names = hidden_layers(model)
    assert len(names) == 9  # one per conv block of Table I's encoder
    x, y = _data(8)
    for measure in ("hsic", "coco"):
        bido = BiDO(measure=measure, lambda_x=1.0, lambda_y=2.0)
        loss, terms = bido.loss(model, x, y, names)
        loss.backward()
        assert math.isfinite(loss.item()) and terms["d_x"] > 0 and terms["d_y"] > 0
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        model.zero_grad()
    with pytest.raises(ConfigError, match="layers"):
        hidden_layers(model, ["nope"])


# --- DP-SGD ------------------------------------------------------------------------------------


def test_dpsgd_epsilon_matches_opacus_and_persists_across_rounds():
    defense = DPSGD(noise_multiplier=1.1, max_grad_norm=1.0, delta=1e-5)
    model = _latent()
    x, y = _data(16)
    train = {**TRAIN, "batch_size": 4}  # q = 4 / 16, 4 steps per round
    defense(model, x, y, seed=0, client_id="0", round=1, **train)
    first = defense.accounting("0")
    defense(model, x, y, seed=1, client_id="0", round=2, **train)
    second = defense.accounting("0")
    assert first["steps"] == 4 and second["steps"] == 8 and second["rounds"] == 2
    assert first["sample_rate"] == 0.25
    assert second["epsilon"] > first["epsilon"] > 0  # one accountant across rounds
    ref = RDPAccountant()
    ref.history = [(1.1, 0.25, 8)]
    assert second["epsilon"] == pytest.approx(ref.get_epsilon(delta=1e-5), rel=1e-9)
    assert dp_epsilon(1.1, 0.25, 8, 1e-5) == pytest.approx(second["epsilon"], rel=1e-9)
    assert defense.accounting("1")["steps"] == 0  # per client


def test_dpsgd_clips_each_example():
    model = _latent()
    x, y = _data(4)
    c, lr = 1e-3, 1.0
    defense = DPSGD(noise_multiplier=0.0, max_grad_norm=c)
    one_step = {"protocol": "fedavg", "local_steps": 1, "lr": lr, "optimizer": "sgd"}
    plain = local_update(model, x, y, batch_size=4, **one_step)
    assert _flat(plain).norm() > 10 * c * lr  # unclipped, the step is far larger
    for i in range(4):  # a batch of one: the step is exactly one clipped example
        u = defense(model, x[i : i + 1], y[i : i + 1], batch_size=1, **one_step)
        assert float(_flat(u).norm()) <= c * lr * (1 + 1e-4)
        assert float(_flat(u).norm()) == pytest.approx(c * lr, rel=1e-3)  # clipped to C
    u = defense(model, x, y, batch_size=4, **one_step)
    assert float(_flat(u).norm()) <= c * lr * (1 + 1e-4)  # the mean of clipped examples
    assert math.isinf(defense.accounting("0")["epsilon"])  # no noise, no guarantee


def test_dpsgd_matches_per_example_clipping_by_hand_in_either_layout():
    """One DP step (no noise) equals the mean of per-example gradients clipped by hand, also
    for a channels-last model (federate trains CPU models so; Opacus's per-example conv
    gradients are wrong in that layout, which once left DP-SGD at chance accuracy)."""
    model = _latent()
    x, y = _data(4)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    per = []
    for i in range(4):
        g = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params)
        per.append(torch.cat([t.flatten().double() for t in g]))
    norms = torch.stack([v.norm() for v in per])
    c, lr = float(norms.median()), 0.5  # some examples clipped, some not
    ref = -lr * torch.stack([v * min(1.0, c / float(v.norm())) for v in per]).mean(0)
    one_step = {"protocol": "fedavg", "local_steps": 1, "lr": lr, "optimizer": "sgd",
                "batch_size": 4}
    for layout in (torch.contiguous_format, torch.channels_last):
        net = copy.deepcopy(model).to(memory_format=layout)
        u = DPSGD(noise_multiplier=0.0, max_grad_norm=c)(net, x, y, **one_step)
        got = torch.cat([u.tensors[n].flatten().double() for n in names])
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_dpsgd_swaps_batchnorm_for_groupnorm_on_a_copy():
    model = build_model("convnet", input_shape=SHAPE, num_classes=3, widths=[4, 8],
                        pool_after=[0])
    defense = DPSGD()
    fixed = defense.prepare_model(model)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # original untouched
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fixed.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in fixed.modules())
    assert fixed.input_shape == SHAPE
    x, y = _data(8)
    u = defense(fixed, x, y, **TRAIN)
    assert u.buffers == {}  # no running statistics left to leak
    with pytest.raises(ConfigError, match="GroupNorm"):
        defense(model, x, y, **TRAIN)


# --- MixUp -------------------------------------------------------------------------------------


def test_mixup_mixes_images_and_labels():
    x, y = _data(4)
    y = torch.tensor([0, 1, 2, 0])
    perm = torch.tensor([1, 0, 3, 2])
    mixed, soft = mixup_batch(x, y, 3, 0.3, perm)
    assert torch.allclose(mixed, 0.3 * x + 0.7 * x[perm])
    assert torch.allclose(soft.sum(1), torch.ones(4))
    assert torch.allclose(soft[0], torch.tensor([0.3, 0.7, 0.0]))
    assert torch.allclose(soft[2], torch.tensor([0.7, 0.0, 0.3]))
    plain = local_update(_latent(), *_data(8), seed=0, **TRAIN)
    mixed_u = make_training_defense("mixup", alpha=1.0)(_latent(), *_data(8), seed=0, **TRAIN)
    assert not torch.allclose(_flat(plain), _flat(mixed_u))


# --- secure aggregation -----------------------------------------------------------------------


def test_secure_aggregation_sum_is_exact_and_masked_updates_look_random():
    model = _latent()
    sizes = [4, 8, 12]
    updates = {
        i: local_update(model, *_data(n, i), seed=i, **TRAIN) for i, n in enumerate(sizes)
    }
    sec = SecureAggregation(mask_scale=100.0, seed=3)
    masked = sec.mask(updates, round=1)
    plain = aggregate(list(updates.values()))  # weighted FedAvg of the true updates
    agg = sec.unmask(masked, num_samples=sum(sizes))
    assert agg.num_samples == 24
    for k, v in plain.tensors.items():
        assert torch.allclose(agg.tensors[k], v, atol=1e-6)
    for i, u in updates.items():
        a, b = _flat(masked[i]), _flat(u)
        assert float(a.norm()) > 100 * float(b.norm())
        assert abs(float(np.corrcoef(a.numpy(), b.numpy())[0, 1])) < 0.05
    with pytest.raises(ConfigError):
        sec.mask({})


def test_secure_aggregation_inside_federate_changes_nothing_but_what_the_server_sees():
    clients = [ClientData(*_data(n, s)) for s, n in enumerate([4, 8, 12])]
    sec = SecureAggregation()
    a, b = _latent(), _latent()
    filt = sec.as_filter(num_clients=3, clients_per_round=None, sizes=[4, 8, 12],
                         federation_seed=0)
    seen = []
    list(federate(a, clients, rounds=2, train=TRAIN, seed=0, filters=filt, trainer=sec,
                  on_update=lambda r, c, u, m: seen.append(u)))
    list(federate(b, clients, rounds=2, train=TRAIN, seed=0))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(va, vb, atol=1e-5), k
    assert all(float(_flat(u).abs().mean()) > 10 for u in seen)  # each one alone is noise


def test_defense_state_is_per_client_and_copyable():
    defense = LatentPerturbation()
    model = defense.prepare_model(_latent())
    x, y = _data(8)
    defense(model, x, y, client_id="0", **TRAIN)
    defense(model, x, y, client_id="1", **TRAIN)
    assert set(defense.decoders) == {"0", "1"}
    twin = copy.deepcopy(defense)
    twin(model, x, y, client_id="0", **TRAIN)
    assert not torch.equal(
        next(twin.decoders["0"].parameters()), next(defense.decoders["0"].parameters())
    )
