"""Update filters and client-level DP accounting: each checked against its own definition."""

import math
import warnings

import numpy as np
import pytest
import torch
from opacus.accountants import GaussianAccountant, PRVAccountant, RDPAccountant

from fedleak.defenses import (
    FILTERS,
    ClientDPAccountant,
    ClipNoiseFilter,
    Compose,
    ExcludeFilter,
    GaussianFilter,
    PercentileFilter,
    PruneFilter,
    QuantizeFilter,
    SVTFilter,
    available_filters,
    compose,
    make_filter,
)
from fedleak.errors import ConfigError, UnknownNameError, UpdateError
from fedleak.fl import ClientUpdate, TrainingConfig, aggregate, local_update
from fedleak.models import build_model

# options that make every registered filter constructible (exclude needs something to drop)
OPTIONS = {"exclude": {"patterns": ["fc.*"], "buffers": True}}


def _update(n=4000, seed=0, steps=1, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "conv.weight": scale * torch.randn(n, generator=g).reshape(-1, 4),
        "conv.bias": scale * torch.randn(8, generator=g),
        "fc.weight": scale * torch.randn(10, 20, generator=g),
        "fc.bias": torch.zeros(10),
    }
    buffers = {
        "bn.running_mean": torch.randn(8, generator=g),
        "bn.running_var": torch.rand(8, generator=g) + 0.5,
        "bn.num_batches_tracked": torch.tensor(7),
    }
    training = TrainingConfig(protocol="fedavg", lr=0.1, local_steps=steps)
    return ClientUpdate(
        kind="delta", tensors=tensors, buffers=buffers, num_samples=5, training=training
    )


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _clone(u):
    return {k: v.clone() for k, v in {**u.tensors, **u.buffers}.items()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --- every registered filter ------------------------------------------------------------------


@pytest.mark.parametrize("name", available_filters())
def test_filter_leaves_input_untouched_and_returns_a_new_update(name):
    f = make_filter(name, **OPTIONS.get(name, {}))
    u = _update()
    before = _clone(u)
    out = f(u, generator=_gen())
    assert isinstance(out, ClientUpdate) and out is not u
    _assert_same(_clone(u), before)
    assert out.kind == u.kind and out.num_samples == u.num_samples and out.training == u.training


@pytest.mark.parametrize("name", available_filters())
def test_seeded_generator_repeats_and_describe_rebuilds(name):
    f = make_filter(name, **OPTIONS.get(name, {}))
    u = _update()
    _assert_same(_clone(f(u, generator=_gen(3))), _clone(f(u, generator=_gen(3))))
    d = f.describe()
    assert d["name"] == name
    assert make_filter(**d) == f


def test_registry_lists_every_filter():
    assert available_filters() == [
        "clip-noise",
        "exclude",
        "gaussian",
        "percentile",
        "prune",
        "quantize",
        "svt",
    ]
    assert FILTERS.get("gaussian") is GaussianFilter


def test_unknown_filter_lists_the_names():
    with pytest.raises(UnknownNameError, match="available: clip-noise, exclude, gaussian") as e:
        make_filter("gausian")
    assert "Did you mean 'gaussian'" in str(e.value)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("gaussian", {"sigma0": -1.0}),
        ("gaussian", {"sigma0": float("nan")}),
        ("gaussian", {"sigma0": "25"}),
        ("gaussian", {"percentile": 0}),
        ("gaussian", {"percentile": 100.5}),
        ("gaussian", {"include_buffers": "yes"}),
        ("gaussian", {"sigma": 1.0}),
        ("percentile", {"gamma": 0.0}),
        ("percentile", {"percentile": -1}),
        ("svt", {"fraction": 0.0}),
        ("svt", {"fraction": 1.5}),
        ("svt", {"epsilon": 0.0}),
        ("svt", {"noise_var": -0.1}),
        ("svt", {"tau": -1.0}),
        ("exclude", {}),
        ("exclude", {"regex": "("}),
        ("exclude", {"patterns": [1, 2]}),
        ("clip-noise", {"clip": 0.0}),
        ("clip-noise", {"noise_multiplier": 0.0}),
        ("clip-noise", {"noise_multiplier": math.inf}),
        ("prune", {"keep": 0.0}),
        ("prune", {"keep": 1.01}),
        ("prune", {"scope": "layer"}),
        ("quantize", {"bits": 0}),
        ("quantize", {"bits": 17}),
        ("quantize", {"bits": 4.0}),
        ("quantize", {"bits": True}),
    ],
)
def test_bad_options_raise_config_error(name, options):
    with pytest.raises(ConfigError, match=r"^`\w+` of .+ must be .+; got .+\.$"):
        make_filter(name, **options)


