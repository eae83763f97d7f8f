"""The Flower integration: records, the client mod, the audit strategy, simulation, deployment.

Needs ``fedleak[flower]`` (flwr[simulation] 1.41); skipped without it. The simulation tests
start Ray (one CPU per client, a 100 MiB object store); the deployment test starts one
SuperLink and two SuperNodes on loopback ports and stops every process it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

flwr = pytest.importorskip("flwr")

from flwr.app import (  # noqa: E402
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp.mod import LocalDpMod, fixedclipping_mod  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

import fedleak  # noqa: E402
from fedleak.audit import SelfCheck, load_config, run_audit  # noqa: E402
from fedleak.audit.config import AuditSchedule  # noqa: E402
from fedleak.defenses import make_filter  # noqa: E402
from fedleak.errors import ConfigError, UpdateError  # noqa: E402
from fedleak.integrations.flower import (  # noqa: E402
    CLIENT_KEY,
    SELFCHECK_KEY,
    WITHHELD_KEY,
    AuditStrategy,
    LeakageCheckMod,
    derive_training,
    from_arrays,
    run_flower_audit,
    to_arrays,
    train_config_record,
    train_options,
    update_meta,
)
from fedleak.integrations.flower.records import arrays_from_state, state_from_arrays  # noqa: E402
from fedleak.models import build_model  # noqa: E402
from fedleak.report import read_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "flower"

# One tiny federation for every engine: client 0 (1 image) passes its self-check, client 1
# (4 images) leaks (SSIM above 0.03) and withholds its update in both rounds.
SMALL = {
    "seed": 0,
    "data": {"name": "lfw-faces", "size": 16},
    "model": {"name": "convnet", "options": {"widths": [4, 8], "pool_after": [0]}},
    "federation": {
        "rounds": 2,
        "clients": [{"images": 1, "batch_size": 1}, {"images": 4, "batch_size": 2}],
        "train": {"protocol": "fedavg", "lr": 0.05, "local_epochs": 1, "bn_mode": "train"},
    },
    "filters": [{"name": "gaussian", "options": {"sigma0": 0.05}}],
    "audit": {"clients": "all", "options": {"iterations": 4}},
    "selfcheck": {
        "enabled": True,
        "rdlv_threshold": None,
        "ssim_threshold": 0.03,
        "options": {"iterations": 4},
    },
}


def small_config(tmp: Path):
    path = tmp / "audit.json.yaml"
    path.write_text(json.dumps(SMALL))  # JSON is YAML
    return load_config(path), path


@pytest.fixture
def task_identity():
    """Messages built outside a Flower run need a task identity (as a ServerApp has)."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def tiny_model():
    torch.manual_seed(0)
    return build_model(
        "convnet", input_shape=(1, 8, 8), num_classes=2, widths=[2, 4], pool_after=[0]
    )


def tiny_data(n=3):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=g), torch.tensor([0, 1, 1, 0][:n])


# --- records ------------------------------------------------------------------------------------
def test_records_round_trip_and_training_derivation(one_thread):
    model = tiny_model()
    images, labels = tiny_data()
    glob = arrays_from_state(model.state_dict())
    opts = {"protocol": "fedavg", "lr": 0.1, "local_epochs": 2, "batch_size": 2}
    update = fedleak.observe(model, images, labels, **opts)

    local = to_arrays(update, base=glob)
    assert list(local.keys()) == list(glob.keys())
    back = from_arrays(local, base=glob, params=model, training=update.training, num_samples=3)
    assert back.kind == "delta" and set(back.tensors) == set(update.tensors)
    for k, t in update.tensors.items():
        assert torch.allclose(back.tensors[k], t, atol=1e-6)
    assert set(back.buffers) == set(update.buffers)  # BatchNorm buffers, not Normalize's
    for k, b in update.buffers.items():
        assert torch.equal(back.buffers[k], b)

    raw = from_arrays(to_arrays(update), meta=update_meta(update))  # without base: exact
    assert raw.training == update.training and raw.num_samples == 3
    assert all(torch.equal(raw.tensors[k], t) for k, t in update.tensors.items())

    grad = fedleak.observe(model, images, labels, lr=0.5)  # FedSGD: base - lr * gradient
    g_back = from_arrays(
        to_arrays(grad, base=glob),
        base=glob,
        params=model,
        kind="gradient",
        training=grad.training,
    )
    for k, t in grad.tensors.items():
        assert torch.allclose(g_back.tensors[k], t, atol=1e-5)

    # the server derives from the config it sent exactly what the client reports
    for o in (
        opts,
        {**opts, "local_epochs": None, "local_steps": 3},
        {"lr": 0.5},
        {"protocol": "fedavg", "lr": 0.1, "optimizer": "adam", "betas": (0.8, 0.9)},
    ):
        sent = train_config_record(o)
        client = fedleak.observe(model, images, labels, **train_options(sent))
        assert derive_training(train_options(sent), 3, model) == client.training

    with pytest.raises(ConfigError, match="not a training option"):
        train_config_record({"epochs": 1})
    with pytest.raises(UpdateError, match="global arrays lack"):
        to_arrays(update.replace(tensors={"nope": torch.zeros(1)}), base=glob)


