"""Label recovery from the last layer's update, before any image is optimized.

For a mean cross-entropy loss the last layer's bias gradient is g_c = mean_b(p_bc - y_bc), so

* batch 1 (iDLG, Zhao et al. 2020): the true class is the only one with a negative entry
  (bias gradient if the layer has a bias, else the row sums of the weight gradient);
* batch N ("count", bias-corrected, in the spirit of Wainakh et al.'s LLG and Geiping's
  bias-corrected counting): n_c = N * (pbar_c - g_c), with pbar the model's mean softmax output
  estimated on dummy inputs of the right shape; counts are rounded to sum exactly to N. Without a
  bias the weight-gradient row sums are used, divided by the mean feature sum seen on the dummies.

FedAvg deltas are turned into the pseudo-gradient delta / (-lr * K) first. Only the update and
the architecture are used: never the client's data.
"""

from __future__ import annotations

import torch
from torch import nn

from fedleak.attacks.simulate import pseudo_gradient
from fedleak.errors import ConfigError
from fedleak.fl.update import ClientUpdate


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The model's last ``nn.Linear`` (its classifier) and its name."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ConfigError("label recovery needs a model whose last layer is an nn.Linear.")
    return found[-1]


def _last_layer_grads(
    model: nn.Module, update: ClientUpdate
) -> tuple[torch.Tensor, torch.Tensor | None]:
    name, layer = last_linear(model)
    grads = pseudo_gradient(update)
    w = grads.get(f"{name}.weight")
    if w is None:
        raise ConfigError(f"the update carries no gradient for the classifier {name!r}.weight.")
    b = grads.get(f"{name}.bias") if layer.bias is not None else None
    return w, b


def idlg_label(model: nn.Module, update: ClientUpdate) -> torch.Tensor:
    """iDLG: the label of a single image, exact for cross-entropy and non-negative features."""
    w, b = _last_layer_grads(model, update)
    signal = b if b is not None else w.sum(1)
    return signal.argmin().reshape(1)


@torch.no_grad()
def count_labels(
    model: nn.Module,
    update: ClientUpdate,
    num_images: int,
    image_shape: tuple[int, int, int],
    *,
    probes: int = 32,
    seed: int = 0,
) -> torch.Tensor:
    """Bias-corrected label counting for a batch; returns sorted labels (N,)."""
    w, b = _last_layer_grads(model, update)
    name, layer = last_linear(model)
    gen = torch.Generator().manual_seed(seed)
    dummies = torch.rand((probes, *image_shape), generator=gen)
    feats: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda m, i, o: feats.append(i[0].detach()))
    was_training = model.training
    model.eval()
    try:
        probs = model(dummies).softmax(-1).mean(0)
    finally:
        hook.remove()
        model.train(was_training)
    if b is not None:
        g = b
    else:
        fsum = feats[0].flatten(1).sum(1).mean().clamp_min(1e-8)
        g = w.sum(1) / fsum
    est = (num_images * (probs - g)).clamp_min(0)
    return _round_counts(est, num_images)


def _round_counts(est: torch.Tensor, n: int) -> torch.Tensor:
    """Integer counts summing to n (largest remainder), expanded to a sorted label vector."""
    if float(est.sum()) <= 0:
        est = torch.ones_like(est)
    est = est * (n / est.sum())
    counts = est.floor().long()
    rest = n - int(counts.sum())
    if rest > 0:
        counts[(est - counts).argsort(descending=True)[:rest]] += 1
    return torch.repeat_interleave(torch.arange(est.numel()), counts)


def recover_labels(
    model: nn.Module,
    update: ClientUpdate,
    num_images: int,
    image_shape: tuple[int, int, int],
    *,
    seed: int = 0,
) -> tuple[torch.Tensor, str]:
    """Labels for ``num_images`` images and the method used ("idlg" or "count")."""
    if num_images == 1:
        return idlg_label(model, update), "idlg"
    return count_labels(model, update, num_images, image_shape, seed=seed), "count"
