"""Granted labels are a multiset: their order would tell the attacker which images shared a batch.

The attack's input is captured by replacing Inverting Gradients' ``reconstruct`` with a spy, so
the test sees exactly what the front door hands an attack.
"""

from __future__ import annotations

import pytest
import torch

import fedleak
from fedleak.attacks.inverting import InvertingGradients
from fedleak.errors import ConfigError
from fedleak.fl.threat import ThreatModel
from fedleak.models import build_model


class _Seen(Exception):
    """Stops the attack once its inputs are recorded."""


@pytest.fixture()
def spy(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []

    def record(self, inputs):  # noqa: ANN001 - the Attack.reconstruct signature
        seen.append(inputs.labels.clone())
        raise _Seen

    monkeypatch.setattr(InvertingGradients, "reconstruct", record)
    return seen


def _labels_seen(spy: list[torch.Tensor], labels: torch.Tensor, **threat) -> list[int]:
    """The labels the attack receives when a FedAvg client (batch 2) holds ``labels``."""
    torch.manual_seed(0)
    model = build_model("lenet", input_shape=(1, 8, 8), num_classes=3)
    images = torch.rand(len(labels), 1, 8, 8, generator=torch.Generator().manual_seed(1))
    update = fedleak.observe(
        model, images, labels, protocol="fedavg", batch_size=2, lr=0.1, shuffle=False
    )
    with pytest.raises(_Seen):
        fedleak.attack(
            "inverting-gradients", model, update,
            threat=ThreatModel(labels=labels, **threat), iterations=1,
        )
    return spy[-1].tolist()


def test_permuted_labels_give_the_attacker_the_same_input(spy: list[torch.Tensor]) -> None:
    # batches {0, 1}, {0, 2} vs {2, 1}, {0, 0}: same multiset, different batch composition
    a = _labels_seen(spy, torch.tensor([0, 1, 0, 2]))
    b = _labels_seen(spy, torch.tensor([2, 1, 0, 0]))
    assert a == b == [0, 0, 1, 2]


def test_label_order_is_a_separate_grant(spy: list[torch.Tensor]) -> None:
    labels = torch.tensor([2, 1, 0, 0])
    assert _labels_seen(spy, labels, label_order=True) == [2, 1, 0, 0]
    with pytest.raises(ConfigError, match="label_order"):
        ThreatModel(label_order=True)
