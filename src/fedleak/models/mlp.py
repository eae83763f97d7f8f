"""Fully connected classifier.

Its first layer is a biased Linear on the flattened (normalised) image, which analytic
attacks invert exactly: the input is dL/dW_i / dL/db_i for any row i with dL/db_i != 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from fedleak.models.base import MODELS, check_choice, check_int_tuple
from fedleak.models.normalize import Normalize

_CALLER = "model 'mlp'"
_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


@MODELS.register("mlp")
def mlp(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    hidden: Sequence[int] = (256,),
    activation: str = "relu",
    mean: float | Sequence[float] = 0.5,
    std: float | Sequence[float] = 0.5,
) -> nn.Sequential:
    """Normalize-Flatten-[Linear-activation] per ``hidden`` width-Linear (all with bias).

    ``hidden=()`` gives multinomial logistic regression.
    """
    hidden = check_int_tuple(hidden, "hidden", _CALLER, allow_empty=True)
    act = _ACTIVATIONS[check_choice(activation, tuple(_ACTIVATIONS), "activation", _CALLER)]
    c, h, w = input_shape
    layers: list[nn.Module] = [Normalize(c, mean, std), nn.Flatten()]
    in_features = c * h * w
    for size in hidden:
        layers += [nn.Linear(in_features, size), act()]
        in_features = size
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)
