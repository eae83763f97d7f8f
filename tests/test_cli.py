"""The command line: run folders, and one-line errors with exit code 2 for user mistakes."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fedleak.cli import app

runner = CliRunner()


def test_listings():
    r = runner.invoke(app, ["datasets"])
    assert r.exit_code == 0 and "lfw-faces" in r.stdout and "mnist-5k" in r.stdout
    r = runner.invoke(app, ["attacks"])
    assert r.exit_code == 0 and "dlg" in r.stdout and "inverting-gradients" in r.stdout


def test_attack_writes_a_run_folder(tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(
        app,
        ["--quiet", "attack", "--data", "digits", "--size", "16", "--model", "lenet",
         "--attack", "dlg", "--iterations", "60", "--restarts", "1", "--checkpoint-every", "20",
         "--out", str(out)],
    )
    assert r.exit_code == 0, r.output
    for name in ("config.json", "metrics.json", "reconstruction.png", "update.pt",
                 "checkpoints.jsonl"):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["attack"] == "dlg" and cfg["attack_options"]["iterations"] == 60
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"psnr", "ssim", "mse", "label_accuracy"} <= set(metrics["scores"])
    assert metrics["reconstruction"]["iterations"] >= 1


@pytest.mark.parametrize(
    "args, needle",
    [
        (["attack", "--data", "nope"], "unknown built-in data set"),
        (["attack", "--data", "folder:/does/not/exist"], "not found"),
        (["attack", "--attack", "dgl"], "Did you mean 'dlg'"),
        (["attack", "--option", "bogus"], "key=value"),
        (["attack", "--protocol", "fedsgd", "--batch-size", "2"], "--protocol fedavg"),
        (["attack", "--threat", "B"], "training_details"),
        (["audit", "--set", "federation.roundz=1"], "unknown key"),
        (["attack", "--task", "diffusion", "--attack", "dlg"], "diffusion-ig, gidm, gidm-plus"),
        (["attack", "--task", "diffusion", "--attack", "gidm"], "surrogate_data"),
        (["attack", "--task", "classify"], "'classification' or 'diffusion'"),
        (["audit", "--task", "diffusion", "--attack", "gidm-plus"], "threat"),
        (["audit", "--task", "diffusion", "--set", "model.name=convnet"], "'unet'"),
        (["audit", "--task", "diffusion", "--engine", "flower"], "classification federations"),
    ],
)
def test_user_mistakes_give_one_line_and_exit_2(tmp_path, args, needle):
    r = runner.invoke(app, ["--quiet", *args, "--out", str(tmp_path / "x")])
    assert r.exit_code == 2, r.output
    assert needle in r.output
    assert "Traceback" not in r.output


def test_corrupt_medmnist_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "blood.npz"
    np.savez(bad, wrong=np.zeros(3))
    r = runner.invoke(app, ["--quiet", "attack", "--data", f"medmnist:{bad}",
                            "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "blood.npz" in r.output and "Traceback" not in r.output


def test_attack_on_a_diffusion_client_recovers_image_and_timestep(tmp_path):
    """Seed 002 from the CLI: private eps and t, recovered jointly with the image."""
    out = tmp_path / "dif"
    r = runner.invoke(
        app,
        ["--quiet", "attack", "--task", "diffusion", "--data", "digits", "--size", "8",
         "--iterations", "150", "--option", "search_iterations=40", "--seed", "5",
         "--out", str(out)],
    )
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "metrics.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["task"] == "diffusion" and cfg["attack"] == "diffusion-ig" and cfg["size"] == 8
    assert metrics["t_accuracy"] == 1.0
    # with the noise shared in the clear the pixels come back too, in few iterations
    r = runner.invoke(
        app,
        ["--quiet", "attack", "--task", "diffusion", "--data", "digits", "--size", "8",
         "--share-noise", "--iterations", "150", "--out", str(out), "--overwrite"],
    )
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["scores"]["psnr"] > metrics["scores"]["flat_psnr"] + 15
