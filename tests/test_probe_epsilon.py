"""The sweep's ``probe_epsilon`` is what the attacked client has spent up to and including the
probed round, composed in one Opacus accountant (issue 11, defect 7)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from opacus.accountants import RDPAccountant

from fedleak.defenses import make_training_defense
from fedleak.fl import ClientData, federate
from fedleak.models import build_model
from fedleak.sweep.cell import _victim_update

SIGMA, DELTA = 0.8, 1e-5


def test_probe_epsilon_composes_the_earlier_rounds_and_the_probe():
    torch.manual_seed(0)
    defense = make_training_defense("dp-sgd", noise_multiplier=SIGMA, delta=DELTA)
    model = defense.prepare_model(
        build_model("convnet", input_shape=(1, 8, 8), num_classes=3, widths=(4,), pool_after=(0,))
    )
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
    other = ClientData(x[:8], y[:8])
    train = {"protocol": "fedavg", "local_epochs": 1, "batch_size": 4, "lr": 0.05,
             "optimizer": "sgd"}
    # two rounds: client 0 (16 images, batch 4: q = 1/4, 4 steps) trains in both
    list(federate(model, [ClientData(x, y), other], rounds=2, train=train, trainer=defense))
    before = copy.deepcopy(defense.ledgers["0"].accountant.history)
    # the probe at round 3: 8 images, batch 4 (q = 1/2), 2 local epochs -> 4 steps
    attack = SimpleNamespace(num_images=8, batch_size=4, lr=None, optimizer=None,
                             local_epochs=2, round=3)
    out = _victim_update(SimpleNamespace(attack=attack), SimpleNamespace(seed=0), defense, None,
                         model, [ClientData(x, y), other], train)
    assert defense.ledgers["0"].accountant.history == before  # the federation is untouched

    hand = RDPAccountant()
    for _ in range(2 * 4):
        hand.step(noise_multiplier=SIGMA, sample_rate=4 / 16)
    for _ in range(2 * 2):
        hand.step(noise_multiplier=SIGMA, sample_rate=4 / 8)
    want = hand.get_epsilon(delta=DELTA)
    assert out["dp"]["epsilon"] == pytest.approx(want, rel=1e-9)

    probe_alone = RDPAccountant()
    for _ in range(4):
        probe_alone.step(noise_multiplier=SIGMA, sample_rate=4 / 8)
    assert want > 1.2 * probe_alone.get_epsilon(delta=DELTA)  # the earlier rounds count
