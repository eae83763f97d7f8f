"""Issue 16 (GAP rows): Inverting Gradients' feature_match, tv_decay, warmup and "norm" weights.

Tiny problems (ConvNet widths 8-16 on one 16x16 lfw face, FedSGD, labels granted, 200
iterations, CPU): the feature term must raise the PSNR clearly over the same run without it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fedleak
from fedleak.attacks.features import FeatureDistance, final_linear
from fedleak.attacks.inverting import InvertingGradients, norm_weights
from fedleak.data import load_dataset
from fedleak.errors import ConfigError
from fedleak.fl import ThreatModel
from fedleak.models import build_model


def _problem(head: str, n: int = 1) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model("convnet", input_shape=(1, 16, 16), num_classes=2, head=head,
                        widths=(8, 16), pool_after=(1,))
    faces = load_dataset("lfw-faces", size=16, split="all")
    x = faces.images[faces.labels == 0][:n].clone()
    return model, x, torch.zeros(n, dtype=torch.long)


def _psnr(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **opts: object) -> float:
    update = fedleak.observe(model, x, y, bn_mode="eval")
    rec = fedleak.attack("inverting-gradients", model, update, threat=ThreatModel(labels=y),
                         iterations=200, **opts)
    return fedleak.score(rec, x)["psnr"]


@pytest.mark.parametrize("head", ["gap", "flatten"])
def test_feature_rows_are_the_last_linear_input_at_batch_one(head: str) -> None:
    model, x, y = _problem(head)
    update = fedleak.observe(model, x, y, bn_mode="eval")
    w, b = final_linear(model, list(update.tensors), "test")
    dist = FeatureDistance(update.tensors[w], update.tensors[b])
    model.eval()
    with torch.no_grad():
        phi = nn.Sequential(*list(model)[:-1])(x)  # the last Linear's input
    assert torch.allclose(dist.target, phi.expand_as(dist.target), atol=1e-6, rtol=1e-4)
    truth = dist(update.tensors[w][None], update.tensors[b][None])
    other = fedleak.observe(model, x.flip(-1), y, bn_mode="eval")
    assert float(truth) < 1e-8
    assert float(dist(other.tensors[w][None], other.tensors[b][None])) > 1e-3


def test_feature_match_raises_quality_on_a_tiny_flatten_head() -> None:
    model, x, y = _problem("flatten")
    plain = _psnr(model, x, y)
    matched = _psnr(model, x, y, feature_match=1.0)
    assert matched >= 28.0, (plain, matched)  # measured 30.8 (without: 23.2)
    assert matched >= plain + 4.0, (plain, matched)


def test_feature_match_refuses_models_without_a_final_linear_bias() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2, bias=False))
    x, y = torch.rand(1, 1, 4, 4), torch.zeros(1, dtype=torch.long)
    update = fedleak.observe(model, x, y)
    with pytest.raises(ConfigError, match="last layer is a Linear with bias"):
        fedleak.attack("inverting-gradients", model, update, threat=ThreatModel(labels=y),
                       image_shape=(1, 4, 4), iterations=2, feature_match=1.0)
    model, x, y = _problem("gap")
    update = fedleak.observe(model, x, y, bn_mode="eval")
    with pytest.raises(ConfigError, match="among the matched tensors"):
        fedleak.attack("inverting-gradients", model, update, threat=ThreatModel(labels=y),
                       iterations=2, feature_match=1.0, layers=[0, 1])


@pytest.mark.parametrize("opts", [
    {"feature_match": -1.0}, {"feature_match": True}, {"feature_metric": "l1"},
    {"tv_decay": 2.0}, {"warmup": 1000}, {"warmup": -1}, {"layer_weights": "flat"},
    {"tv": "auto", "feature_match": 1.0}, {"tv": "auto", "tv_decay": 0.0},
])
def test_new_options_are_checked(opts: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        InvertingGradients(**opts)


def test_norm_weights_give_every_tensor_unit_norm() -> None:
    target = {"a": torch.full((4,), 2.0), "b": torch.full((2,), 0.1), "c": torch.zeros(3)}
    w = norm_weights(target)
    for k in ("a", "b"):
        assert float((target[k] * w[k] ** 0.5).norm()) == pytest.approx(1.0)
    assert w["c"] == 1.0


def test_tv_decay_and_warmup_change_the_run() -> None:
    model, x, y = _problem("gap")
    base = _psnr(model, x, y)
    assert _psnr(model, x, y, tv_decay=0.0) != base
    assert _psnr(model, x, y, warmup=20) != base


def test_fit_check_judges_the_objective_the_decayed_run_ended_on() -> None:
    """With tv_decay=0 the run ends on the matching term alone; the fit check must too (with
    the full TV a smooth result would look fitted against the truth's larger TV)."""
    model, x, y = _problem("gap")
    update = fedleak.observe(model, x, y, bn_mode="eval")
    rec = fedleak.attack("inverting-gradients", model, update, threat=ThreatModel(labels=y),
                         iterations=16, tv=0.5, tv_decay=0.0, truth=(x, y))
    assert rec.fit.attack_objective == pytest.approx(rec.restart_losses[rec.best_restart],
                                                     rel=1e-4, abs=1e-7)
    assert rec.fit.attack_objective == pytest.approx(rec.fit.attack_residual, rel=1e-6)
    assert rec.fit.truth_objective == pytest.approx(0.0, abs=1e-6)  # matching alone, no TV


def test_latent_variant_refuses_the_new_options_it_does_not_run() -> None:
    from fedleak.attacks.latent_noise import LatentInvertingGradients as cls

    with pytest.raises(ConfigError, match="need latent='mean'"):
        cls(latent="sample", feature_match=1.0)
    cls(latent="mean", feature_match=1.0)  # runs InvertingGradients' loop: accepted
