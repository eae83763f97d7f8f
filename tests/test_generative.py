"""The generative-prior attack (level D) and restart selection by consistency."""

from __future__ import annotations

import pytest
import torch

from fedleak.api import attack, observe, score
from fedleak.attacks.selection import pick_restart
from fedleak.data import load_dataset
from fedleak.diffusion import UNetConfig
from fedleak.diffusion.prior import train_prior
from fedleak.errors import ConfigError, InsufficientKnowledgeError
from fedleak.fl import ThreatModel
from fedleak.models import build_model

S = 16


@pytest.fixture(scope="module")
def faces() -> tuple[torch.Tensor, torch.Tensor]:
    """Public faces (train split) for the prior; two attacked faces from the test split."""
    train = load_dataset("lfw-faces", size=S, split="train")
    test = load_dataset("lfw-faces", size=S, split="test")
    return train.images[train.labels == 0], test.images[test.labels == 0][:2]


@pytest.fixture(scope="module")
def prior(faces) -> torch.nn.Module:
    """A tiny 8x8 prior (upsampled to the clients' 16x16 by the attack)."""
    small = torch.nn.functional.interpolate(faces[0], size=(8, 8), mode="area")
    cfg = UNetConfig(image_size=8, channels=8, mults=(1, 2), groups=4, num_timesteps=16)
    return train_prior(small, config=cfg, steps=60, batch_size=16, flip=True)


def _victim() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(
        "convnet", input_shape=(1, S, S), num_classes=2, widths=(8, 16, 16), pool_after=(0, 1)
    )


def test_generative_prior_beats_pixel_matching_at_equal_iterations(faces, prior) -> None:
    model, images = _victim(), faces[1]
    labels = torch.zeros(2, dtype=torch.long)
    update = observe(model, images, labels)
    threat = ThreatModel("D", labels=labels)
    rec = attack(
        "generative-prior", model, update, threat=threat, prior_model=prior,
        phase1_iterations=40, iterations=20, lr=0.01, restarts=1, truth=(images, labels),
    )  # fmt: skip
    assert rec.images.shape == images.shape and rec.iterations == 60
    assert rec.extras["phase1_images"].shape == images.shape
    assert rec.fit is not None and rec.fit.attack_residual < 0.5
    only1 = attack("generative-prior", model, update, threat=threat, prior_model=prior,
                   phase1_iterations=5, iterations=0, restarts=2)  # fmt: skip
    assert only1.iterations == 5 and torch.equal(only1.images, only1.extras["phase1_images"])
    ig = attack("inverting-gradients", model, update, threat=threat, iterations=60, restarts=1)
    s, s_ig = score(rec, images), score(ig, images)
    assert s["psnr"] > s["flat_psnr"] + 1.5  # measured 18.1 vs flat 15.0
    assert s["psnr"] > s_ig["psnr"] + 4.0  # measured IG: 9.8


def test_generative_prior_needs_surrogate_data_and_a_fitting_prior(faces, prior) -> None:
    model, images = _victim(), faces[1]
    labels = torch.zeros(2, dtype=torch.long)
    update = observe(model, images, labels)
    with pytest.raises(InsufficientKnowledgeError, match="surrogate_data"):
        attack("generative-prior", model, update, threat=ThreatModel("C", labels=labels),
               prior_model=prior)  # fmt: skip
    with pytest.raises(ConfigError, match="prior_model"):
        attack("generative-prior", model, update, threat=ThreatModel("D", labels=labels))
    rgb = build_model("convnet", input_shape=(3, S, S), num_classes=2, widths=(4,), pool_after=())
    x = torch.rand(1, 3, S, S)
    with pytest.raises(ConfigError, match="channels"):
        attack("generative-prior", rgb, observe(rgb, x, labels[:1]),
               threat=ThreatModel("D", labels=labels[:1]), prior_model=prior)  # fmt: skip


