"""GradInversion's BN-statistics term comes from the train-mode forward that makes the gradient.

Yin et al. match the batch statistics of the very forward whose gradient is matched. A client
that trained BatchNorm in train mode normalized every layer with its batch's own statistics, so
the features (and their statistics) of a separate eval-mode forward are not the ones the client
computed. The check: at the attack's first iterate (a known prior image), the term it reports
equals the term computed by hand from a train-mode forward of that image.
"""

from __future__ import annotations

import copy

import pytest
import torch

import fedleak
from fedleak.fl.threat import ThreatModel
from fedleak.models import build_model
from fedleak.models.utils import bn_layers

SHAPE = (1, 8, 8)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("convnet", input_shape=SHAPE, num_classes=2, widths=(4, 8, 8))


def _forward_term(model: torch.nn.Module, x: torch.Tensor, train: bool) -> float:
    """Sum over BN layers of ||batch mean - running mean|| + ||batch var - running var||, the
    batch statistics taken of each layer's input in a train- or eval-mode forward of ``x``."""
    net = copy.deepcopy(model).train(train)
    seen = {}
    for name, m in bn_layers(net):
        m.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, inp[0]))
    with torch.no_grad():
        net(x)
    total = 0.0
    for name, m in bn_layers(model):
        f = seen[name].transpose(0, 1).flatten(1)  # (channels, N * H * W)
        total += float((f.mean(1) - m.running_mean).norm())
        total += float((f.var(1, unbiased=False) - m.running_var).norm())
    return total


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_bn_term_is_read_off_the_clients_forward(bn_mode: str) -> None:
    model = _model()
    gen = torch.Generator().manual_seed(0)
    images, labels = torch.rand(2, *SHAPE, generator=gen), torch.tensor([0, 1])
    update = fedleak.observe(model, images, labels, bn_mode=bn_mode)
    prior = torch.rand(SHAPE, generator=gen)
    threat = ThreatModel("D", labels=labels, prior=prior)
    rec = fedleak.attack(
        "gradinversion", model, update, threat=threat, iterations=1, init="prior"
    )
    x0 = prior.expand(2, *SHAPE)
    # eval-mode BN: the client normalized with the running statistics, as an eval forward does
    expected = _forward_term(model, x0, train=bn_mode == "train")
    assert rec.extras["bn_loss_first"][0] == pytest.approx(expected, rel=1e-4)
    assert rec.extras["bn_statistics"] == ("train-forward" if bn_mode == "train" else "eval")
