"""Victim models for gradient-inversion attacks.

Every model takes images in [0, 1] of shape (B, C, H, W), normalises them in its first
module (:class:`Normalize`) and returns logits (B, num_classes). All avoid in-place ops so
double backprop works, and all run under ``torch.func.functional_call``/``vmap``
(BatchNorm models in eval mode).
"""

from fedleak.models import convnet, latent, lenet, mlp, resnet  # noqa: F401  (registers builders)
from fedleak.models.base import MODELS, available_models, build_model, model_options
from fedleak.models.normalize import Normalize
from fedleak.models.utils import bn_layers

__all__ = [
    "MODELS",
    "Normalize",
    "available_models",
    "bn_layers",
    "build_model",
    "model_options",
]