def test_consistency_picks_the_restart_the_others_agree_with() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 1, 8, 8, generator=g), torch.rand(2, 1, 8, 8, generator=g)
    near = [a + 0.02 * torch.randn(a.shape, generator=g) for _ in range(3)]
    near[1] = near[1].flip(0)  # a batch's order is arbitrary: pairing must see through it
    images = torch.stack([b, *near])  # (4, 2, 1, 8, 8): restart 0 is the odd one out
    losses = torch.tensor([0.01, 0.02, 0.03, float("nan")])
    assert pick_restart(images, losses, "loss") == 0
    assert pick_restart(images, losses, "consistency") in (1, 2)
    assert pick_restart(images, losses, "mean") == 0  # the consensus's reference: the loss pick
    assert pick_restart(images[:2], losses[:2], "consistency") == 0  # no majority: the loss
    with pytest.raises(ConfigError, match="select"):
        pick_restart(images, losses, "oracle")


def test_consensus_averages_the_restarts_paired_within_labels() -> None:
    from fedleak.attacks.selection import consensus

    g = torch.Generator().manual_seed(0)
    truth = torch.rand(3, 1, 8, 8, generator=g)
    labels = torch.tensor([[0, 1, 1]] * 4)
    noise = [0.05 * torch.randn(truth.shape, generator=g) for _ in range(4)]
    restarts = [truth + n for n in noise]
    restarts[1] = restarts[1][[0, 2, 1]]  # the two label-1 slots swapped: pairing undoes it
    restarts[2] = torch.rand(truth.shape, generator=g)  # a broken restart, left out by its loss
    losses = torch.tensor([0.01, 0.02, float("nan"), 0.03])
    mean = consensus(torch.stack(restarts), labels, losses, ref=0)
    expect = torch.stack([(truth + noise[i]).clamp(0, 1) for i in (0, 1, 3)]).mean(0)
    torch.testing.assert_close(mean, expect)
    # slots pair only within a label: slot 0 (label 0) keeps restart 1's slot 0 even when
    # another slot's pixels are closer to it
    far = torch.stack([truth, truth[[1, 0, 2]]])
    both = consensus(far, torch.tensor([[0, 1, 1], [0, 1, 1]]), torch.zeros(2), ref=0)
    torch.testing.assert_close(both[0], (truth[0] + truth[1]) / 2)


def test_inverting_gradients_select_option() -> None:
    model = _victim()
    x, y = torch.rand(1, 1, S, S), torch.zeros(1, dtype=torch.long)
    update = observe(model, x, y)
    rec = attack("inverting-gradients", model, update, threat=ThreatModel(labels=y),
                 iterations=3, restarts=3, select="consistency")  # fmt: skip
    assert rec.extras["select"] == "consistency" and 0 <= rec.best_restart < 3
    rec = attack("inverting-gradients", model, update, threat=ThreatModel(labels=y),
                 iterations=3, restarts=3, select="mean")  # fmt: skip
    assert rec.extras["consensus_of"] == 3
    torch.testing.assert_close(rec.images, rec.restart_images.mean(0))  # batch 1: a plain mean
    with pytest.raises(ConfigError, match="select='mean'"):
        attack("inverting-gradients", model, update, threat=ThreatModel(labels=y), restarts=2,
               select="mean", select_after=0.5)
    with pytest.raises(ConfigError, match="select"):
        attack("inverting-gradients", model, update, threat=ThreatModel(labels=y), select="x")


def test_checkpoints_show_the_consensus_and_deterministic_starts_spread() -> None:
    model = _victim()
    x, y = torch.rand(1, 1, S, S), torch.zeros(1, dtype=torch.long)
    update = observe(model, x, y)
    seen: list[torch.Tensor] = []
    rec = attack("inverting-gradients", model, update, threat=ThreatModel(labels=y),
                 iterations=4, restarts=3, select="mean", init="constant", checkpoint_every=2,
                 callback=lambda c: seen.append(c.images))  # fmt: skip
    assert len(seen) == 2
    torch.testing.assert_close(seen[-1], rec.images)  # what the result will be, not one restart
    # a constant start would make the 3 restarts one: restarts after the first get noise
    r = rec.restart_images
    assert not torch.equal(r[0], r[1]) and not torch.equal(r[1], r[2])
