"""Label recovery from updates: iDLG for one image, the simulated count for batches."""

from __future__ import annotations

import pytest
import torch

from fedleak.api import observe
from fedleak.attacks.labels import count_labels, idlg_label, label_arrangements, recover_labels
from fedleak.data import load_dataset
from fedleak.errors import ConfigError
from fedleak.metrics import label_accuracy
from fedleak.models import build_model

SHAPE = (1, 8, 8)
MODELS = {
    "mlp": ("mlp", {}),
    "lenet": ("lenet", {}),
    "convnet": ("convnet", {"widths": (16, 32, 32), "pool_after": (0, 1)}),
}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", split="train")


def _model(key: str, seed: int):
    name, opts = MODELS[key]
    torch.manual_seed(seed)
    return build_model(name, input_shape=SHAPE, num_classes=10, **opts)


def _batch(ds, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(1000 + seed))[:n]
    return ds.images[idx], ds.labels[idx]


@pytest.mark.parametrize("key", list(MODELS))
@pytest.mark.parametrize(
    "train", [{}, {"protocol": "fedavg", "lr": 0.1, "local_steps": 3}], ids=["fedsgd", "fedavg"]
)
def test_idlg_recovers_every_single_label(digits, key: str, train: dict) -> None:
    for seed in range(4):
        model = _model(key, seed)
        image, label = _batch(digits, 1, seed)
        update = observe(model, image, label, **train)
        assert idlg_label(model, update).tolist() == label.tolist()
        labels, method = recover_labels(model, update, 1, SHAPE, seed=seed)
        assert method == "idlg" and labels.tolist() == label.tolist()


@pytest.mark.parametrize("key", list(MODELS))
def test_count_recovers_batches_of_eight(digits, key: str) -> None:
    accs = []
    for seed in range(4):
        model = _model(key, seed)
        images, labels = _batch(digits, 8, seed)
        pred, method = recover_labels(model, observe(model, images, labels), 8, SHAPE, seed=seed)
        assert method == "count" and pred.shape == (8,)
        accs.append(label_accuracy(pred, labels))
    assert sum(accs) / len(accs) >= 0.9


@pytest.mark.parametrize("key,lr", [("mlp", 0.1), ("lenet", 0.1), ("convnet", 0.01)])
def test_count_recovers_fedavg_batches(digits, key: str, lr: float) -> None:
    accs = []
    for seed in range(3):
        model = _model(key, seed)
        images, labels = _batch(digits, 8, seed)
        update = observe(
            model, images, labels, protocol="fedavg", lr=lr, local_steps=2, batch_size=4,
            seed=seed,
        )  # fmt: skip
        accs.append(label_accuracy(count_labels(model, update, 8, SHAPE, seed=seed), labels))
    assert sum(accs) / len(accs) >= 0.9


def test_count_uses_the_clients_batchnorm_mode(digits) -> None:
    """A BN model in train mode: probing in eval mode (the old count) is what went wrong."""
    torch.manual_seed(3)
    model = build_model("convnet", input_shape=SHAPE, num_classes=10)
    images, labels = _batch(digits, 8, 3)
    update = observe(model, images, labels)
    pred = count_labels(model, update, 8, SHAPE, seed=0)
    assert label_accuracy(pred, labels) == 1.0
    for p in model.parameters():  # a frozen model (as attacks hold it) works too
        p.requires_grad_(False)
    assert count_labels(model, update, 8, SHAPE, seed=0).tolist() == pred.tolist()


def test_count_labels_checks_its_options(digits) -> None:
    model = _model("mlp", 0)
    images, labels = _batch(digits, 4, 0)
    update = observe(model, images, labels)
    with pytest.raises(ConfigError):
        count_labels(model, update, 4, SHAPE, simulations=0)
    assert count_labels(model, update, 4, SHAPE).shape == (4,)


def test_label_arrangements_differ_in_who_shares_a_batch() -> None:
    labels = torch.tensor([0, 1, 1, 2])
    gen = torch.Generator().manual_seed(0)
    options = label_arrangements(labels, (2, 2), 10, gen)
    assert options[0].tolist() == labels.tolist()  # identity first
    keys = {tuple(sorted(y[:2].tolist())) for y in options}
    assert len(keys) == options.shape[0] == 4  # {0,1} {0,2} {1,1} {1,2} in the first batch
    for y in options:
        assert sorted(y.tolist()) == labels.tolist()
    assert label_arrangements(labels, (4,), 10, gen).shape == (1, 4)  # one batch: one spread
