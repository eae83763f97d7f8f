"""Inverting Gradients and GradInversion through the front door, on tiny CPU-sized cases.

Quality is asserted against the flat-image baseline (what a featureless blob scores), never
seconds. 16x16 grey LFW faces and a narrow ConvNet keep the whole file fast on 2 cores.
"""

from __future__ import annotations

import pytest
import torch

import fedleak
from fedleak.attacks.simulate import UpdateSimulator, gradient_distance, pseudo_gradient
from fedleak.data import load_dataset
from fedleak.errors import ConfigError, InsufficientKnowledgeError
from fedleak.fl.threat import ThreatModel
from fedleak.metrics import flat_psnr
from fedleak.models import build_model

SHAPE = (1, 16, 16)
WIDTHS = (16, 32, 32)  # 3 conv+BN blocks, one pool: small but still leaky (flatten head)


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    ds = load_dataset("lfw-faces", size=16, split="all")
    return ds.images[ds.labels == 0][:4].clone()


def _model(head: str = "flatten", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(
        "convnet", input_shape=SHAPE, num_classes=2, head=head, widths=WIDTHS, pool_after=(1,)
    )


def _labels(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.long)


def _fedsgd(model: torch.nn.Module, images: torch.Tensor) -> fedleak.ClientUpdate:
    return fedleak.observe(model, images, _labels(images.shape[0]), bn_mode="eval")


def test_registered() -> None:
    names = fedleak.available_attacks()
    assert "inverting-gradients" in names and "gradinversion" in names


def test_ig_beats_flat_baseline(faces: torch.Tensor) -> None:
    model = _model()
    x = faces[:1]
    rec = fedleak.attack("inverting-gradients", model, _fedsgd(model, x), iterations=100)
    s = fedleak.score(rec, x)
    base = float(flat_psnr(x).mean())
    assert s["psnr"] > base + 8, (s["psnr"], base)
    assert rec.labels.tolist() == [0] and rec.label_method == "idlg"
    assert rec.extras["fedavg_mode"] == "fedsgd"
    assert len(rec.loss_history) == rec.iterations == 100
    assert rec.images.shape == x.shape
    assert float(rec.images.min()) >= 0 and float(rec.images.max()) <= 1


@pytest.mark.parametrize("name", ["inverting-gradients", "gradinversion"])
def test_restarts_are_batched_and_best_wins(
    faces: torch.Tensor, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model()
    update = _fedsgd(model, faces[:1])
    shapes: list[tuple[int, ...]] = []
    original = UpdateSimulator.__call__

    def spy(self: UpdateSimulator, images: torch.Tensor, labels: torch.Tensor):  # noqa: ANN202
        shapes.append(tuple(images.shape))
        return original(self, images, labels)

    monkeypatch.setattr(UpdateSimulator, "__call__", spy)
    rec = fedleak.attack(name, model, update, iterations=12, restarts=3)
    # one vectorized simulator call per iteration carrying all restarts, never a loop over them
    # (plus the fit check's R=1 evaluation of the objective at the reconstruction)
    batched = [s for s in shapes if s[0] == 3]
    assert len(batched) == 12 and all(s[0] == 1 for s in shapes[12:]) and len(shapes) <= 13
    assert len(rec.restart_losses) == 3
    losses = torch.tensor(rec.restart_losses)
    assert rec.best_restart == int(losses.argmin())
    assert rec.loss_history and min(rec.loss_history) == pytest.approx(float(losses.min()))


@pytest.mark.parametrize("name", ["inverting-gradients", "gradinversion"])
def test_seeded_and_reproducible(faces: torch.Tensor, name: str) -> None:
    model = _model()
    update = _fedsgd(model, faces[:1])
    opts = {"iterations": 8, "restarts": 2}
    if name == "gradinversion":
        opts |= {"langevin": 0.01, "group_consistency": 0.1, "group_start": 0.5}
    a = fedleak.attack(name, model, update, seed=3, **opts)
    b = fedleak.attack(name, model, update, seed=3, **opts)
    c = fedleak.attack(name, model, update, seed=4, **opts)
    assert torch.equal(a.images, b.images)
    assert a.restart_losses == b.restart_losses
    assert not torch.equal(a.images, c.images)


@pytest.mark.parametrize("name", ["inverting-gradients", "gradinversion"])
@pytest.mark.parametrize("protocol", ["fedsgd", "fedavg"])
def test_inputs_not_mutated(faces: torch.Tensor, name: str, protocol: str) -> None:
    model = _model()
    if protocol == "fedsgd":
        update = _fedsgd(model, faces[:2])
    else:
        update = fedleak.observe(
            model, faces[:2], _labels(2), protocol="fedavg", batch_size=1, local_steps=2,
            lr=0.1, bn_mode="train",
        )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tensors = {k: v.clone() for k, v in update.tensors.items()}
    buffers = {k: v.clone() for k, v in update.buffers.items()}
    threat = ThreatModel(labels=_labels(2))
    labels = threat.labels.clone()
    fedleak.attack(name, model, update, threat=threat, iterations=3, restarts=2)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(torch.equal(v, update.tensors[k]) for k, v in tensors.items())
    assert all(torch.equal(v, update.buffers[k]) for k, v in buffers.items())
    assert torch.equal(labels, threat.labels)
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())


def test_fedavg_replay_beats_pseudo_gradient(faces: torch.Tensor) -> None:
    # 3 local SGD steps move the weights far enough that one gradient no longer describes them
    model = _model()
    x = faces[:1]
    update = fedleak.observe(
        model, x, _labels(1), protocol="fedavg", local_steps=3, lr=0.1, bn_mode="eval"
    )
    threat = ThreatModel(labels=_labels(1))
    scores = {}
    for mode in ("replay", "pseudo-gradient"):
        rec = fedleak.attack(
            "inverting-gradients", model, update, threat=threat, iterations=100, fedavg=mode
        )
        assert rec.extras["fedavg_mode"] == mode
        scores[mode] = fedleak.score(rec, x)["psnr"]
    base = float(flat_psnr(x).mean())
    assert scores["replay"] > base + 10, (scores, base)
    assert scores["replay"] > scores["pseudo-gradient"], scores


def test_fedavg_replay_is_exact_with_train_mode_bn(faces: torch.Tensor) -> None:
    """Why replay is the default: at the true images it reproduces the delta, BN batches and all."""
    model = _model()
    x, y = faces[:4], torch.tensor([0, 1, 0, 1])
    update = fedleak.observe(
        model, x, y, protocol="fedavg", batch_size=2, local_steps=2, lr=0.01, bn_mode="train",
        shuffle=False,
    )
    replay = UpdateSimulator(model, update, mode="replay", bn_mode="train")
    single = UpdateSimulator(model, update, mode="gradient", bn_mode="train")
    target = dict(update.tensors)
    d_replay = gradient_distance(replay(x[None], y[None]), target, metric="cosine")
    d_pseudo = gradient_distance(single(x[None], y[None]), pseudo_gradient(update), metric="cosine")
    assert float(d_replay) < 1e-5 < 1e-3 < float(d_pseudo)


def test_gradinversion_bn_matching_and_group_consistency(faces: torch.Tensor) -> None:
    model = _model()
    # a global model that has seen data: running statistics that describe faces
    model.train()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None  # cumulative average over the passes below
        model(load_dataset("lfw-faces", size=16, split="train").images[:64])
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 0.1
    model.eval()
    x = faces[:1]
    rec = fedleak.attack(
        # the BN term alone (gradient and TV weights 0) must pull the statistics toward the
        # running ones: this checks the hooks and that their gradient reaches the images
        "gradinversion", model, _fedsgd(model, x), iterations=60, restarts=2, grad_weight=0.0,
        tv=0.0, bn_weight=0.1, group_consistency=0.05, group_start=0.5, langevin=0.005,
    )
    assert rec.extras["bn_layers_matched"] == 3
    assert rec.extras["group_consistency"] == 0.05
    first, last = rec.extras["bn_loss_first"], rec.extras["bn_loss_last"]
    assert len(first) == len(last) == 2
    assert all(b < 0.2 * a for a, b in zip(first, last, strict=True)), (first, last)
    assert torch.isfinite(rec.images).all()
    assert float(rec.images.min()) >= 0 and float(rec.images.max()) <= 1


def test_group_consistency_pulls_restarts_together(
    faces: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedleak.attacks import gradinversion

    finals: list[torch.Tensor] = []
    original = gradinversion.optimize

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        res = original(*args, **kwargs)
        finals.append(res.best["images"])
        return res

    monkeypatch.setattr(gradinversion, "optimize", spy)
    model = _model()
    update = _fedsgd(model, faces[:1])
    for gc in (0.0, 100.0):  # as strong as the gradient term, to see the pull in 40 steps
        fedleak.attack(
            "gradinversion", model, update, iterations=40, restarts=3, group_consistency=gc,
            group_start=0.25,
        )
    spread = [float((f - f.mean(0)).abs().mean()) for f in finals]
    assert spread[1] < 0.5 * spread[0], spread


def test_gradinversion_reconstructs(faces: torch.Tensor) -> None:
    model = _model()
    x = faces[:1]
    rec = fedleak.attack("gradinversion", model, _fedsgd(model, x), iterations=100)
    base = float(flat_psnr(x).mean())
    assert fedleak.score(rec, x)["psnr"] > base + 8


def test_prior_init_needs_level_d(faces: torch.Tensor) -> None:
    model = _model()
    update = _fedsgd(model, faces[:1])
    for name in ("inverting-gradients", "gradinversion"):
        with pytest.raises(InsufficientKnowledgeError, match="surrogate_data"):
            fedleak.attack(name, model, update, iterations=2, init="prior")
    prior = faces.mean(0)
    threat = ThreatModel(level="D", prior=prior)
    rec = fedleak.attack(
        "inverting-gradients", model, update, threat=threat, iterations=1, init="prior"
    )
    assert rec.extras["init"] == "prior"
    with pytest.raises(ConfigError, match="prior"):
        fedleak.attack(
            "inverting-gradients", model, update, threat=ThreatModel(level="D"),
            iterations=1, init="prior",
        )


@pytest.mark.parametrize(
    "options",
    [
        {"nonsense": 1},
        {"fedavg": "both"},
        {"init": "zeros"},
        {"iterations": 0},
        {"restarts": 0},
        {"tv": -1.0},
        {"layer_weights": "cubic"},
        {"schedule": "linear"},
        {"layers": []},
    ],
)
@pytest.mark.parametrize("name", ["inverting-gradients", "gradinversion"])
def test_bad_options_raise_config_error(faces: torch.Tensor, name: str, options: dict) -> None:
    model = _model()
    with pytest.raises(ConfigError):
        fedleak.attack(name, model, _fedsgd(model, faces[:1]), **options)


def test_layer_selection(faces: torch.Tensor) -> None:
    model = _model()
    update = _fedsgd(model, faces[:1])
    names = list(update.tensors)
    rec = fedleak.attack(
        "inverting-gradients", model, update, iterations=2, layers=["1", -1],
        layer_weights="linear",
    )
    assert rec.extras["matched_tensors"] == 2  # conv "1.weight" and the head's bias
    assert names[-1].endswith("bias")
    with pytest.raises(ConfigError, match="matches no tensor"):
        fedleak.attack("inverting-gradients", model, update, iterations=2, layers=["nope"])
    with pytest.raises(ConfigError, match="out of range"):
        fedleak.attack("inverting-gradients", model, update, iterations=2, layers=[99])


def test_checkpoints_reach_callback(faces: torch.Tensor) -> None:
    model = _model()
    seen: list[int] = []
    fedleak.attack(
        "inverting-gradients", model, _fedsgd(model, faces[:1]), iterations=20,
        callback=lambda c: seen.append(c.iteration), checkpoint_every=5,
    )
    assert seen == [5, 10, 15, 20]
