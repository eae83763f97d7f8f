"""The front door refuses bad input in one line before any work starts."""

from __future__ import annotations

import pytest
import torch

import fedleak
from fedleak.errors import ConfigError, DataError, UpdateError


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
    images, labels = torch.rand(2, 1, 4, 4), torch.tensor([1, 2])
    return model, images, labels


def test_labels_outside_the_models_classes(setup) -> None:
    model, images, _ = setup
    with pytest.raises(DataError, match=r"class indices in \[0, 3\]"):
        fedleak.observe(model, images, torch.tensor([1, 9]), protocol="fedsgd")


def test_images_outside_unit_range(setup) -> None:
    model, images, labels = setup
    with pytest.raises(DataError, match=r"must lie in \[0, 1\]"):
        fedleak.observe(model, images * 255, labels, protocol="fedsgd")
    with pytest.raises(DataError, match=r"must lie in \[0, 1\]"):
        fedleak.observe(model, (images - 0.5) / 0.25, labels, protocol="fedsgd")


def test_wrong_image_shape_is_named(setup) -> None:
    model, images, labels = setup
    update = fedleak.observe(model, images, labels, protocol="fedsgd")
    with pytest.raises(ConfigError, match=r"`image_shape` \(C, H, W\) = \(1, 5, 5\) does not fit"):
        fedleak.attack("inverting-gradients", model, update, image_shape=(1, 5, 5), iterations=2)


def test_update_mutated_to_nan_is_refused_before_the_attack(setup) -> None:
    model, images, labels = setup
    update = fedleak.observe(model, images, labels, protocol="fedsgd")
    update.tensors["1.weight"][0, 0] = float("nan")
    calls = []
    with pytest.raises(UpdateError, match="NaN or inf"):
        fedleak.attack(
            "inverting-gradients", model, update, image_shape=(1, 4, 4), iterations=2,
            progress=lambda done, loss: calls.append(done),
        )
    assert not calls  # refused before a single iteration
