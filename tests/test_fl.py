"""The client update must be exactly what a real client sends: cross-checked by hand."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import fedleak
from fedleak.errors import ConfigError, DataError, InsufficientKnowledgeError, UpdateError
from fedleak.fl import (
    ClientData,
    ClientUpdate,
    ThreatModel,
    aggregate,
    apply_update,
    federate,
    local_update,
)
from fedleak.models import build_model


def _model(bn=True, seed=0):
    torch.manual_seed(seed)
    return build_model(
        "convnet", input_shape=(1, 8, 8), num_classes=3, widths=(4, 6), pool_after=(0,),
        batch_norm=bn,
    )


def _data(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, 8, 8), generator=g), torch.randint(0, 3, (n,), generator=g)


def test_fedsgd_is_the_gradient_of_the_mean_loss():
    m = _model()
    x, y = _data()
    u = fedleak.observe(m, x, y)
    ref = copy.deepcopy(m).train()
    grads = torch.autograd.grad(F.cross_entropy(ref(x), y), list(ref.parameters()))
    assert u.kind == "gradient" and u.num_samples == 6
    for (k, _), g in zip(m.named_parameters(), grads, strict=True):
        torch.testing.assert_close(u.tensors[k], g)


@pytest.mark.parametrize("opt", ["sgd", "sgd-momentum", "adam"])
@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_fedavg_delta_and_buffers_equal_a_hand_written_loop(opt, bn_mode):
    m = _model()
    x, y = _data(n=5)
    kw = {"momentum": 0.9} if opt == "sgd-momentum" else {}
    name = "adam" if opt == "adam" else "sgd"
    u = local_update(
        m, x, y, protocol="fedavg", local_epochs=2, batch_size=2, lr=0.05, optimizer=name,
        bn_mode=bn_mode, shuffle=True, seed=7, **kw,
    )
    # the same training, written out by hand
    net = copy.deepcopy(m)
    net.train()
    if bn_mode == "eval":
        for mod in net.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.eval()
    o = (
        torch.optim.Adam(net.parameters(), lr=0.05)
        if name == "adam"
        else torch.optim.SGD(net.parameters(), lr=0.05, **kw)
    )
    gen = torch.Generator().manual_seed(7)
    steps = 0
    for _ in range(2):
        perm = torch.randperm(5, generator=gen)
        for s in range(0, 5, 2):
            idx = perm[s : s + 2]
            o.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            o.step()
            steps += 1
    assert u.training.local_steps == steps == 6
    assert u.training.batch_sizes == (2, 2, 1, 2, 2, 1)
    for (k, p0), p1 in zip(m.named_parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(u.tensors[k], p1.detach() - p0.detach())
    own = {k: v for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
    assert set(own) == set(u.buffers)
    for k, v in own.items():
        torch.testing.assert_close(u.buffers[k], v)
    if bn_mode == "eval":  # eval-mode BN leaves the running statistics alone
        for k, v in m.state_dict().items():
            if k in own:
                torch.testing.assert_close(u.buffers[k], v)


def test_local_steps_and_model_left_unchanged():
    m = _model()
    before = copy.deepcopy(m.state_dict())
    x, y = _data(n=4)
    u = local_update(m, x, y, protocol="fedavg", local_steps=3, batch_size=4, lr=0.1)
    assert u.training.local_steps == 3 and u.training.bn_momentum == pytest.approx(0.1)
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_update_never_holds_the_private_data():
    m = _model()
    x, y = _data()
    u = fedleak.observe(m, x, y, protocol="fedavg", batch_size=3, lr=0.1)
    fields = set(ClientUpdate.__dataclass_fields__)
    assert not fields & {"images", "labels", "data"}
    for t in [*u.tensors.values(), *u.buffers.values()]:
        assert t.shape != x.shape


def test_aggregate_is_a_true_weighted_mean():
    m = _model()
    ups = []
    for seed, n in [(1, 2), (2, 5), (3, 9)]:
        x, y = _data(n=n, seed=seed)
        ups.append(local_update(m, x, y, protocol="fedavg", batch_size=2, lr=0.1, seed=seed))
    agg = aggregate(ups)
    w = torch.tensor([2.0, 5.0, 9.0]) / 16
    for k in ups[0].tensors:
        expect = sum(wi * u.tensors[k].double() for wi, u in zip(w.double(), ups, strict=True))
        torch.testing.assert_close(agg.tensors[k], expect.float())
    for k, v in ups[0].buffers.items():
        if v.is_floating_point():
            expect = sum(wi * u.buffers[k].double() for wi, u in zip(w.double(), ups, strict=True))
            torch.testing.assert_close(agg.buffers[k], expect.float())
    assert agg.num_samples == 16
    # explicit weights and equal updates
    same = aggregate([ups[0], ups[0]], weights=[1, 3])
    for k in ups[0].tensors:
        torch.testing.assert_close(same.tensors[k], ups[0].tensors[k])
    with pytest.raises(ConfigError):
        aggregate(ups, weights=[1, -1, 1])
    with pytest.raises(ConfigError):
        aggregate([])


def test_apply_update_moves_parameters():
    m = _model()
    x, y = _data()
    u = local_update(m, x, y, protocol="fedavg", batch_size=3, lr=0.1)
    target = {k: p.detach() + u.tensors[k] for k, p in m.named_parameters()}
    apply_update(m, u)
    for k, p in m.named_parameters():
        torch.testing.assert_close(p.detach(), target[k])


def test_federation_learns_and_is_reproducible():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    # an easy task: class = which third of the image is bright
    def make(n):
        y = torch.randint(0, 3, (n,), generator=g)
        x = torch.rand((n, 1, 8, 8), generator=g) * 0.2
        for i, c in enumerate(y.tolist()):
            x[i, :, :, c * 2 : c * 2 + 3] += 0.8
        return x.clamp(0, 1), y

    clients = [ClientData(*make(24)) for _ in range(4)]
    test = make(90)
    runs = []
    for _ in range(2):
        m = _model(bn=False, seed=3)
        hist = list(
            federate(
                m, clients, rounds=4, clients_per_round=3, test=test, seed=5,
                train={"protocol": "fedavg", "batch_size": 8, "lr": 0.2, "local_epochs": 1},
            )
        )
        runs.append([h.accuracy for h in hist])
        assert all(len(h.clients) == 3 for h in hist)
    assert runs[0] == runs[1]
    assert runs[0][-1] > 0.6


def test_threat_model_views_and_refusals():
    m = _model()
    x, y = _data(n=1)
    u = fedleak.observe(m, x, y)
    assert ThreatModel("B").view(u).training is None
    assert ThreatModel("B").view(u).num_samples is None
    assert ThreatModel("C").view(u) is u
    with pytest.raises(InsufficientKnowledgeError, match="training_details"):
        ThreatModel("B").check({"architecture", "training_details"}, "attack 'x'")
    with pytest.raises(InsufficientKnowledgeError, match="level C"):
        fedleak.attack("dlg", m, u, threat=ThreatModel("B"))
    with pytest.raises(ConfigError, match="level D"):
        ThreatModel("C", prior=torch.rand(1, 8, 8))
    with pytest.raises(ConfigError):
        ThreatModel("Z")
    assert "labels" in ThreatModel("A", labels=y).knowledge


def test_update_rejects_nan_and_mismatch_and_roundtrips(tmp_path):
    m = _model()
    x, y = _data()
    u = fedleak.observe(m, x, y, protocol="fedavg", batch_size=3, lr=0.1, local_epochs=2)
    bad = dict(u.tensors)
    k0 = next(iter(bad))
    bad[k0] = bad[k0].clone()
    bad[k0].view(-1)[0] = float("nan")
    with pytest.raises(UpdateError, match="NaN"):
        u.replace(tensors=bad)
    other = _model(bn=False)
    with pytest.raises(UpdateError):
        u.check_matches(other)
    p = u.save(tmp_path / "u.pt")
    v = ClientUpdate.load(p)
    assert v.training == u.training and v.num_samples == u.num_samples
    for k in u.tensors:
        torch.testing.assert_close(v.tensors[k], u.tensors[k])
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="junk.pt"):
        ClientUpdate.load(tmp_path / "junk.pt")
    with pytest.raises(DataError, match="no such"):
        ClientUpdate.load(tmp_path / "missing.pt")


def test_bad_training_options_are_clear():
    m = _model()
    x, y = _data()
    with pytest.raises(ConfigError, match="optimizer"):
        local_update(m, x, y, protocol="fedavg", optimizer="rmsprop")
    with pytest.raises(ConfigError, match="protocol"):
        local_update(m, x, y, protocol="fedprox")
    with pytest.raises(DataError, match="labels"):
        local_update(m, x, y[:2])
