"""The client's batch statistics, read off the change of its BatchNorm running buffers.

A BatchNorm layer in train mode with momentum m updates its buffers once per local step k:
``r_k = (1 - m) r_{k-1} + m s_k``, where ``s_k`` is the mean (or the *unbiased* variance,
``n / (n - 1)`` times the biased one the forward pass normalizes with) of the layer's input on
that step's batch. Unrolled over K steps:

    r_K = (1 - m)^K r_0 + sum_k m (1 - m)^(K - k) s_k

so ``(r_K - (1 - m)^K r_0) / (1 - (1 - m)^K)`` is exactly the weighted mean of the K batch
statistics with weights ``m (1 - m)^(K - k) / (1 - (1 - m)^K)`` (the last step weighs most). For
K = 1 it is the batch statistic itself. The server knows r_0 (it sent the model) and receives
r_K with the update, so BatchNorm leaks these statistics of the private data (Hatamizadeh et al.).

Noise that a defense adds to the buffers is amplified by ``1 / (1 - (1 - m)^K)``, i.e. by
``1 / m`` (10x for PyTorch's default m = 0.1) for one step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from fedleak.device import device_of
from fedleak.errors import ConfigError, UpdateError
from fedleak.models.utils import bn_layers

Stats = dict[str, tuple[torch.Tensor, torch.Tensor]]


def step_weights(momentum: float, steps: int) -> torch.Tensor:
    """Weights (K,) of the K per-step batch statistics in the inferred estimate (sum to 1)."""
    if not 0.0 < momentum <= 1.0:
        raise ConfigError(f"`momentum` of infer_batch_stats must be in (0, 1]; got {momentum!r}.")
    if steps < 1:
        raise ConfigError(f"`steps` of infer_batch_stats must be >= 1; got {steps!r}.")
    k = torch.arange(1, steps + 1, dtype=torch.float64)
    w = momentum * (1.0 - momentum) ** (steps - k)
    return w / (1.0 - (1.0 - momentum) ** steps)


def bn_layer_names(buffers: Mapping[str, torch.Tensor]) -> list[str]:
    """Layer names that carry both running buffers, in the buffers' order."""
    suffix = ".running_mean"
    names = [k[: -len(suffix)] for k in buffers if k.endswith(suffix)]
    return [n for n in names if f"{n}.running_var" in buffers]


def infer_batch_stats(
    before: Mapping[str, torch.Tensor],
    after: Mapping[str, torch.Tensor],
    momentum: float,
    steps: int,
    batch_sizes: Sequence[int] | None = None,
    *,
    spatial: Mapping[str, int] | None = None,
    unbiased: bool = False,
) -> Stats:
    """Per BN layer, the (mean, biased variance) of the client's local batches.

    Args:
        before, after: BN buffers (``<layer>.running_mean`` / ``.running_var``) of the global
            model and after local training.
        momentum: the layers' BatchNorm momentum m.
        steps: number of local steps K (forward passes in train mode).
        batch_sizes: images per step (length K, or one size for all); needed to undo PyTorch's
            unbiased variance. ``None`` leaves the variance as stored (see ``unbiased``).
        spatial: elements per image and channel at each layer's input (H * W of that feature
            map; 1 for BatchNorm1d). Missing layers count as 1. See :func:`bn_spatial_sizes`.
        unbiased: return the variance as PyTorch stores it (n / (n - 1) scale), skipping the
            conversion; an attack that converts its candidates the same way is then exact.

    With K > 1 and unequal per-step counts n_k the conversion divides by the weighted mean of
    ``n_k / (n_k - 1)``, which is exact when the per-step variances are equal and otherwise off
    by a fraction of the (small) spread of those factors; with equal sizes it is exact.
    """
    layers = bn_layer_names(after)
    if not layers:
        raise UpdateError("the update carries no BatchNorm running statistics.")
    w = step_weights(momentum, steps)
    decay = (1.0 - momentum) ** steps
    factor = None
    if batch_sizes is not None and not unbiased:
        sizes = list(batch_sizes)
        if len(sizes) == 1:
            sizes = sizes * steps
        if len(sizes) != steps or any(int(s) < 1 for s in sizes):
            raise ConfigError(
                f"`batch_sizes` of infer_batch_stats must hold {steps} sizes >= 1; got {sizes!r}."
            )
        factor = {}
        for layer in layers:
            hw = int((spatial or {}).get(layer, 1))
            n = torch.tensor([s * hw for s in sizes], dtype=torch.float64)
            # a single element per channel has no variance; PyTorch then stores var * 1 (n=1)
            corr = torch.where(n > 1, n / (n - 1).clamp_min(1), torch.ones_like(n))
            factor[layer] = float((w * corr).sum())
    out: Stats = {}
    for layer in layers:
        pair = []
        for kind in ("running_mean", "running_var"):
            key = f"{layer}.{kind}"
            if key not in before:
                raise UpdateError(f"the global model has no BatchNorm buffer {key!r}.")
            r0, rk = before[key].double(), after[key].double()
            pair.append((rk - decay * r0) / (1.0 - decay))
        mean, var = pair
        if factor is not None:
            var = var / factor[layer]
        dtype = after[f"{layer}.running_mean"].dtype
        out[layer] = (mean.to(dtype), var.to(dtype))
    return out


@torch.no_grad()
def bn_spatial_sizes(model: nn.Module, image_shape: tuple[int, int, int]) -> dict[str, int]:
    """Elements per channel and image (H * W) at each BatchNorm layer's input, from one probe."""
    sizes: dict[str, int] = {}
    hooks = []
    for name, m in bn_layers(model):

        def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor, name=name):
            x = inp[0]
            sizes[name] = int(x[0, 0].numel()) if x.dim() > 2 else 1

        hooks.append(m.register_forward_hook(hook))
    was = {m: m.training for m in model.modules()}
    model.eval()  # eval: the probe must not touch the running buffers
    try:
        model(torch.zeros(1, *image_shape, device=device_of(model)))
    finally:
        for h in hooks:
            h.remove()
        for m, t in was.items():
            m.train(t)
    return sizes
