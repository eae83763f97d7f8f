"""Federated diffusion models: a small UNet, noise schedules, samplers, clients and priors.

Images are [0, 1] outside this package and [-1, 1] inside the network (see
:mod:`fedleak.diffusion.schedule`). Attacks on these clients' updates live in
:mod:`fedleak.attacks.diffusion` ("diffusion-ig", "gidm", "gidm-plus").
"""

from fedleak.diffusion.client import (
    diffusion_loss_name,
    diffusion_update,
    parse_diffusion_loss,
)
from fedleak.diffusion.federation import diffusion_test_loss, diffusion_trainer, t_accuracy
from fedleak.diffusion.prior import load_model, prior_for, save_model, train_prior
from fedleak.diffusion.schedule import (
    NoiseSchedule,
    ddim_sample,
    ddpm_sample,
    diffusion_loss,
    from_model_space,
    to_model_space,
)
from fedleak.diffusion.unet import UNet, UNetConfig, count_parameters

__all__ = [
    "NoiseSchedule",
    "UNet",
    "UNetConfig",
    "count_parameters",
    "ddim_sample",
    "ddpm_sample",
    "diffusion_loss",
    "diffusion_loss_name",
    "diffusion_test_loss",
    "diffusion_trainer",
    "diffusion_update",
    "from_model_space",
    "load_model",
    "parse_diffusion_loss",
    "prior_for",
    "save_model",
    "t_accuracy",
    "to_model_space",
    "train_prior",
]