# --- gaussian ---------------------------------------------------------------------------------


def test_gaussian_noise_std_is_sigma0_times_percentile_of_nonzero_values():
    u = _update(n=200_000)
    f = GaussianFilter(sigma0=0.5, percentile=90)
    values = np.concatenate([t.numpy().ravel() for t in u.tensors.values()])
    ref = 0.5 * float(np.percentile(np.abs(values[values != 0]), 90))  # fc.bias zeros are left out
    assert f.noise_std(u) == pytest.approx(ref, rel=1e-6)
    out = f(u, generator=_gen())
    noise = (out.tensors["conv.weight"] - u.tensors["conv.weight"]).double()
    assert float(noise.mean()) == pytest.approx(0.0, abs=0.01 * ref)
    assert float(noise.std()) == pytest.approx(ref, rel=0.01)
    assert not torch.equal(out.buffers["bn.running_mean"], u.buffers["bn.running_mean"])
    assert torch.equal(out.buffers["bn.num_batches_tracked"], u.buffers["bn.num_batches_tracked"])


def test_gaussian_zero_sigma_is_identity_and_buffers_optional():
    u = _update()
    out = GaussianFilter(sigma0=0.0)(u, generator=_gen())
    assert out is not u
    _assert_same(_clone(out), _clone(u))
    out = GaussianFilter(sigma0=1.0, include_buffers=False)(u, generator=_gen())
    for k, b in u.buffers.items():
        assert torch.equal(out.buffers[k], b)
    assert not torch.equal(out.tensors["fc.weight"], u.tensors["fc.weight"])


def test_gaussian_percentile_includes_buffer_changes_given_the_reference():
    u = _update(n=400)
    ref = {k: b - 100.0 if b.is_floating_point() else b for k, b in u.buffers.items()}
    f = GaussianFilter(sigma0=1.0, percentile=100, reference_buffers=ref)
    assert f.noise_std(u) == pytest.approx(100.0, rel=1e-5)  # the buffer change dominates
    assert GaussianFilter(sigma0=1.0, percentile=100).noise_std(u) < 10
    with pytest.raises(UpdateError, match="lacks buffer"):
        GaussianFilter(reference_buffers={}).noise_std(u)


# --- percentile, svt --------------------------------------------------------------------------


def test_percentile_keeps_entries_above_the_cutoff_and_clips_to_gamma():
    u = _update(n=20_000)
    f = PercentileFilter(percentile=30, gamma=0.5)
    out = f(u, generator=_gen())
    values = np.concatenate([t.numpy().ravel() for t in u.tensors.values()])
    cutoff = np.percentile(np.abs(values), 30)
    kept = sum(int((t != 0).sum()) for t in out.tensors.values())
    assert kept == int((np.abs(values) >= cutoff).sum())
    assert kept / values.size == pytest.approx(0.7, abs=0.01)
    for k, t in out.tensors.items():
        assert float(t.abs().max()) <= 0.5
        mask = t != 0
        torch.testing.assert_close(t[mask], u.tensors[k][mask].clamp(-0.5, 0.5))


def test_percentile_gamma_is_per_local_step():
    u = _update(steps=4)
    out = PercentileFilter(percentile=10, gamma=0.1)(u, generator=_gen())
    assert float(out.tensors["conv.weight"].abs().max()) == pytest.approx(0.4)
    out = PercentileFilter(percentile=10, gamma=0.1, per_step=False)(u, generator=_gen())
    assert float(out.tensors["conv.weight"].abs().max()) == pytest.approx(0.1)


def test_svt_releases_at_most_fraction_of_entries_within_gamma():
    u = _update(n=20_000, scale=1e-5)
    n = sum(t.numel() for t in u.tensors.values())
    for seed in range(3):
        out = SVTFilter(fraction=0.05)(u, generator=_gen(seed))
        released = sum(int((t != 0).sum()) for t in out.tensors.values())
        assert 0 < released <= math.ceil(0.05 * n)
        assert max(float(t.abs().max()) for t in out.tensors.values()) <= 1e-5 * (1 + 1e-6)


def test_svt_refuses_a_threshold_nothing_can_pass():
    with pytest.raises(ConfigError, match="`tau` of SVTFilter"):
        SVTFilter(tau=1.0)(_update(n=400), generator=_gen())


# --- exclude ----------------------------------------------------------------------------------


