"""A Flower app written without fedleak, audited by following docs/flower.md literally.

The app (``tests/flower_user_app/my_app/task.py``): a model that expects normalized input, a
loader that normalizes, a server that sends only ``lr``, a client that trains 2 local steps with
momentum 0.9. The docs' server and client files run unchanged on the Simulation Engine; without
the statements the docs ask for, every assumption is a warning in Flower's log.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from pathlib import Path

import pytest
import torch

flwr = pytest.importorskip("flwr")

from flwr.app import (  # noqa: E402
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from fedleak.audit import SelfCheck  # noqa: E402
from fedleak.audit.config import AuditSchedule  # noqa: E402
from fedleak.integrations.flower import AuditStrategy, LeakageCheckMod  # noqa: E402
from fedleak.report import read_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP_DIR = Path(__file__).resolve().parent / "flower_user_app"
sys.path.insert(0, str(APP_DIR))

from my_app.task import Net, load_data, load_pixels, train_local  # noqa: E402


def doc_block(name: str) -> str:
    """The python block after ``<!-- fedleak-doc-test: NAME -->`` in docs/flower.md."""
    text = (ROOT / "docs" / "flower.md").read_text()
    m = re.search(rf"<!-- fedleak-doc-test: {re.escape(name)} -->\n```python\n(.*?)```", text,
                  re.S)
    assert m, f"docs/flower.md lost its {name} block"
    return m.group(1)


@pytest.fixture
def task_identity():
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


class FakeGrid:
    def get_node_ids(self):
        return [11, 12]


def context(pid: int) -> Context:
    return Context(run_id=1, node_id=5, node_config={"partition-id": pid}, state=RecordDict(),
                   run_config={})


def user_train(msg: Message, ctx: Context) -> Message:
    """The app's own train function (the one of the docs' client file)."""
    from flwr.app import MetricRecord

    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    images, labels = load_data(ctx.node_config["partition-id"])
    loss = train_local(model, images, labels, lr=msg.content["config"]["lr"])
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(images)})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}),
                   reply_to=msg)


def test_stock_app_assumptions_and_failures_are_loud(task_identity, tmp_path, caplog):
    """No client_training, no input_transform: the audit says what it assumed, in Flower's log."""
    torch.manual_seed(0)
    strategy = AuditStrategy(model_fn=Net, image_shape=(1, 8, 8), out=tmp_path,
                             schedule=AuditSchedule(options={"iterations": 5}))
    glob = ArrayRecord(Net().state_dict())
    messages = list(strategy.configure_train(1, glob, ConfigRecord({"lr": 0.05}), FakeGrid()))
    ok = user_train(messages[0], context(0))
    failed = Message(Error(code=0, reason="CUDA out of memory"), reply_to=messages[1])
    with caplog.at_level(logging.WARNING, logger="flwr"):
        arrays, _ = strategy.aggregate_train(1, [ok, failed])
    log = caplog.text
    assert "assumed what the server does not know" in log and "protocol" in log
    assert "normalization" in log  # the model does not normalize, no transform stated
    assert "CUDA out of memory" in log and strategy.failures[0]["reason"] == "CUDA out of memory"
    (rec,) = strategy.records
    assert "protocol" in rec["assumed"] and rec["local_steps"] == 1  # the assumption, recorded
    assert any(f["check"] == "normalization" for f in rec["preflight"])
    assert arrays is not None
    # a round where every client fails: the global model stays unchanged, said at ERROR level
    messages = list(strategy.configure_train(2, glob, ConfigRecord({"lr": 0.05}), FakeGrid()))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flwr"):
        strategy.aggregate_train(2, [Message(Error(code=0, reason="boom"), reply_to=m)
                                     for m in messages])
        strategy.summary()
    assert any(r.levelno == logging.ERROR and "unchanged" in r.getMessage()
               for r in caplog.records)
    assert "3 client failure(s)" in caplog.text


def test_client_mod_refuses_normalized_images_with_the_fix(task_identity):
    mod = LeakageCheckMod(model_fn=lambda c: Net(), data_fn=lambda c: load_data(0),
                          image_shape=(1, 8, 8),
                          check=SelfCheck(rdlv_threshold=None, ssim_threshold=0.9,
                                          options={"iterations": 2}))
    glob = ArrayRecord(Net().state_dict())
    msg = Message(RecordDict({"arrays": glob, "config": ConfigRecord({"lr": 0.05,
                                                                     "server-round": 1})}),
                  dst_node_id=1, message_type="train")
    out = mod(msg, context(0), user_train)
    assert out.has_error() and "input_transform" in out.error.reason


@pytest.mark.slow
def test_docs_app_runs_as_printed_on_the_simulation_engine(tmp_path, monkeypatch, caplog):
    from flwr.simulation import run_simulation

    from fedleak.integrations.flower import backend_config
    from fedleak.integrations.flower.strategy import AuditStrategy as Strategy

    for name in ("server_app.py", "client_app.py"):  # the docs' files, unchanged
        (tmp_path / f"docs_{name}").write_text(doc_block(name))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(APP_DIR), str(tmp_path),
                                                      os.environ.get("PYTHONPATH", "")]))
    monkeypatch.chdir(tmp_path)  # the relative out= of the docs lands here
    aggregated: list = []
    original = Strategy.aggregate_train

    def spy(self, server_round, replies):
        result = original(self, server_round, replies)
        aggregated.append(result[1])
        return result

    monkeypatch.setattr(Strategy, "aggregate_train", spy)
    import docs_client_app
    import docs_server_app

    with caplog.at_level(logging.WARNING, logger="flwr"):
        run_simulation(server_app=docs_server_app.app, client_app=docs_client_app.app,
                       num_supernodes=2, backend_config=backend_config(2))
    (run,) = (tmp_path / "fedleak-runs").glob("run-*")  # one folder for this run
    leak = read_jsonl(run / "leakage.jsonl")
    assert sorted((r["round"], r["client"]) for r in leak) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    for r in leak:  # everything stated: nothing assumed, the update fits the training
        assert r["assumed"] == [] and r["local_steps"] == 2 and r["batch_size"] == 4
        assert not [f for f in r["preflight"] if f["level"] == "error"], r["preflight"]
        assert math.isfinite(r["attack_loss"])
    checks = read_jsonl(run / "selfcheck.jsonl")
    assert len(checks) == 4 and all(math.isfinite(c["psnr"]) for c in checks)
    for metrics in aggregated:  # the app's aggregates hold its metrics, not fedleak's
        assert metrics is not None and "train_loss" in metrics
        assert not [k for k in metrics if k.startswith("fedleak.")]
    assert "assumed what the server does not know" not in caplog.text
    pixels, _ = load_pixels(0)
    assert float(pixels.min()) >= 0 and float(pixels.max()) <= 1
