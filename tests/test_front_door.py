"""End to end through the three front-door functions: observe, attack, score."""

import pytest
import torch
from skimage import data, transform

import fedleak
from fedleak.errors import ConfigError, UnknownNameError
from fedleak.models import build_model


def _photo(size=16):
    img = transform.resize(data.chelsea(), (size, size), anti_aliasing=True)
    return torch.tensor(img, dtype=torch.float32).permute(2, 0, 1)[None]


def test_dlg_recovers_a_real_photo_from_a_sigmoid_lenet():
    x, y = _photo(16), torch.tensor([2])
    torch.manual_seed(0)
    model = build_model("lenet", input_shape=(3, 16, 16), num_classes=4)
    update = fedleak.observe(model, x, y)
    rec = fedleak.attack("dlg", model, update, iterations=400, restarts=2)
    scores = fedleak.score(rec, x, labels=y)
    assert rec.label_method == "idlg" and scores["label_accuracy"] == 1.0
    assert scores["psnr"] > 30, scores
    assert scores["psnr"] > scores["flat_psnr"] + 10
    assert rec.iterations <= 800 and len(rec.loss_history) >= 1
    assert rec.images.shape == x.shape and rec.images.min() >= 0 and rec.images.max() <= 1


def test_dlg_works_on_a_users_own_module():
    class Mine(torch.nn.Module):  # a user's model: no fedleak attributes at all
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Conv2d(3, 8, 5, stride=2, padding=2), torch.nn.Sigmoid(),
                torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 3),
            )

        def forward(self, x):
            return self.body(x)

    torch.manual_seed(0)
    model = Mine()
    x, y = _photo(16), torch.tensor([1])
    update = fedleak.observe(model, x, y)
    with pytest.raises(ConfigError, match="image_shape"):
        fedleak.attack("dlg", model, update, iterations=10)
    rec = fedleak.attack("dlg", model, update, image_shape=(3, 16, 16), iterations=300)
    assert fedleak.score(rec, x)["psnr"] > 25


def test_attack_errors_are_clear():
    model = build_model("lenet", input_shape=(3, 16, 16), num_classes=4)
    update = fedleak.observe(model, _photo(16), torch.tensor([0]))
    with pytest.raises(UnknownNameError, match="did you mean|Did you mean"):
        fedleak.attack("dgl", model, update)
    with pytest.raises(ConfigError, match="valid options"):
        fedleak.attack("dlg", model, update, iterashuns=3)
    with pytest.raises(ConfigError, match="labels"):
        fedleak.attack(
            "dlg", model, update, threat=fedleak.ThreatModel(labels=torch.tensor([0, 1]))
        )


def test_checkpoints_reach_the_callback_and_labels_can_be_granted():
    model = build_model("lenet", input_shape=(3, 16, 16), num_classes=4)
    x = _photo(16)
    update = fedleak.observe(model, x, torch.tensor([3]))
    seen = []
    rec = fedleak.attack(
        "dlg", model, update, iterations=60, restarts=1, checkpoint_every=20,
        threat=fedleak.ThreatModel(labels=torch.tensor([3])), callback=seen.append,
    )
    assert rec.label_method == "granted" and rec.labels.tolist() == [3]
    assert seen and all(c.images.shape == x.shape for c in seen)
