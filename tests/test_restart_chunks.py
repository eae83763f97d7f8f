"""Memory chunks beyond Inverting Gradients: GradInversion and the diffusion attacks.

Batched restarts run in chunks that fit ``memory_budget``; a chunked run must give the same
result as the unchunked one (same seed), and a budget below one restart is a one-line error.
Budgets are set from :func:`fedleak.device.restart_bytes` so that 4 restarts run as 2 chunks.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import fedleak
from fedleak.device import restart_bytes
from fedleak.errors import ConfigError
from fedleak.fl.threat import ThreatModel
from fedleak.models import build_model

SHAPE = (1, 8, 8)


pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def _classifier(protocol: str) -> tuple[Any, Any, ThreatModel]:
    torch.manual_seed(0)
    model = build_model("convnet", input_shape=SHAPE, num_classes=2, widths=(4, 8),
                        pool_after=(0,))
    x, y = _images(2), torch.tensor([0, 1])
    if protocol == "fedavg":  # replay: restarts get different label orders (sliced per chunk)
        update = fedleak.observe(model, x, y, protocol="fedavg", lr=0.1, local_steps=2,
                                 batch_size=1, seed=3)
    else:
        update = fedleak.observe(model, x, y, bn_mode="eval")
    return model, update, ThreatModel(labels=y)


def _unet_call(model: torch.nn.Module, x: torch.Tensor) -> Any:
    return model(x, torch.zeros(x.shape[0], device=x.device))


def _diffusion(share_noise: bool, n: int = 2) -> tuple[Any, Any]:
    from fedleak.diffusion import UNet, UNetConfig, diffusion_update

    torch.manual_seed(0)
    model = UNet(UNetConfig(image_size=8, channels=8, groups=4, num_timesteps=16))
    t = torch.tensor([3, 11][:n])
    update = diffusion_update(model, _images(n), t=t, share_noise=share_noise)
    return model, update


@pytest.mark.parametrize("protocol", ["fedsgd", "fedavg"])
def test_gradinversion_chunked_equals_unchunked(protocol: str) -> None:
    model, update, threat = _classifier(protocol)
    per = restart_bytes(model, SHAPE, 2)
    assert per > 0
    # group consistency couples the restarts: every chunk must pull toward the mean of all 4
    opts = {"iterations": 6, "restarts": 4, "seed": 0, "group_consistency": 0.5,
            "group_start": 0.0}
    whole = fedleak.attack("gradinversion", model, update, threat=threat, **opts)
    chunked = fedleak.attack("gradinversion", model, update, threat=threat,
                             memory_budget=int(2.5 * per), **opts)
    assert "restart_chunk" not in whole.extras
    assert chunked.extras["restart_chunk"] == 2
    assert chunked.restart_losses == pytest.approx(whole.restart_losses, rel=1e-4)
    torch.testing.assert_close(chunked.restart_images, whole.restart_images, rtol=0, atol=1e-4)
    assert torch.equal(chunked.labels, whole.labels)
    # the BN diagnostics cover every restart, not the last chunk
    assert len(chunked.extras["bn_loss_last"]) == 4
    assert chunked.extras["bn_loss_last"] == pytest.approx(whole.extras["bn_loss_last"], rel=1e-4)


@pytest.mark.parametrize("joint_noise", [False, True])
def test_diffusion_ig_chunked_equals_unchunked(joint_noise: bool) -> None:
    model, update = _diffusion(share_noise=not joint_noise)
    per = restart_bytes(model, SHAPE, 2, _unet_call)
    assert per > 0
    opts: dict[str, Any] = {"iterations": 4, "restarts": 4, "seed": 0}
    if joint_noise:  # eps is a variable and t a per-restart constant, sliced per chunk
        opts |= {"joint_noise": True, "t": [3, 11]}
    threat = ThreatModel("D")
    whole = fedleak.attack("diffusion-ig", model, update, threat=threat, **opts)
    chunked = fedleak.attack("diffusion-ig", model, update, threat=threat,
                             memory_budget=int(2.5 * per), **opts)
    assert "restart_chunk" not in whole.extras
    assert chunked.extras["restart_chunk"] == 2
    assert chunked.restart_losses == pytest.approx(whole.restart_losses, rel=1e-4)
    torch.testing.assert_close(chunked.restart_images, whole.restart_images, rtol=0, atol=1e-4)


def test_gidm_plus_t_search_is_chunked_too() -> None:
    """The t search batches candidates x restarts: the largest R of all; a small budget chunks
    it (and both phases) and finds the same timesteps."""
    from fedleak.diffusion import UNet, UNetConfig

    model, update = _diffusion(share_noise=False, n=1)
    torch.manual_seed(1)
    prior = UNet(UNetConfig(image_size=8, channels=8, groups=4, num_timesteps=16)).eval()
    opts: dict[str, Any] = {"prior_model": prior, "phase1_iterations": 2, "ddim_steps": 2,
                            "phase2_iterations": 2, "restarts": 2, "search_iterations": 2,
                            "t_candidates": [3, 11], "t_search": "enumerate", "seed": 0}
    threat = ThreatModel("D")
    whole = fedleak.attack("gidm-plus", model, update, threat=threat, **opts)
    per = restart_bytes(model, SHAPE, 1, _unet_call)
    # one restart of phase 1 also holds the prior's DDIM forwards: 1 restart per chunk fits
    budget = int(per * 1.5 + 2 * restart_bytes(prior, SHAPE, 1, _unet_call))
    chunked = fedleak.attack("gidm-plus", model, update, threat=threat, memory_budget=budget,
                             **opts)
    assert chunked.extras["restart_chunk"] == 1
    assert chunked.extras["t"] == whole.extras["t"]
    assert chunked.restart_losses == pytest.approx(whole.restart_losses, rel=1e-3)


@pytest.mark.parametrize("name", ["gradinversion", "diffusion-ig"])
def test_a_budget_below_one_restart_is_a_one_line_error(name: str) -> None:
    if name == "gradinversion":
        model, update, threat = _classifier("fedsgd")
        per = restart_bytes(model, SHAPE, 2)
    else:
        model, update = _diffusion(share_noise=True)
        threat = ThreatModel("D")
        per = restart_bytes(model, SHAPE, 2, _unet_call)
    with pytest.raises(ConfigError, match="more than the memory budget") as err:
        fedleak.attack(name, model, update, threat=threat, memory_budget=per // 2,
                       iterations=2, restarts=2)
    assert "\n" not in str(err.value)
    assert "MiB" in str(err.value)
