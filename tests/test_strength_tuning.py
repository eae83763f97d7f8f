"""Issue 16: the automatic TV search of Inverting Gradients and the FedLeak attack (Fan et al.).

Small problems (16x16 faces, a narrow ConvNet, FedSGD, labels granted) so that the file runs in
well under a minute on one CPU thread.
"""

from __future__ import annotations

import pytest
import torch

import fedleak
from fedleak.attacks.fan_fedleak import PartialMatch, median_filter
from fedleak.data import load_dataset
from fedleak.errors import ConfigError
from fedleak.fl import ThreatModel
from fedleak.models import build_model

SIZE = 16


def convnet(head: str = "flatten") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("convnet", input_shape=(1, SIZE, SIZE), num_classes=2, head=head,
                       widths=(8, 16), pool_after=(1,))


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    ds = load_dataset("lfw-faces", size=SIZE, split="all")
    return ds.images[ds.labels == 0][:4].clone()


def problem(faces: torch.Tensor, n: int, head: str = "flatten"):  # noqa: ANN201
    model = convnet(head)
    x, y = faces[:n], torch.zeros(n, dtype=torch.long)
    return model, fedleak.observe(model, x, y, bn_mode="eval"), x, y


def test_auto_keeps_the_lowest_matching_term_and_says_which_tv(faces):
    model, update, x, y = problem(faces, 2)
    grid = (0.0, 1e-2, 0.1)
    rec = fedleak.attack("inverting-gradients", model, update, threat=ThreatModel(labels=y),
                         iterations=40, restarts=1, tv="auto", tv_grid=grid,
                         search_fraction=0.25, truth=(x, y))
    assert rec.extras["restart_tv"] == [0.0, 1e-2, 0.1]
    # the candidates are compared on the matching term alone (TV left out) ...
    match = rec.extras["restart_match"]
    assert rec.restart_losses == pytest.approx(match)
    assert rec.extras["tv"] == grid[min(range(3), key=match.__getitem__)]
    # ... which is the fit check's residual at the returned images
    assert rec.fit.attack_residual == pytest.approx(match[rec.best_restart], rel=1e-3, abs=1e-6)
    # only the winner ran after the search: the others' histories stop at 10 iterations
    assert rec.extras["select_at"] == 10 and rec.extras["search_iterations"] == 20
    assert rec.iterations == 40


def test_auto_with_one_candidate_is_plain_inverting_gradients(faces):
    model, update, x, y = problem(faces, 2)
    kw = {"threat": ThreatModel(labels=y), "iterations": 20, "restarts": 1, "tv_decay": 1.0}
    auto = fedleak.attack("inverting-gradients", model, update, tv="auto", tv_grid=(1e-2,), **kw)
    plain = fedleak.attack("inverting-gradients", model, update, tv=1e-2, **kw)
    assert torch.allclose(auto.images, plain.images, atol=1e-6)


def test_auto_never_sees_the_truth(faces):
    model, update, x, y = problem(faces, 2)
    opts = {"iterations": 30, "tv": "auto"}
    a = fedleak.attack("inverting-gradients", model, update, threat=ThreatModel(labels=y),
                       truth=(x, y), **opts)
    b = fedleak.attack("inverting-gradients", model, update, threat=ThreatModel(labels=y), **opts)
    assert torch.equal(a.images, b.images)
    assert a.extras["tv"] == b.extras["tv"]


@pytest.mark.parametrize("bad", [{"tv": "best"}, {"tv": "auto", "tv_grid": ()},
                                 {"tv": "auto", "tv_grid": (-1.0,)},
                                 {"tv": "auto", "tv_grid": ("a",)},
                                 {"tv": "auto", "search_fraction": 0},
                                 {"tv": "auto", "search_fraction": 1.5}])
def test_auto_options_are_checked(faces, bad):
    model, update, _, y = problem(faces, 1)
    with pytest.raises(ConfigError):
        fedleak.attack("inverting-gradients", model, update, threat=ThreatModel(labels=y),
                       iterations=2, **bad)


# ------------------------------------------------------------------ FedLeak (Fan et al.)