# --- the client mod -----------------------------------------------------------------------------
def train_message(model, round=1, **extra):
    content = RecordDict(
        {
            "arrays": arrays_from_state(model.state_dict()),
            "config": ConfigRecord(
                {
                    **train_config_record({"protocol": "fedavg", "lr": 0.1, "batch_size": 2}),
                    "server-round": round,
                    **extra,
                }
            ),
        }
    )
    return Message(content, dst_node_id=5, message_type=MessageType.TRAIN)


def client_fn(model, images, labels):
    """A ClientApp train function: local training, reply with the local model."""

    def train(msg, context):
        base = msg.content["arrays"]
        u = fedleak.observe(model, images, labels, **train_options(msg.content["config"]))
        content = RecordDict(
            {
                "arrays": to_arrays(u, base=base),
                "metrics": MetricRecord({"num-examples": len(images)}),
            }
        )
        return Message(content, reply_to=msg)

    return train


def context(pid=1):
    return Context(
        run_id=1, node_id=5, node_config={"partition-id": pid}, state=RecordDict(), run_config={}
    )


def check(threshold, action="withhold"):
    return SelfCheck(
        options={"iterations": 1}, rdlv_threshold=None, ssim_threshold=threshold, action=action
    )


def test_mod_filters_checks_withholds_and_reports(task_identity, one_thread):
    model = tiny_model()
    images, labels = tiny_data()
    train = client_fn(model, images, labels)
    base = arrays_from_state(model.state_dict())

    def mod(**kw):
        return LeakageCheckMod(lambda c: tiny_model(), lambda c: (images, labels), **kw)

    plain = train(train_message(model), context())
    sent = mod(check=check(1.0))(train_message(model), context(), train)  # passes the check
    assert not sent.has_error()
    metrics = sent.content["metrics"]
    assert metrics[WITHHELD_KEY] == 0 and metrics[CLIENT_KEY] == 1 and "fedleak.ssim" in metrics
    for k in base:  # no filter, not withheld: the arrays leave untouched
        assert (sent.content["arrays"][k].numpy() == plain.content["arrays"][k].numpy()).all()
    record = json.loads(sent.content[SELFCHECK_KEY]["record"])
    assert record["round"] == 1 and record["client"] == 1 and record["withheld"] is False

    held = mod(check=check(-1.0))(train_message(model), context(), train)  # always leaks
    assert not held.has_error() and not held.content.array_records
    assert held.content["metrics"][WITHHELD_KEY] == 1
    assert json.loads(held.content[SELFCHECK_KEY]["record"])["action"] == "withhold"

    zero = mod(check=check(-1.0, "empty"))(train_message(model), context(), train)
    for k in base:  # a zero update sends the global model back
        assert (zero.content["arrays"][k].numpy() == base[k].numpy()).all()

    seen = []
    prune = make_filter("prune", keep=0.5)
    pruned = mod(filters=lambda u, generator=None: seen.append(u) or prune(u))(
        train_message(model), context(), train
    )
    update = from_arrays(pruned.content["arrays"], base=base, params=model, kind="delta")
    expected = prune(seen[0])
    for k, t in expected.tensors.items():
        assert torch.allclose(update.tensors[k], t, atol=1e-6)

    no_arrays = Message(
        RecordDict({"config": ConfigRecord({"server-round": 1})}),
        dst_node_id=5,
        message_type=MessageType.TRAIN,
    )
    bad = mod()(no_arrays, context(), train)
    assert bad.has_error() and "exactly one ArrayRecord" in bad.error.reason
    query = Message(RecordDict(), dst_node_id=5, message_type=MessageType.QUERY)
    passed = mod()(query, context(), lambda m, c: "untouched")
    assert passed == "untouched"
    with pytest.raises(ConfigError, match="data_fn"):
        LeakageCheckMod(lambda c: tiny_model(), check=check(0.5))


