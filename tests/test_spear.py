"""SPEAR: exact batch recovery from a leading linear ReLU layer, and its refusals."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn import functional as F

from fedleak.api import attack, observe, score
from fedleak.data import load_dataset
from fedleak.errors import ConfigError
from fedleak.models import build_model

SHAPE = (1, 8, 8)


def _images(n: int, shape=SHAPE, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, shape[0], max(1, shape[1] // 2), max(1, shape[2] // 2), generator=g)
    return F.interpolate(coarse, size=shape[1:], mode="bilinear", align_corners=False)


def _mlp(seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_model("mlp", input_shape=SHAPE, num_classes=10, **kw)


@pytest.mark.parametrize("n", [2, 8])
def test_spear_recovers_a_batch_exactly(n: int) -> None:
    model = _mlp()
    images, labels = _images(n), torch.arange(n) % 10
    rec = attack("spear", model, observe(model, images, labels), truth=(images, labels))
    assert rec.labels is None and rec.images.shape == images.shape
    assert score(rec, images)["psnr"] > 60
    assert rec.extras["relu_mismatch"] == 0.0 and rec.extras["residual"] < 1e-5
    assert rec.fit is not None and rec.fit.verdict == "fits"


def test_spear_recovers_similar_faces() -> None:
    """Real faces share most inactive units: mixes of two faces' directions are nearly as
    sparse as a face's own, and only directions with maximal zero sets may be faces."""
    ds = load_dataset("lfw-faces", size=SHAPE[1], split="all")
    images, labels = ds.images[ds.labels == 0][:8].clone(), torch.arange(8)
    model = _mlp()
    rec = attack("spear", model, observe(model, images, labels))
    assert score(rec, images)["psnr"] > 60


def test_spear_separates_what_analytic_cannot() -> None:
    """At batch 8 no unit is reached by one image alone: the analytic attack refuses."""
    model = _mlp()
    images, labels = _images(8), torch.arange(8)
    update = observe(model, images, labels)
    with pytest.raises(ConfigError):
        attack("analytic", model, update)
    assert score(attack("spear", model, update), images)["psnr"] > 60


def test_spear_refuses_where_exactness_fails() -> None:
    images, labels = _images(12), torch.arange(12) % 10
    narrow = _mlp(hidden=(8,))  # batch 12 > 8 units: the gradient cannot hold the batch
    with pytest.raises(ConfigError, match="at most 8 images"):
        attack("spear", narrow, observe(narrow, images, labels))
    tanh = _mlp(activation="tanh")  # no ReLU zeros to separate the images
    with pytest.raises(ConfigError, match="needs a ReLU"):
        attack("spear", tanh, observe(tanh, images[:4], labels[:4]))
    model = _mlp()
    update = observe(model, images[:4], labels[:4])
    noisy = dataclasses.replace(
        update,
        tensors={k: v + 1e-3 * v.std() * torch.randn_like(v) for k, v in update.tensors.items()},
    )
    with pytest.raises(ConfigError, match="rank"):
        attack("spear", model, noisy)
    with pytest.raises(ConfigError, match="rank"):  # a wrong batch size is not papered over
        attack("spear", model, update, num_images=5)
    with pytest.raises(ConfigError, match="trials"):  # budget too small for batch 8
        attack("spear", model, observe(model, images[:8], labels[:8]), trials=8)
    binary = build_model("mlp", input_shape=SHAPE, num_classes=2)  # one upstream direction
    with pytest.raises(ConfigError, match="single the images out"):
        attack("spear", binary, observe(binary, images[:8], labels[:8] % 2))
    fedavg = observe(model, images[:4], labels[:4], protocol="fedavg", lr=0.1, local_steps=2)
    with pytest.raises(ConfigError, match="gradient"):
        attack("spear", model, fedavg)
