"""Real artifacts: a user's model and state dicts written by a plain PyTorch loop, audited.

The update built from the saved files (``ClientUpdate.from_states``) must be the one fedleak
simulates for the same client, and so must the reconstruction (PSNR within 0.5 dB).
"""

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner
from user_models.plain_loop import SPEC, USER_FILE, pixels, train_plainly, user_model

import fedleak
from fedleak.cli import app
from fedleak.errors import ConfigError, DataError, UpdateError
from fedleak.fl import ClientUpdate, ThreatModel
from fedleak.fl.artifacts import batch_sizes_for, load_state
from fedleak.models.adapter import (
    adapt_model,
    adapt_update,
    check_image_shape,
    check_pixels,
    load_model_def,
)

runner = CliRunner()


CASES = [
    ("fedsgd", "sgd", True),
    ("fedsgd", "sgd", False),
    ("fedavg", "sgd", True),
    ("fedavg", "sgd", False),
    ("fedavg", "adam", True),
]


@pytest.mark.parametrize(("protocol", "optimizer", "bn_train"), CASES)
def test_from_states_equals_fedleaks_own_simulation(tmp_path, protocol, optimizer, bn_train):
    model = user_model()
    x, y = pixels()
    fedsgd = protocol == "fedsgd"
    lr = 0.1 if optimizer == "sgd" else 0.01
    g_state, c_state, _ = train_plainly(model, x, y, fedsgd=fedsgd, optimizer=optimizer, lr=lr,
                                        bn_train=bn_train)
    torch.save(g_state, tmp_path / "global.pt")
    torch.save(c_state, tmp_path / "client.pt")
    bn = "train" if bn_train else "eval"
    settings = {"lr": lr, "bn_mode": bn, "optimizer": optimizer, "shuffle": False}
    if not fedsgd:
        settings |= {"epochs": 2, "batch_size": 2}
    u = ClientUpdate.from_states(
        tmp_path / "global.pt", tmp_path / "client.pt", model=model, training=settings,
        num_samples=4, kind="gradient" if fedsgd else "delta",
    )
    adapted, notes = adapt_model(model, image_shape=(1, 8, 8), mean=0.5, std=0.5)
    assert any("input transform" in n for n in notes)
    mine = adapt_update(u, adapted)
    sim = fedleak.observe(
        adapted, x, y, protocol=protocol, lr=lr, bn_mode=bn, shuffle=False,
        **({} if fedsgd else {"local_epochs": 2, "batch_size": 2, "optimizer": optimizer}),
    )
    assert set(mine.tensors) == set(sim.tensors)
    for k in sim.tensors:
        torch.testing.assert_close(mine.tensors[k], sim.tensors[k], rtol=1e-4, atol=1e-6)
    assert set(mine.buffers) == set(sim.buffers)
    for k in sim.buffers:
        torch.testing.assert_close(mine.buffers[k], sim.buffers[k])
    assert mine.training.to_dict() == sim.training.to_dict()
    assert mine.num_samples == sim.num_samples == 4

    # the reconstruction from the saved files equals the one from fedleak's own simulation
    threat = ThreatModel(labels=y)
    opts = {"iterations": 40, "restarts": 1}
    name = "dlg" if fedsgd else "inverting-gradients"
    rec_files = fedleak.attack(name, adapted, mine, threat=threat, seed=0, **opts)
    rec_sim = fedleak.attack(name, adapted, sim, threat=threat, seed=0, **opts)
    p_files = fedleak.score(rec_files, x)["psnr"]
    p_sim = fedleak.score(rec_sim, x)["psnr"]
    assert math.isfinite(p_files) and abs(p_files - p_sim) < 0.5, (p_files, p_sim)


def test_from_modules_and_every_file_format(tmp_path):
    model = user_model()
    x, y = pixels()
    g_state, c_state, net = train_plainly(model, x, y, fedsgd=False)
    ref = ClientUpdate.from_modules(model, net, training={"lr": 0.1, "epochs": 2,
                                                          "batch_size": 2}, num_samples=4)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in c_state.items()}, tmp_path / "c.safetensors")
    np.savez(tmp_path / "named.npz", **{k: v.numpy() for k, v in c_state.items()})
    np.savez(tmp_path / "flower.npz", *[v.numpy() for v in c_state.values()])
    torch.save({"epoch": 3, "model_state_dict": c_state}, tmp_path / "ckpt.pt")
    for f in ("c.safetensors", "named.npz", "flower.npz", "ckpt.pt"):
        u = ClientUpdate.from_states(g_state, tmp_path / f, model=model,
                                     training={"lr": 0.1, "epochs": 2, "batch_size": 2},
                                     num_samples=4)
        for k in ref.tensors:
            torch.testing.assert_close(u.tensors[k], ref.tensors[k])
        assert set(u.buffers) == set(ref.buffers) == {"bn.running_mean", "bn.running_var",
                                                       "bn.num_batches_tracked"}
    assert ref.training.local_steps == 4 and ref.training.batch_sizes == (2, 2, 2, 2)
    assert batch_sizes_for(5, 2, 4) == (2, 2, 1, 2)


class Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_unsafe_and_corrupt_files_are_one_line_errors(tmp_path):
    torch.save({"w": torch.zeros(2), "obj": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(DataError, match="never unpickles"):
        load_state(tmp_path / "evil.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable safetensors"):
        load_state(tmp_path / "bad.safetensors")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable PyTorch"):
        load_state(tmp_path / "bad.pt")
    np.save(tmp_path / "obj.npy", np.array([object()]), allow_pickle=True)
    np.savez(tmp_path / "obj.npz", a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(DataError, match="npz"):
        load_state(tmp_path / "obj.npz")
    with pytest.raises(DataError, match="no such file"):
        load_state(tmp_path / "missing.pt")
    model = user_model()
    other = user_model(width=6)
    with pytest.raises(UpdateError, match="not the same model"):
        ClientUpdate.from_states(model.state_dict(), other.state_dict())


def test_adapter_finds_logits_and_refuses_what_it_cannot_use():
    x, _ = pixels()
    for out in ("dict", "tuple"):
        m, notes = adapt_model(user_model(out=out), image_shape=(1, 8, 8))
        assert m(x).shape == (4, 3) and m.num_classes == 3 and notes
    plain, notes = adapt_model(user_model(), image_shape=(1, 8, 8))
    assert not notes and plain.num_classes == 3  # nothing to adapt: the model itself

    class Weird(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(64, 3)

        def forward(self, x):
            return {"scores": self.lin(x.flatten(1))}

    with pytest.raises(ConfigError, match="--logits"):
        adapt_model(Weird(), image_shape=(1, 8, 8))
    m, _ = adapt_model(Weird(), image_shape=(1, 8, 8), logits="scores")
    assert m(x).shape == (4, 3)
    with pytest.raises(ConfigError, match="3D volume"):
        check_image_shape((1, 8, 8, 8))
    with pytest.raises(DataError, match="--input-mean"):
        check_pixels((x - 0.5) / 0.2)
    with pytest.raises(ConfigError, match="fails on images of shape"):
        adapt_model(user_model(), image_shape=(3, 8, 8))


def test_model_without_linear_head_is_accepted_with_granted_labels():
    torch.manual_seed(0)
    raw = load_model_def(f"{USER_FILE}:NoLinearHead")
    model, _ = adapt_model(raw, image_shape=(1, 8, 8))
    x, y = pixels(n=1)
    u = fedleak.observe(model, x, y)
    rec = fedleak.attack("dlg", model, u, threat=ThreatModel(labels=y), iterations=5,
                         restarts=1)
    assert rec.images.shape == (1, 1, 8, 8)
    with pytest.raises(ConfigError, match="grant the labels"):
        fedleak.attack("dlg", model, u, iterations=5, restarts=1)


def test_missing_sample_count_is_reported_as_missing():
    model = user_model()
    x, y = pixels()
    g, c, _ = train_plainly(model, x, y, fedsgd=True)
    u = ClientUpdate.from_states(g, c, model=model, kind="gradient", training={"lr": 0.1})
    with pytest.raises(ConfigError, match="num_samples is missing"):
        fedleak.attack("dlg", model, u, iterations=2)


def _cli(tmp_path, *extra):
    return runner.invoke(app, ["--quiet", "attack", "--model-def", SPEC,
                               "--global", str(tmp_path / "global.pt"),
                               "--client", str(tmp_path / "client.pt"),
                               "--image-shape", "1,8,8", "--out", str(tmp_path / "run"),
                               "--overwrite",
                               *extra])


def test_cli_audits_saved_files_like_from_states(tmp_path):
    model = user_model()
    x, y = pixels()
    g, c, _ = train_plainly(model, x, y, fedsgd=False, momentum=0.9)
    torch.save(g, tmp_path / "global.pt")
    torch.save(c, tmp_path / "client.pt")
    torch.save({"images": x, "labels": y}, tmp_path / "truth.pt")
    (tmp_path / "training.yaml").write_text(
        "lr: 0.1\nepochs: 2\nbatch_size: 2\nmomentum: 0.9\nnum_samples: 4\nshuffle: false\n")
    r = _cli(tmp_path, "--training", str(tmp_path / "training.yaml"), "--input-mean", "0.5",
             "--input-std", "0.5", "--truth", str(tmp_path / "truth.pt"), "--grant-labels",
             "--attack", "inverting-gradients", "--iterations", "40", "--restarts", "1")
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["preflight"]["errors"] == 0
    assert (tmp_path / "run" / "reconstruction.png").is_file()
    # the same audit through the Python API: same reconstruction quality
    u = ClientUpdate.from_states(g, c, model=model, num_samples=4, training={
        "lr": 0.1, "epochs": 2, "batch_size": 2, "momentum": 0.9, "shuffle": False})
    adapted, _ = adapt_model(model, image_shape=(1, 8, 8), mean=0.5, std=0.5)
    rec = fedleak.attack("inverting-gradients", adapted, adapt_update(u, adapted),
                         threat=ThreatModel(labels=y), iterations=40, restarts=1)
    assert abs(fedleak.score(rec, x)["psnr"] - metrics["scores"]["psnr"]) < 0.5

    # without truth: grid, attack loss and fit diagnostics still written
    r = _cli(tmp_path, "--lr", "0.1", "--local-epochs", "2", "--batch-size", "2",
             "--momentum", "0.9", "--num-samples", "4", "--input-range", "-1,1",
             "--iterations", "10", "--restarts", "1", "--attack", "inverting-gradients")
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["scores"] is None and metrics["reconstruction"]["fit"] is not None
    assert metrics["loss_history"]


def test_cli_errors_are_one_line(tmp_path):
    model = user_model()
    x, y = pixels()
    g, c, _ = train_plainly(model, x, y, fedsgd=False)
    torch.save(g, tmp_path / "global.pt")
    torch.save(c, tmp_path / "client.pt")
    # the model claims BN eval while the buffers changed: refused before the attack
    r = _cli(tmp_path, "--lr", "0.1", "--local-epochs", "2", "--batch-size", "2",
             "--num-samples", "4", "--bn-mode", "eval")
    assert r.exit_code == 2 and "bn-mode" in r.output and "Traceback" not in r.output
    r = _cli(tmp_path, "--image-shape", "1,4,8,8")
    assert r.exit_code == 2 and "3D volume" in r.output
    np.savez(tmp_path / "truth.npz", images=((x - 0.5) / 0.5).numpy(), labels=y.numpy())
    r = _cli(tmp_path, "--lr", "0.1", "--local-epochs", "2", "--batch-size", "2",
             "--num-samples", "4", "--truth", str(tmp_path / "truth.npz"))
    assert r.exit_code == 2 and "[0, 1]" in r.output


def tiny_vit():
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32, num_labels=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    return transformers.ViTForImageClassification(config)  # random weights: no download


def test_huggingface_vit_is_attacked_through_the_adapter():
    vit = tiny_vit()
    assert vit.config._attn_implementation != "eager"  # SDPA: no double backward on the CPU
    model, notes = adapt_model(vit, image_shape=(1, 8, 8), mean=0.5, std=0.5)
    assert any("eager" in n for n in notes) and any("logits" in n for n in notes)
    assert vit.config._attn_implementation == "eager"
    x, y = pixels(n=1)
    update = fedleak.observe(model, x, y)
    rec = fedleak.attack("inverting-gradients", model, update, threat=ThreatModel(labels=y),
                         iterations=30, restarts=1)
    assert rec.images.shape == (1, 1, 8, 8) and math.isfinite(rec.loss_history[-1])
    assert rec.loss_history[-1] < rec.loss_history[0]  # it fits the update


def test_fused_attention_that_cannot_be_switched_is_refused_up_front():
    vit = tiny_vit()
    vit.set_attn_implementation = None  # as an older transformers without the setter
    with pytest.raises(ConfigError, match="attn_implementation"):
        adapt_model(vit, image_shape=(1, 8, 8))


def test_cli_update_file_gradient_or_saved_client_update(tmp_path):
    model = user_model()
    x, y = pixels(n=2)
    g, grads, _ = train_plainly(model, x, y, fedsgd=True)
    torch.save(g, tmp_path / "global.pt")
    torch.save(grads, tmp_path / "grad.pt")
    common = ["--quiet", "attack", "--model-def", SPEC, "--global", str(tmp_path / "global.pt"),
              "--image-shape", "1,8,8", "--input-mean", "0.5", "--input-std", "0.5",
              "--iterations", "5", "--restarts", "1", "--attack", "dlg"]
    r = runner.invoke(app, [*common, "--update", str(tmp_path / "grad.pt"), "--lr", "0.1",
                            "--num-samples", "2", "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["reconstruction"]["num_images"] == 2 and metrics["preflight"]["errors"] == 0
    adapted, _ = adapt_model(model, image_shape=(1, 8, 8), mean=0.5, std=0.5)
    saved = fedleak.observe(adapted, x, y)  # a fedleak-format update, names of the adapted model
    plain = saved.replace(tensors={k[len("model."):]: v for k, v in saved.tensors.items()},
                          buffers={k[len("model."):]: v for k, v in saved.buffers.items()})
    plain.save(tmp_path / "update.pt")
    r = runner.invoke(app, [*common, "--update", str(tmp_path / "update.pt"),
                            "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*common, "--client", str(tmp_path / "update.pt"),
                            "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "--update" in r.output


def test_cli_without_lr_names_the_missing_settings(tmp_path):
    model = user_model()
    x, y = pixels()
    g, c, _ = train_plainly(model, x, y, fedsgd=False)
    torch.save(g, tmp_path / "global.pt")
    torch.save(c, tmp_path / "client.pt")
    r = _cli(tmp_path, "--num-samples", "4")
    assert r.exit_code == 2 and "--lr" in r.output and "threat level" not in r.output
