"""The Gaussian update filter's percentile covers the BatchNorm buffer changes (NVFlare's
GaussianPrivacy on the whole state-dict delta) in every engine: in-process federation (audit),
the sweep's probe and the Flower client mod (issue 11, defect 6)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fedleak.defenses import compose, make_filter, make_training_defense
from fedleak.defenses.filters import GaussianFilter, PruneFilter
from fedleak.fl import ClientData, bn_buffers, federate, local_update
from fedleak.fl.update import ClientUpdate
from fedleak.models import build_model

SIGMA0 = 0.5


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(
        "convnet", input_shape=(1, 8, 8), num_classes=3, widths=(4, 6), pool_after=(0,),
        batch_norm=True,
    )


def _data(n: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, 8, 8), generator=g), torch.randint(0, 3, (n,), generator=g)


def _hand_sigma(update: ClientUpdate, reference: torch.nn.Module) -> float:
    """sigma0 x the 95th percentile (NumPy's) of every non-zero |delta| entry, all keys."""
    ref = {k: v.detach().double().numpy() for k, v in reference.state_dict().items()}
    parts = [t.detach().double().numpy().ravel() for t in update.tensors.values()]
    parts += [b.detach().double().numpy().ravel() - ref[k].ravel()
              for k, b in update.buffers.items()]
    vals = np.abs(np.concatenate(parts))
    return SIGMA0 * float(np.percentile(vals[vals > 0], 95))


def _tensors_only_sigma(update: ClientUpdate) -> float:
    vals = np.abs(np.concatenate([t.double().numpy().ravel() for t in update.tensors.values()]))
    return SIGMA0 * float(np.percentile(vals[vals > 0], 95))


@pytest.fixture
def spy(monkeypatch):
    """Records (update, sigma) of every GaussianFilter call."""
    seen: list[tuple[ClientUpdate, float]] = []
    original = GaussianFilter.__call__

    def call(self, update, *, generator=None):
        seen.append((update, self.noise_std(update)))
        return original(self, update, generator=generator)

    monkeypatch.setattr(GaussianFilter, "__call__", call)
    return seen


def test_with_reference_binds_through_compose_and_covers_every_key():
    from fedleak.defenses.filters import with_reference

    model = _model()
    x, y = _data()
    u = local_update(model, x, y, protocol="fedavg", local_steps=2, batch_size=2, lr=1e-3)
    assert "0.bn.num_batches_tracked" in u.buffers or any("num_batches" in k for k in u.buffers)
    chain = compose([make_filter("gaussian", sigma0=SIGMA0), PruneFilter(keep=0.5)])
    bound = with_reference(chain, model)
    assert bound.filters[0].reference_buffers is not None and bound.filters[1] is chain.filters[1]
    sigma = bound.filters[0].noise_std(u)
    assert sigma == pytest.approx(_hand_sigma(u, model), rel=1e-9)
    # the buffer changes matter here: without them the scale is different
    assert abs(sigma - _tensors_only_sigma(u)) > 0.05 * sigma
    assert with_reference(None, model) is None
    assert with_reference(GaussianFilter(include_buffers=False), model).reference_buffers is None
    assert with_reference(make_filter("gaussian"), bn_buffers(model)).reference_buffers is not None


def test_federation_engine_uses_the_buffer_changes(spy):
    model = _model()
    start = copy.deepcopy(model)
    x, y = _data()
    train = {"protocol": "fedavg", "local_steps": 2, "batch_size": 2, "lr": 1e-3}
    list(federate(model, [ClientData(x, y)], rounds=1, train=train,
                  filters=make_filter("gaussian", sigma0=SIGMA0)))
    (update, sigma), = spy
    assert sigma == pytest.approx(_hand_sigma(update, start), rel=1e-9)
    assert abs(sigma - _tensors_only_sigma(update)) > 0.05 * sigma


def test_sweep_probe_uses_the_buffer_changes(spy):
    from fedleak.sweep.cell import _victim_update

    model = _model()
    x, y = _data(8)
    attack = SimpleNamespace(num_images=4, batch_size=2, lr=1e-3, optimizer="sgd",
                             local_epochs=1, round=1)
    out = _victim_update(
        SimpleNamespace(attack=attack), SimpleNamespace(seed=0), make_training_defense("none"),
        make_filter("gaussian", sigma0=SIGMA0), model, [ClientData(x, y)],
        {"protocol": "fedavg", "lr": 1e-3, "optimizer": "sgd"},
    )
    (update, sigma), = spy
    assert sigma == pytest.approx(_hand_sigma(update, model), rel=1e-9)
    assert abs(sigma - _tensors_only_sigma(update)) > 0.05 * sigma
    assert set(out["update"].buffers) == set(update.buffers)


def test_flower_mod_uses_the_buffer_changes(spy):
    pytest.importorskip("flwr")
    from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    import fedleak
    from fedleak.integrations.flower import (
        LeakageCheckMod,
        to_arrays,
        train_config_record,
        train_options,
    )
    from fedleak.integrations.flower.records import arrays_from_state

    model = _model()
    x, y = _data()
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        msg = Message(
            RecordDict({
                "arrays": arrays_from_state(model.state_dict()),
                "config": ConfigRecord({
                    **train_config_record(
                        {"protocol": "fedavg", "lr": 1e-3, "batch_size": 2, "local_steps": 2,
                         "local_epochs": None}
                    ),
                    "server-round": 1,
                }),
            }),
            dst_node_id=5, message_type=MessageType.TRAIN,
        )

        def train(m, context):
            u = fedleak.observe(model, x, y, **train_options(m.content["config"]))
            content = RecordDict({
                "arrays": to_arrays(u, base=m.content["arrays"]),
                "metrics": MetricRecord({"num-examples": len(x)}),
            })
            return Message(content, reply_to=m)

        ctx = Context(run_id=1, node_id=5, node_config={"partition-id": 0}, state=RecordDict(),
                      run_config={})
        mod = LeakageCheckMod(lambda c: _model(), filters=make_filter("gaussian", sigma0=SIGMA0))
        reply = mod(msg, ctx, train)
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
    assert not reply.has_error()
    (update, sigma), = spy
    assert sigma == pytest.approx(_hand_sigma(update, model), rel=1e-6)
    assert abs(sigma - _tensors_only_sigma(update)) > 0.05 * sigma