def test_exclude_drops_matching_keys():
    u = _update()
    out = ExcludeFilter(patterns=("fc.*",))(u)
    assert set(out.tensors) == {"conv.weight", "conv.bias"}
    assert set(out.buffers) == set(u.buffers)
    out = ExcludeFilter(regex=r"bias$")(u)
    assert set(out.tensors) == {"conv.weight", "fc.weight"}
    out = ExcludeFilter(patterns="*running_*")(u)
    assert set(out.buffers) == {"bn.num_batches_tracked"} and set(out.tensors) == set(u.tensors)


def test_exclude_buffers_keeps_bn_state_local_and_aggregate_still_works():
    f = make_filter("exclude", buffers=True)
    a, b = f(_update(seed=1)), f(_update(seed=2))
    assert a.buffers == {} and set(a.tensors) == set(_update().tensors)
    agg = aggregate([a, b])
    assert agg.buffers == {} and set(agg.tensors) == set(a.tensors)


def test_exclude_everything_is_an_error():
    with pytest.raises(UpdateError, match="dropped every tensor"):
        ExcludeFilter(patterns=("*",))(_update())


# --- clip-noise -------------------------------------------------------------------------------


def _norm(u):
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in u.tensors.values()))


def test_clip_noise_bounds_the_norm():
    u = _update()
    assert _norm(u) > 10
    out = ClipNoiseFilter(clip=2.0, noise_multiplier=1e-9)(u, generator=_gen())
    assert _norm(out) == pytest.approx(2.0, rel=1e-4)
    assert out.buffers == {}  # outside the guarantee: dropped by default
    small = _update(scale=1e-4)
    out = ClipNoiseFilter(clip=2.0, noise_multiplier=1e-9)(small, generator=_gen())
    torch.testing.assert_close(out.tensors["conv.weight"], small.tensors["conv.weight"])
    kept = ClipNoiseFilter(exclude_buffers=False)(u, generator=_gen())
    _assert_same(dict(kept.buffers), dict(u.buffers))


def test_clip_noise_std_is_multiplier_times_clip():
    u = _update(n=200_000, scale=1e-6)  # norm far below clip: the output is almost pure noise
    out = ClipNoiseFilter(clip=0.5, noise_multiplier=3.0)(u, generator=_gen())
    assert float(out.tensors["conv.weight"].std()) == pytest.approx(1.5, rel=0.01)


# --- prune, quantize --------------------------------------------------------------------------


def test_prune_keeps_the_exact_fraction_of_largest_entries():
    u = _update()
    out = PruneFilter(keep=0.25)(u)
    for k, t in u.tensors.items():
        nz = out.tensors[k] != 0
        if k != "fc.bias":  # all zero: nothing to keep
            assert int(nz.sum()) == math.ceil(0.25 * t.numel())
        if nz.any() and (~nz).any():
            assert float(t[nz].abs().min()) >= float(t[~nz].abs().max())
        torch.testing.assert_close(out.tensors[k][nz], t[nz])
    out = PruneFilter(keep=0.1, scope="global")(u)
    total = sum(t.numel() for t in u.tensors.values())
    assert sum(int((t != 0).sum()) for t in out.tensors.values()) == math.ceil(0.1 * total)
    _assert_same(_clone(PruneFilter(keep=1.0)(u)), _clone(u))


@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("bits", [1, 3, 8])
def test_quantize_error_is_bounded_by_the_step(bits, stochastic):
    u = _update()
    out = QuantizeFilter(bits=bits, stochastic=stochastic)(u, generator=_gen())
    for k in ("conv.weight", "fc.weight"):
        t = u.tensors[k]
        step = float(t.max() - t.min()) / (2**bits - 1)
        err = float((out.tensors[k] - t).abs().max())
        assert err <= (1.0 if stochastic else 0.5) * step * (1 + 1e-5)
        assert out.tensors[k].unique().numel() <= 2**bits
    assert torch.equal(out.tensors["fc.bias"], u.tensors["fc.bias"])  # constant: unchanged


def test_stochastic_quantization_is_unbiased():
    u = _update(n=200)
    x = u.tensors["conv.weight"]
    step = float(x.max() - x.min()) / 3
    f, g = QuantizeFilter(bits=2), _gen()
    mean = torch.stack([f(u, generator=g).tensors["conv.weight"] for _ in range(2000)]).mean(0)
    assert float((mean - x).abs().max()) < 0.06 * step
    det = QuantizeFilter(bits=2, stochastic=False)(u).tensors["conv.weight"]
    assert float((det - x).abs().mean()) > 0.1 * step  # rounding error does not average out


# --- compose ----------------------------------------------------------------------------------