def test_mod_order_with_flower_dp_mods(task_identity, one_thread):
    """fedleak's mod first (outermost) sees the clipped/noised update and may withhold it;
    after Flower's DP mods, a withheld (empty) reply is an error for them."""
    model = tiny_model()
    images, labels = tiny_data()
    train = client_fn(model, images, labels)
    seen = []

    def spy(u, generator=None):
        seen.append(u)
        return u

    fedleak_mod = LeakageCheckMod(
        lambda c: tiny_model(), lambda c: (images, labels), filters=spy, check=check(-1.0)
    )

    def chain(*mods):  # Flower's composition: mods=[a, b] runs a(b(train))
        fn = train
        for m in reversed(mods):
            fn = (lambda m_, f_: lambda msg, ctx: m_(msg, ctx, f_))(m, fn)
        return fn

    clip = 1e-3
    msg = train_message(model, clipping_norm=clip)
    out = chain(fedleak_mod, fixedclipping_mod)(msg, context())
    assert not out.has_error() and out.content["metrics"][WITHHELD_KEY] == 1
    norm = torch.sqrt(sum((t.double() ** 2).sum() for t in seen[0].tensors.values()))
    assert norm <= clip * 1.001  # the check judged the clipped update (params clipped in Flower)

    dp = LocalDpMod(clipping_norm=1.0, sensitivity=1.0, epsilon=1.0, delta=1e-5)
    out = chain(fedleak_mod, dp)(train_message(model), context())
    assert not out.has_error() and not out.content.array_records  # withheld after DP: fine
    reverse = chain(dp, fedleak_mod)(train_message(model), context())
    assert reverse.has_error() and "ArrayRecord" in reverse.error.reason
    zero = LeakageCheckMod(
        lambda c: tiny_model(), lambda c: (images, labels), check=check(-1.0, "empty")
    )
    try:  # a zero update inside LocalDpMod: Flower 1.41 divides by its norm (0)
        failed = chain(dp, zero)(train_message(model), context()).has_error()
    except ZeroDivisionError:
        failed = True
    assert failed
    first = chain(zero, dp)(train_message(model), context())  # fedleak first: no problem
    assert not first.has_error() and first.content["metrics"][WITHHELD_KEY] == 1


# --- the audit strategy without a simulation ----------------------------------------------------
class FakeGrid:
    def get_node_ids(self):
        return [11, 12]


def test_audit_strategy_attack_side_records_and_drops_withheld(task_identity, tmp_path, one_thread):
    model = tiny_model()
    images, labels = tiny_data()
    strategy = AuditStrategy(
        model_fn=tiny_model,
        schedule=AuditSchedule(options={"iterations": 2}),
        out=tmp_path,
    )
    glob = arrays_from_state(model.state_dict())
    config = train_config_record({"protocol": "fedavg", "lr": 0.1, "batch_size": 2})
    messages = list(strategy.configure_train(1, glob, config, FakeGrid()))
    assert len(messages) == 2 and messages[0].content["config"]["server-round"] == 1
    train = client_fn(model, images, labels)
    kept = train(messages[0], context(0))
    kept.content["metrics"][CLIENT_KEY] = 0
    withheld = Message(
        RecordDict({"metrics": MetricRecord({"num-examples": 3, CLIENT_KEY: 1, WITHHELD_KEY: 1})}),
        reply_to=messages[1],
    )
    arrays, _ = strategy.aggregate_train(1, [kept, withheld])
    (rec,) = strategy.records
    assert rec["client"] == 0 and rec["psnr"] is None and rec["attack_loss"] > 0
    assert len(rec["recovered_labels"]) == 3 and (tmp_path / rec["grid"]).is_file()
    assert strategy.rounds[1] == {"clients": [0, 1], "withheld": [1]}
    mine = state_from_arrays(kept.content["arrays"])
    agg = state_from_arrays(arrays)
    for k, v in mine.items():  # FedAvg of the one kept reply is that reply, dtypes kept
        assert agg[k].dtype == v.dtype and torch.allclose(agg[k].to(v.dtype), v)
    assert read_jsonl(tmp_path / "leakage.jsonl")[0]["client"] == 0


