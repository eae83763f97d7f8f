"""Dropout and drop-path: the replay runs them as the client did (train mode, sampled masks).

The client trains with its stochastic layers active; a replay with them off computes a forward
the client never ran, so even the true images cannot reproduce the update. With sampled masks
the true images reproduce it exactly whenever the drawn masks equal the client's, the result
says how the masks were modelled, and the fit check reports the truth's residual as it is.
"""

from __future__ import annotations

import torch
from torch import nn

import fedleak
from fedleak.attacks.fit import FitTerms, verdict
from fedleak.attacks.simulate import UpdateSimulator, gradient_distance
from fedleak.fl.threat import ThreatModel

SHAPE = (1, 8, 8)


class DropPath(nn.Module):
    """x + branch(x), the branch dropped per sample in train mode (stochastic depth)."""

    def __init__(self, channels: int, drop_prob: float) -> None:
        super().__init__()
        self.branch = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.branch(x)
        if self.training:
            keep = (torch.rand(x.shape[0], 1, 1, 1, device=x.device) >= self.drop_prob).float()
            b = b * keep / (1 - self.drop_prob)
        return x + b


def _model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), DropPath(4, 0.2), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(16, 6), nn.ReLU(), nn.Dropout(0.2), nn.Linear(6, 2),
    )
    net.input_shape = SHAPE  # type: ignore[assignment]
    return net


def _client() -> tuple[nn.Module, torch.Tensor, torch.Tensor, fedleak.ClientUpdate]:
    model = _model()
    x = torch.rand(1, *SHAPE, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([1])
    torch.manual_seed(3)  # the client's masks
    return model, x, y, fedleak.observe(model, x, y)


def test_true_images_reproduce_the_update_with_the_clients_masks() -> None:
    model, x, y, update = _client()
    sim = UpdateSimulator(model, update, mode="gradient")
    assert sim.stochastic == "sampled"
    state = torch.get_rng_state()
    residuals = [
        float(gradient_distance(sim(x[None], y[None]), update.tensors, metric="cosine"))
        for _ in range(30)
    ]
    assert torch.equal(state, torch.get_rng_state())  # the caller's random state is untouched
    # some draws equal the client's masks: exact; others do not (dropout off: never exact)
    assert min(residuals) < 1e-6, residuals
    assert max(residuals) > 1e-3, residuals
    again = UpdateSimulator(model, update, mode="gradient")  # seeded: the same draws again
    first = float(gradient_distance(again(x[None], y[None]), update.tensors, metric="cosine"))
    assert first == residuals[0]


def test_attack_says_how_masks_were_modelled_and_fit_check_is_honest() -> None:
    model, x, y, update = _client()
    threat = ThreatModel(labels=y)
    rec = fedleak.attack("inverting-gradients", model, update, threat=threat, iterations=20)
    assert rec.extras["stochastic_layers"] == "sampled"
    # the fit check's truth term: the residual of the true images under one replay draw
    sim = UpdateSimulator(model, update, mode="gradient")
    res = [
        float(gradient_distance(sim(x[None], y[None]), update.tensors, metric="cosine"))
        for _ in range(8)
    ]
    truth = FitTerms(objective=res[0], residual=res[0])
    attack = FitTerms(objective=rec.restart_losses[rec.best_restart], residual=1.0)
    expected = "fits" if res[0] <= 1e-2 else "approximate-replay"
    assert verdict(attack, truth).verdict == expected
    assert any(r > 1e-2 for r in res)  # draws that miss the client's masks say so


def test_models_without_random_layers_replay_deterministically() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    net.input_shape = SHAPE  # type: ignore[assignment]
    x, y = torch.rand(1, *SHAPE), torch.tensor([0])
    update = fedleak.observe(net, x, y)
    sim = UpdateSimulator(net, update, mode="gradient")
    assert sim.stochastic == "none"
    assert float(gradient_distance(sim(x[None], y[None]), update.tensors, metric="cosine")) < 1e-6


def test_per_restart_masks_stay_fixed_and_differ_between_restarts() -> None:
    model, x, y, update = _client()
    sim = UpdateSimulator(model, update, mode="gradient", masks="per-restart")
    assert sim.stochastic == "per-restart"
    xs, ys = x[None].expand(8, -1, -1, -1, -1), y[None].expand(8, -1)
    a, b = sim(xs, ys), sim(xs, ys)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same hypotheses every call
    assert any(not torch.equal(a[k][0], a[k][i]) for k in a for i in range(1, 8))
    sampled = UpdateSimulator(model, update, mode="gradient")
    c, d = sampled(xs, ys), sampled(xs, ys)
    assert any(not torch.equal(c[k], d[k]) for k in c)  # fresh masks every call


class _Residual(nn.Module):
    """x + drop_path(conv(relu(conv(x)))), as in EfficientNet's drop-connect."""

    def __init__(self, channels: int, drop_prob: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.body(x)
        if self.training:
            keep = (torch.rand(x.shape[0], 1, 1, 1, device=x.device) >= self.drop_prob).float()
            b = b * keep / (1 - self.drop_prob)
        return x + b


def test_attack_on_a_drop_path_client_beats_the_flat_image() -> None:
    from fedleak.data import load_dataset
    from fedleak.metrics import flat_psnr

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), *(_Residual(8, 0.3) for _ in range(3)),
        nn.Flatten(), nn.Linear(8 * 16 * 16, 2),
    )
    model.input_shape = (1, 16, 16)  # type: ignore[assignment]
    ds = load_dataset("lfw-faces", size=16, split="all")
    x, y = ds.images[ds.labels == 0][:1].clone(), torch.tensor([0])
    torch.manual_seed(2)  # the client's masks
    update = fedleak.observe(model, x, y, bn_mode="eval")
    rec = fedleak.attack(
        "inverting-gradients", model, update, threat=ThreatModel(labels=y), iterations=200
    )
    assert rec.extras["stochastic_layers"] == "sampled"
    # measured: 25.1 dB; with the masks off (the old replay) 20.0; the flat image 16.3
    assert fedleak.score(rec, x)["psnr"] > float(flat_psnr(x).mean()) + 6