def test_partial_match_keeps_the_largest_entries_and_is_zero_at_the_target():
    g = torch.Generator().manual_seed(0)
    target = {"w": torch.randn(10, 10, generator=g), "b": torch.randn(10, generator=g)}
    pm = PartialMatch(target, {"w": 1.0, "b": 1.0}, keep=0.5, source="candidate", l1=1.0)
    cand = {k: v.unsqueeze(0).repeat(2, *([1] * v.ndim)) for k, v in target.items()}
    assert torch.allclose(pm(cand), torch.zeros(2), atol=1e-6)
    ref = torch.arange(10.0).reshape(1, 10)
    assert pm._mask(ref).sum() == 5 and bool(pm._mask(ref)[0, 5:].all())
    # entries outside the mask do not count: change the smallest half of the candidate
    small = cand["w"].abs() <= cand["w"].abs().flatten(1).median(1).values.view(-1, 1, 1)
    moved = {"w": torch.where(small, cand["w"] * 0.5, cand["w"]), "b": cand["b"]}
    assert torch.allclose(pm(moved), torch.zeros(2), atol=1e-6)
    full = PartialMatch(target, {"w": 1.0, "b": 1.0}, keep=1.0, source="observed", l1=0.0)
    assert bool((full(moved) > 1e-4).all())


def test_median_filter_removes_an_outlier():
    img = torch.full((1, 1, 5, 5), 0.5)
    img[0, 0, 2, 2] = 1.0
    assert torch.allclose(median_filter(img, 3), torch.full_like(img, 0.5))
    assert torch.equal(median_filter(img, 1), img)


@pytest.mark.parametrize("bad", [{"keep": 0}, {"keep": 1.5}, {"mask_from": "truth"},
                                 {"lookahead": 1.0}, {"lookahead_step": 0}, {"median": 2},
                                 {"l1": -1}])
def test_fedleak_options_are_checked(faces, bad):
    model, update, _, y = problem(faces, 1)
    with pytest.raises(ConfigError):
        fedleak.attack("fedleak-fan", model, update, threat=ThreatModel(labels=y), iterations=2,
                       **bad)


def test_fedleak_lookahead_moves_and_fits_its_objective(faces):
    model, update, x, y = problem(faces, 2)
    rec = fedleak.attack("fedleak-fan", model, update, threat=ThreatModel(labels=y),
                         iterations=40, truth=(x, y))
    assert rec.loss_history[-1] < 0.5 * rec.loss_history[0]
    assert rec.fit.truth_residual < 1e-5  # the truth reproduces the update on every mask
    assert rec.extras["lookahead"] == 0.3 and rec.extras["reduce"] == "global"


# ------------------------------------------------- the issue-16 targets, a smaller version


@pytest.mark.parametrize("head", ["flatten", "gap"])
def test_default_beats_a_breaching_like_baseline_by_the_targets_margins(faces, head):
    """The side-by-side's targets on a 16x16 problem (the issue's ConvNet widths, batch 1):
    fedleak's default >= the baseline + 2 dB and >= the flat image + 3 dB. The baseline is
    Inverting Gradients with breaching's settings (one trial, TV 0.2, standard-normal start,
    300 iterations), computed here with fedleak's own implementation (breaching itself is not
    installed for tests). Measured: flatten 46.2 dB against 24.2, GAP 26.4 against 18.8 (flat
    16.3; the consensus of 8 restarts x 250 iterations: 64.8 and 45.5)."""
    torch.manual_seed(0)
    model = build_model("convnet", input_shape=(1, SIZE, SIZE), num_classes=2, head=head)
    x, y = faces[:1], torch.zeros(1, dtype=torch.long)
    update = fedleak.observe(model, x, y, bn_mode="eval")
    threat = ThreatModel(labels=y)
    ours = fedleak.score(fedleak.attack("inverting-gradients", model, update, threat=threat), x)
    base = fedleak.attack("inverting-gradients", model, update, threat=threat, tv=0.2,
                          init="randn", iterations=300)
    base_psnr = fedleak.score(base, x)["psnr"]
    assert ours["psnr"] >= base_psnr + 2, (ours["psnr"], base_psnr)
    assert ours["psnr"] >= ours["flat_psnr"] + 3