# --- Flower's Simulation Engine (Ray) -----------------------------------------------------------
@pytest.fixture(scope="module")
def flower_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flower")
    cfg, _ = small_config(tmp)
    summary = run_flower_audit(cfg, tmp / "run", log=lambda m: None, num_cpus=2)
    return cfg, tmp / "run", summary


@pytest.mark.slow
def test_flower_simulation_audits_each_client_and_withholds(flower_run):
    cfg, out, summary = flower_run  # its time is printed by benchmarks, never asserted
    for name in (
        "config.json",
        "rounds.jsonl",
        "leakage.jsonl",
        "leakage.csv",
        "selfcheck.jsonl",
        "state.pt",
        "summary.json",
    ):
        assert (out / name).is_file(), name
    rounds = read_jsonl(out / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["clients"] == [0, 1] and r["withheld"] == [1] for r in rounds)
    checks = read_jsonl(out / "selfcheck.jsonl")
    assert [(c["round"], c["client"]) for c in checks] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    for c in checks:
        assert c["withheld"] == (c["ssim"] > 0.03)
    leak = read_jsonl(out / "leakage.jsonl")  # a withheld update never reaches the audit
    assert [(r["round"], r["client"]) for r in leak] == [(1, 0), (2, 0)]
    for r in leak:
        assert r["psnr"] is not None and r["label_accuracy"] is not None
        assert r["num_images"] == 1 and r["filters"] == "gaussian"
        assert (out / r["grid"]).is_file()
    assert summary["withheld"] == 2 and summary["audited_updates"] == 2


@pytest.mark.slow
def test_flower_engine_matches_in_process_engine(flower_run, tmp_path, one_thread):
    cfg, out, _ = flower_run
    run_audit(cfg, tmp_path / "inproc")
    for name in ("rounds.jsonl", "leakage.jsonl", "selfcheck.jsonl"):
        mine, ref = read_jsonl(out / name), read_jsonl(tmp_path / "inproc" / name)
        assert len(mine) == len(ref), name
        for a, b in zip(mine, ref, strict=True):
            assert (a["round"], a.get("client")) == (b["round"], b.get("client"))
            for key in ("accuracy", "psnr", "ssim", "mse", "rdlv", "label_accuracy", "attack_loss"):
                if key in b and b[key] is not None:
                    assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-4), (name, key)
            for key in ("clients", "withheld", "num_images", "local_steps", "batch_size"):
                if key in b:
                    assert a[key] == b[key], (name, key)
    final_f = torch.load(out / "state.pt", weights_only=True)["model"]
    final_i = torch.load(tmp_path / "inproc" / "state.pt", weights_only=True)["model"]
    for k, v in final_i.items():  # same aggregation: the same global model
        assert torch.allclose(final_f[k].to(v.dtype), v, atol=1e-5), k


@pytest.mark.slow
def test_flower_audit_resumes_where_it_stopped(flower_run, tmp_path, monkeypatch):
    cfg, full, _ = flower_run
    with pytest.raises(ConfigError, match="resume"):  # refused before Ray starts
        run_flower_audit(cfg, full)
    real, calls = fedleak.attack, {"n": 0}

    def stopping(*a, **k):  # the server's second attack (round 2) fails
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("stopped")
        return real(*a, **k)

    part = tmp_path / "part"
    monkeypatch.setattr(fedleak, "attack", stopping)
    with pytest.raises(RuntimeError, match="stopped"):
        run_flower_audit(cfg, part, log=lambda m: None)
    monkeypatch.setattr(fedleak, "attack", real)
    assert [r["round"] for r in read_jsonl(part / "rounds.jsonl")] == [1]
    run_flower_audit(cfg, part, resume=True, log=lambda m: None)
    for name in ("rounds.jsonl", "leakage.jsonl", "selfcheck.jsonl"):
        a, b = read_jsonl(part / name), read_jsonl(full / name)
        assert [(r["round"], r.get("client")) for r in a] == [
            (r["round"], r.get("client")) for r in b
        ]
        for x, y in zip(a, b, strict=True):
            assert x.get("psnr") == y.get("psnr") and x.get("accuracy") == y.get("accuracy")