def test_compose_applies_in_order():
    u = _update()
    prune, quant = PruneFilter(keep=0.5), QuantizeFilter(bits=1, stochastic=False)
    chain = compose([prune, quant])
    assert isinstance(chain, Compose)
    _assert_same(_clone(chain(u)), _clone(quant(prune(u))))
    assert not torch.equal(chain(u).tensors["conv.weight"], prune(quant(u)).tensors["conv.weight"])
    noisy = compose([make_filter("exclude", buffers=True), GaussianFilter(sigma0=1.0)])
    _assert_same(_clone(noisy(u, generator=_gen(5))), _clone(noisy(u, generator=_gen(5))))
    assert noisy(u, generator=_gen()).buffers == {}
    assert chain.describe() == {"name": "compose", "filters": [prune.describe(), quant.describe()]}
    _assert_same(_clone(compose([])(u)), _clone(u))
    with pytest.raises(ConfigError, match=r"`filters\[1\]` of compose"):
        compose([prune, "quantize"])


def test_filters_work_on_a_real_fedavg_round():
    torch.manual_seed(0)
    model = build_model(
        "convnet",
        input_shape=(1, 8, 8),
        num_classes=3,
        widths=(4, 6),
        pool_after=(0,),
        batch_norm=True,
    )
    g = torch.Generator().manual_seed(1)
    images, labels = torch.rand((4, 1, 8, 8), generator=g), torch.randint(0, 3, (4,), generator=g)
    u = local_update(model, images, labels, protocol="fedavg", local_steps=2, batch_size=2, lr=0.1)
    ref = dict(model.named_buffers())
    f = compose([GaussianFilter(sigma0=0.5, reference_buffers=ref), PruneFilter(keep=0.5)])
    out = f(u, generator=_gen())
    out.check_matches(model)
    assert set(out.buffers) == set(u.buffers)


# --- accounting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"), [("rdp", RDPAccountant), ("prv", PRVAccountant), ("gdp", GaussianAccountant)]
)
def test_accountant_matches_opacus_fed_the_same_steps(name, cls):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gdp: "experimental"; prv: log(0) at the grid's edge
        ours = ClientDPAccountant(1.1, 0.1, 1e-5, accountant=name)
        ours.step(rounds=20)
        ref = cls()
        for _ in range(20):
            ref.step(noise_multiplier=1.1, sample_rate=0.1)
        assert ours.rounds == 20
        assert ours.epsilon == pytest.approx(ref.get_epsilon(delta=1e-5), rel=1e-9)


def test_epsilon_grows_with_rounds_and_falls_with_noise():
    acc = ClientDPAccountant(1.0, 0.2, 1e-5)
    assert acc.epsilon == 0.0
    eps = []
    for _ in range(3):
        acc.step(rounds=10)
        eps.append(acc.epsilon)
    assert eps[0] < eps[1] < eps[2]
    noisier = ClientDPAccountant(2.0, 0.2, 1e-5)
    noisier.step(rounds=30)
    assert noisier.epsilon < eps[2]
    assert acc.get_epsilon(1e-3) < acc.epsilon  # a looser delta buys a smaller epsilon


def test_accountant_state_resumes_an_audit():
    full = ClientDPAccountant.for_federation(1.0, clients_per_round=2, num_clients=10, delta=1e-5)
    assert full.sample_rate == pytest.approx(0.2)
    full.step(rounds=8)
    first = ClientDPAccountant(1.0, 0.2, 1e-5)
    first.step(rounds=5)
    resumed = ClientDPAccountant.from_state_dict(first.state_dict())
    resumed.step(rounds=3)
    assert resumed.rounds == 8
    assert resumed.epsilon == pytest.approx(full.epsilon, rel=1e-12)
    other = ClientDPAccountant(1.0, 0.2, 1e-5, accountant="prv")
    with pytest.raises(ConfigError, match="`state` of ClientDPAccountant"):
        other.load_state_dict(first.state_dict())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"delta": 0.0},
        {"delta": 1.0},
        {"sample_rate": 0.0},
        {"sample_rate": 1.5},
        {"noise_multiplier": 0.0},
        {"accountant": "moments"},
    ],
)
def test_accountant_rejects_values_the_maths_cannot_take(kwargs):
    args = {"noise_multiplier": 1.0, "sample_rate": 0.1, "delta": 1e-5, **kwargs}
    with pytest.raises(ConfigError, match=r"^`\w+` of ClientDPAccountant must be"):
        ClientDPAccountant(**args)
    with pytest.raises(ConfigError):
        ClientDPAccountant(1.0, 0.1, 1e-5).step(rounds=-1)
