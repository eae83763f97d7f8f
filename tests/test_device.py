"""Device plumbing (CPU only): explicit devices, generators and buffers, errors, memory chunks.

No GPU is needed: the tests check that every attack runs with an explicit device, that the
pieces which create tensors ask the model for its device, that an absent device is a one-line
error, and (statically) that nothing in src/ pins tensors to the CPU or calls ``.cuda()``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn import functional as F
from typer.testing import CliRunner

import fedleak
from fedleak.attacks import AttackInputs
from fedleak.attacks.optimize import init_images, optimize
from fedleak.attacks.simulate import CosineDistance, UpdateSimulator, gradient_distance
from fedleak.device import (
    attack_precision,
    chunk_size,
    device_of,
    generator_for,
    resolve_device,
    restart_bytes,
)
from fedleak.errors import ConfigError
from fedleak.fl.threat import ThreatModel
from fedleak.models import build_model

SRC = Path(__file__).resolve().parents[1] / "src" / "fedleak"
SHAPE = (1, 8, 8)


pytestmark = pytest.mark.usefixtures("one_thread")


def _convnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("convnet", input_shape=SHAPE, num_classes=2, widths=(4, 8),
                       pool_after=(0,))


def _images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def _classifier_case(name: str) -> tuple[Any, Any, ThreatModel, dict[str, Any]]:
    if name == "analytic":
        torch.manual_seed(0)
        model = build_model("mlp", input_shape=SHAPE, num_classes=4)
        y = torch.tensor([2])
        return model, fedleak.observe(model, _images(1), y), ThreatModel(), {}
    model = _convnet()
    x, y = _images(2), torch.tensor([0, 1])
    if name == "bn-fedavg":
        update = fedleak.observe(model, x, y, protocol="fedavg", lr=0.1, local_steps=2,
                                 batch_size=1, seed=3)
        return model, update, ThreatModel(labels=y), {"iterations": 3}
    update = fedleak.observe(model, x, y, bn_mode="eval")
    opts: dict[str, Any] = {"iterations": 3}
    if name in ("inverting-gradients", "gradinversion", "fedleak-fan"):
        opts["restarts"] = 2
    return model, update, ThreatModel(labels=y), opts


def _diffusion_case(name: str) -> tuple[Any, Any, ThreatModel, dict[str, Any]]:
    from fedleak.diffusion import UNet, UNetConfig, diffusion_update

    cfg = UNetConfig(image_size=8, channels=8, groups=4, num_timesteps=16)
    torch.manual_seed(0)
    model, prior = UNet(cfg), UNet(cfg).eval()
    x, t = _images(2), torch.tensor([3, 11])
    if name == "diffusion-ig":
        update = diffusion_update(model, x, t=t, share_noise=True)
        return model, update, ThreatModel("D"), {"iterations": 3}
    if name == "gidm":
        update = diffusion_update(model, x, t=t, share_noise=True)
        return model, update, ThreatModel("D"), {
            "prior_model": prior, "phase1_iterations": 2, "phase2_iterations": 2}
    update = diffusion_update(model, x, t=t, share_noise=False)
    return model, update, ThreatModel("D"), {
        "prior_model": prior, "phase1_iterations": 2, "phase2_iterations": 2, "t": t.tolist()}


def _new_attack_case(name: str) -> tuple[Any, Any, ThreatModel, dict[str, Any]]:
    if name == "inverting-gradients-latent":
        torch.manual_seed(0)
        model = build_model("latent-net", input_shape=SHAPE, num_classes=2, width=2, pool=2)
        y = torch.tensor([0, 1])
        return model, fedleak.observe(model, _images(2), y), ThreatModel(labels=y), {
            "iterations": 3, "latent": "sample"}
    if name == "spear":  # a leading ReLU layer, 10 classes, FedSGD
        torch.manual_seed(0)
        model = build_model("mlp", input_shape=SHAPE, num_classes=10)
        return model, fedleak.observe(model, _images(2), torch.tensor([3, 7])), ThreatModel(), {}
    model, x = _convnet(), _images(4)
    y = torch.tensor([0, 1, 0, 1])
    if name == "fedavg-epochs":  # a client that reshuffled over 2 epochs
        update = fedleak.observe(model, x, y, protocol="fedavg", lr=0.1, local_epochs=2,
                                 batch_size=2, seed=3)
        return model, update, ThreatModel(labels=y), {"iterations": 3, "restarts": 1}
    from fedleak.diffusion import UNetConfig, train_prior  # generative-prior

    cfg = UNetConfig(image_size=8, channels=8, mults=(1, 2), groups=4, num_timesteps=16)
    prior = train_prior(x, config=cfg, steps=2, batch_size=4)
    update = fedleak.observe(model, x[:2], y[:2], bn_mode="eval")
    return model, update, ThreatModel("D", labels=y[:2]), {
        "prior_model": prior, "phase1_iterations": 2, "iterations": 2, "restarts": 1,
        "ddim_steps": 2}


CASES = {
    **dict.fromkeys(["analytic", "bn-fedavg", "dlg", "gradinversion", "inverting-gradients",
                     "fedleak-fan"], _classifier_case),
    **dict.fromkeys(["fedavg-epochs", "generative-prior", "inverting-gradients-latent", "spear"],
                    _new_attack_case),
    **dict.fromkeys(["diffusion-ig", "gidm", "gidm-plus"], _diffusion_case),
}


def test_every_registered_attack_has_a_device_case() -> None:
    assert sorted(CASES) == sorted(fedleak.available_attacks())


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_attack_runs_with_an_explicit_cpu_device(name: str) -> None:
    model, update, threat, options = CASES[name](name)
    rec = fedleak.attack(name, model, update, threat=threat, device="cpu", seed=0, **options)
    assert rec.images.device.type == "cpu"
    assert rec.images.shape[1:] == model.input_shape
    assert bool(torch.isfinite(rec.images).all())
    assert rec.iterations >= 1 or name == "analytic"
    again = fedleak.attack(name, model, update, threat=threat, device="cpu", seed=0, **options)
    assert torch.equal(rec.images, again.images)  # seeded: the same run on the same device


def test_generators_and_buffers_follow_the_model() -> None:
    model = _convnet()
    update = fedleak.observe(model, _images(1), torch.tensor([0]))
    inputs = AttackInputs(model=model, update=update, threat=ThreatModel(), num_images=1,
                          image_shape=SHAPE, num_classes=2, labels=None, label_method="none",
                          seed=5)
    assert inputs.device == device_of(model)
    gen = inputs.generator()
    assert gen.device == device_of(model)
    assert torch.equal(init_images("random", (1, 1, *SHAPE), gen),
                       init_images("random", (1, 1, *SHAPE), inputs.generator()))
    x0 = init_images("constant", (2, 1, *SHAPE), gen)
    res = optimize({"images": x0}, lambda v: v["images"].flatten(1).pow(2).mean(1), inputs,
                   iterations=3, lr=0.1)
    for t in (res.history, res.best_loss, res.best["images"]):
        assert t.device == x0.device
    assert res.history.shape == (3, 2)


def test_generator_for_is_seeded_per_device() -> None:
    a = torch.rand(4, generator=generator_for("cpu", 7))
    b = torch.rand(4, generator=generator_for(torch.device("cpu"), 7))
    c = torch.rand(4, generator=generator_for("cpu", 8))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto picks the GPU here")
def test_auto_falls_back_to_cpu_with_a_note(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="fedleak.device"):
        assert resolve_device("auto") == torch.device("cpu")
        assert resolve_device(None) == torch.device("cpu")
    assert "running on the CPU" in caplog.text


@pytest.mark.parametrize("bad", ["cuda:7", "tpu", "mps" if not torch.backends.mps.is_available()
                                 else "cuda:99"])
def test_unavailable_device_is_a_one_line_config_error(bad: str) -> None:
    if bad == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(ConfigError) as err:
        resolve_device(bad)
    assert "\n" not in str(err.value) and "device" in str(err.value)


@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="this machine has a cuda:7")
@pytest.mark.parametrize("argv", [
    ["attack", "--device", "cuda:7"],
    ["demo", "--device", "cuda:7"],
    ["audit", "--device", "cuda:7"],
])
def test_cli_unavailable_device_exits_2_with_one_line(argv: list[str], tmp_path: Path) -> None:
    from fedleak.cli.app import app

    result = CliRunner().invoke(app, [*argv, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    text = result.output.strip()
    assert "Traceback" not in text and len(text.splitlines()) == 1
    assert "cuda:7" in text and "not available" in text
    assert not (tmp_path / "run" / "update.pt").exists()


def test_configs_validate_device() -> None:
    from fedleak.audit import load_config
    from fedleak.sweep.config import SweepConfig

    assert load_config(None, ["device=\"cpu\""]).device == "cpu"
    with pytest.raises(ConfigError, match="device"):
        load_config(None, ["device=\"tpu\""])
    with pytest.raises(ConfigError, match="device"):
        SweepConfig.from_dict({"device": "gpu0"})


def test_attack_precision_turns_tf32_off_and_restores() -> None:
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with attack_precision():
            assert not torch.backends.cuda.matmul.allow_tf32
            assert not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_restarts_run_in_chunks_within_the_budget() -> None:
    model, update, threat, _ = _classifier_case("inverting-gradients")
    per = restart_bytes(model, SHAPE, 2)
    assert per > 0
    assert chunk_size(4, per, int(2.5 * per), "restart") == 2
    opts = {"iterations": 5, "restarts": 4, "seed": 0}
    whole = fedleak.attack("inverting-gradients", model, update, threat=threat, **opts)
    chunked = fedleak.attack("inverting-gradients", model, update, threat=threat,
                             memory_budget=int(2.5 * per), **opts)
    assert chunked.restart_losses == pytest.approx(whole.restart_losses, rel=1e-4)
    with pytest.raises(ConfigError, match="more than the memory budget"):
        fedleak.attack("inverting-gradients", model, update, threat=threat,
                       memory_budget=per // 2, **opts)


def test_simulator_matches_autograd_with_eval_bn_and_one_restart() -> None:
    model = _convnet().eval()
    x, y = _images(3), torch.tensor([0, 1, 1])
    update = fedleak.observe(model, x, y, bn_mode="eval")
    sim = UpdateSimulator(model, update, mode="gradient", bn_mode="eval")
    cand = _images(3 * 3, seed=9).reshape(3, 3, *SHAPE)
    many = sim(cand, y.expand(3, -1))
    one = sim(cand[1:2], y[None])
    for r in range(3):
        ref = torch.autograd.grad(F.cross_entropy(model(cand[r]), y), list(model.parameters()))
        for (k, _), g in zip(model.named_parameters(), ref, strict=True):
            torch.testing.assert_close(many[k][r], g, rtol=1e-4, atol=1e-6)
    for k in one:
        torch.testing.assert_close(one[k][0], many[k][1], rtol=1e-4, atol=1e-6)


def test_cosine_distance_matches_the_per_tensor_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    target = {"a": torch.randn(5, 3, generator=gen), "b": torch.randn(7, generator=gen)}
    cand = {"a": torch.randn(4, 5, 3, generator=gen), "b": torch.randn(4, 7, generator=gen)}
    for weights in (None, {"a": 1.0, "b": 0.25}):
        torch.testing.assert_close(
            CosineDistance(target, weights)(cand),
            gradient_distance(cand, target, metric="cosine-loop", weights=weights),
        )


# --------------------------------------------------------------------- static checks on src/


def _py_sources() -> list[tuple[Path, str]]:
    return [(p, p.read_text()) for p in sorted(SRC.rglob("*.py"))]


def test_nothing_calls_cuda_directly() -> None:
    hits = [f"{p.relative_to(SRC)}:{i}" for p, text in _py_sources()
            for i, line in enumerate(text.splitlines(), 1) if re.search(r"\.cuda\(\s*\)", line)]
    assert hits == []


# CPU generators on purpose: client sampling and batch orders (indices), secure-aggregation
# masks (identical on every device), and device.py itself; elsewhere a line marked
# "# cpu generator" (batch indices).
CPU_GENERATOR_OK = {"device.py", "fl/server.py", "fl/client.py", "defenses/secagg.py",
                    "defenses/mixup.py", "sweep/cell.py", "cli/jobs.py", "data/partition.py"}


def test_attack_diffusion_and_defense_generators_come_from_device_py() -> None:
    bad = []
    for p, text in _py_sources():
        rel = str(p.relative_to(SRC))
        if rel in CPU_GENERATOR_OK or rel.startswith(("data/", "models/")):
            continue
        for i, line in enumerate(text.splitlines(), 1):
            if "torch.Generator(" in line and "# cpu generator" not in line:
                bad.append(f"{rel}:{i}")
    assert bad == []


def test_random_draws_with_a_generator_name_their_device() -> None:
    """A draw with a device generator but no ``device=`` fails on a GPU."""
    call = re.compile(r"torch\.(rand|randn|randint)\((?:[^()]|\([^()]*\))*generator=[^)]*\)")
    bad = []
    for p, text in _py_sources():
        rel = str(p.relative_to(SRC))
        if not rel.startswith(("attacks/", "diffusion/")):
            continue
        for m in call.finditer(text):
            if "device=" not in m.group(0):
                bad.append(f"{rel}:{text[: m.start()].count(chr(10)) + 1}")
    assert bad == []


def test_select_after_continues_the_lowest_loss_restart_alone() -> None:
    model, update, threat, _ = _classifier_case("inverting-gradients")
    opts = {"iterations": 8, "restarts": 3, "seed": 0}
    full = fedleak.attack("inverting-gradients", model, update, threat=threat, **opts)
    sel = fedleak.attack("inverting-gradients", model, update, threat=threat,
                         select_after=0.25, **opts)
    assert len(sel.loss_history) == 8 and all(v == v for v in sel.loss_history)  # no NaN
    assert sel.restart_losses[sel.best_restart] == min(sel.restart_losses)
    assert sel.restart_losses[sel.best_restart] <= min(full.restart_losses[:3]) + 0.05
    with pytest.raises(ConfigError, match="select_after"):
        fedleak.attack("inverting-gradients", model, update, threat=threat,
                       select_after=1.5, **opts)


def test_a_given_diffusion_t_lives_on_the_model_device() -> None:
    """Found on a GPU: gidm-plus with ``t=[5]`` built t on the CPU beside a CUDA model."""
    from fedleak.attacks.diffusion import _fixed_t

    t = _fixed_t([5], 2, 16, "attack 'gidm-plus'", torch.device("meta"))
    assert t is not None and t.device.type == "meta" and t.shape == (2,)


def _small_convnet() -> torch.nn.Module:
    return build_model("convnet", input_shape=(1, 8, 8), num_classes=3, widths=[4, 8],
                       pool_after=[0])


def test_fast_layout_trains_the_same_federation_in_channels_last() -> None:
    """On the CPU federate puts conv weights in channels-last layout (faster oneDNN kernels);
    the federation it trains is the NCHW one up to float rounding, and a conv-free model or a
    model fast_layout already converted is left as it is."""
    from fedleak.device import fast_layout
    from fedleak.fl import ClientData, federate

    torch.manual_seed(0)
    net = _small_convnet()
    ref = {k: v.clone() for k, v in net.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    clients = [ClientData(torch.rand(6, 1, 8, 8, generator=gen), torch.tensor([0, 1, 2] * 2))
               for _ in range(2)]
    train = {"protocol": "fedavg", "local_epochs": 2, "batch_size": 3, "lr": 0.05}

    def run(layout: torch.memory_format) -> dict[str, torch.Tensor]:
        m = _small_convnet()
        m.load_state_dict(ref)
        m.to(memory_format=layout)
        for _ in federate(m, clients, rounds=2, train=train, seed=0):
            pass
        conv = next(p for p in m.parameters() if p.dim() == 4)
        assert conv.is_contiguous(memory_format=torch.channels_last)  # federate converted it
        return m.state_dict()

    a, b = run(torch.contiguous_format), run(torch.channels_last)
    assert any(not torch.equal(a[k], ref[k]) for k in a)  # it trained
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    assert fast_layout(mlp) is mlp and mlp[1].weight.is_contiguous()


def test_predict_restores_each_module_mode_and_ignores_the_batch_size() -> None:
    from fedleak.fl import evaluate, predict

    torch.manual_seed(0)
    net = _small_convnet()
    net.train()
    net[2].eval()  # a BatchNorm left in eval mode by its owner must stay so
    modes = [m.training for m in net.modules()]
    x = torch.rand(70, 1, 8, 8)
    with torch.no_grad():
        expect = net.eval()(x).argmax(1)
    for m, t in zip(net.modules(), modes, strict=True):
        m.training = t
    for batch in (None, 1, 64, 512):
        assert torch.equal(predict(net, x, batch), expect)
        assert [m.training for m in net.modules()] == modes
    y = expect.clone()
    y[:7] = (y[:7] + 1) % 3
    assert evaluate(net, x, y) == pytest.approx(63 / 70)