def test_importing_fedleak_does_not_import_flower():
    code = "import sys, fedleak, fedleak.audit, fedleak.integrations; print('flwr' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- a real deployment on loopback --------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early ({proc.returncode}):\n{log.read_text()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s:\n{log.read_text()}")


def marked_pids(marker: str) -> list[int]:
    """Processes whose environment carries ``marker`` (everything this test started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def send(pid: int, sig: int, group: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        (os.killpg if group else os.kill)(pid, sig)


def stop_all(procs: list[subprocess.Popen], marker: str) -> None:
    """Stop every process group started here, then anything else carrying ``marker``."""
    for p in procs:
        if p.poll() is None:
            send(p.pid, signal.SIGTERM, group=True)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            send(p.pid, signal.SIGKILL, group=True)
            p.wait(timeout=5)
    end = time.monotonic() + 10
    while (left := marked_pids(marker)) and time.monotonic() < end:
        for pid in left:
            send(pid, signal.SIGTERM if time.monotonic() < end - 5 else signal.SIGKILL)
        time.sleep(0.5)
    for pid in marked_pids(marker):
        send(pid, signal.SIGKILL)


@pytest.mark.slow
def test_deployment_on_loopback_runs_the_example_app(tmp_path):
    _, cfg_path = small_config(tmp_path)
    out = tmp_path / "out"
    home = tmp_path / "flwr-home"
    home.mkdir()
    marker = f"FEDLEAK_FLOWER_TEST={uuid.uuid4().hex}"
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "OMP_NUM_THREADS": "1",
        marker.split("=")[0]: marker.split("=")[1],
    }
    bindir = Path(sys.executable).parent
    # the SuperLink starts `flower-superexec` by name: find it even without an activated venv
    env["PATH"] = os.pathsep.join([str(bindir), env.get("PATH", "")])
    link = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "loop"\n\n[superlink.loop]\naddress = "127.0.0.1:{link}"\n'
        "insecure = true\n"
    )
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{name}.log"
        p = subprocess.Popen(
            [str(bindir / args[0]), *args[1:]],
            env=env,
            cwd=tmp_path,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(p)
        return p, log

    try:
        sl, sl_log = start(
            "superlink",
            "flower-superlink",
            "--insecure",
            "--port",
            str(link),
            "--disable-runtime-dependency-installation",
        )
        wait_for_port(link, sl, sl_log)
        for pid in (0, 1):
            port = free_port()
            sn, sn_log = start(
                f"supernode{pid}",
                "flower-supernode",
                "--insecure",
                "--superlink",
                f"127.0.0.1:{link}",
                "--port",
                str(port),
                "--node-config",
                f"partition-id={pid} num-partitions=2",
            )
            wait_for_port(port, sn, sn_log)
        run, run_log = start(
            "flwr-run",
            "flwr",
            "run",
            str(EXAMPLE),
            "loop",
            "--stream",
            "-c",
            f"fedleak-config='{cfg_path}' out-dir='{out}' score-with-truth=true",
        )
        try:
            run.wait(timeout=170)
        except subprocess.TimeoutExpired:
            pytest.fail(f"flwr run did not finish in 170 s:\n{run_log.read_text()[-3000:]}")
        text = run_log.read_text()
        # `flwr run` exits 0 even when the run failed: judge by the outputs and the log
        assert run.returncode == 0, text[-3000:]
        assert (out / "summary.json").is_file(), text[-3000:]
        assert "Traceback" not in text, text[-3000:]
    finally:
        stop_all(procs, marker)
    assert not marked_pids(marker)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["engine"] == "flower"
    rounds = read_jsonl(out / "rounds.jsonl")
    assert all(r["clients"] == [0, 1] and r["withheld"] == [1] for r in rounds)
    checks = read_jsonl(out / "selfcheck.jsonl")
    assert [(c["round"], c["client"], c["withheld"]) for c in checks] == [
        (1, 0, False),
        (1, 1, True),
        (2, 0, False),
        (2, 1, True),
    ]
    leak = read_jsonl(out / "leakage.jsonl")
    assert [(r["round"], r["client"]) for r in leak] == [(1, 0), (2, 0)]
    assert all(r["psnr"] is not None and (out / r["grid"]).is_file() for r in leak)
