"""Analytic inversion of a leading fully-connected layer (Phong et al. 2017; Geiping et al.).

For a first layer ``z = W x + b`` on the (normalized, flattened) image, the loss gradient of row
j is ``dL/dW_j = sum_i d_ij x_i`` and ``dL/db_j = sum_i d_ij`` (d_ij = dL/dz_ij, batch mean
included). What this makes exact, and what this attack does:

* **One image:** every row with ``dL/db_j != 0`` gives ``x = dL/dW_j / dL/db_j``; the rows are
  combined by least squares (``sum_j b_j W_j / sum_j b_j^2``), exact up to float rounding.
* **A batch:** a row is a mix of all images unless only one image reached it (a ReLU unit
  inactive for all others), and then its ratio is exactly that image. Such rows are found as
  ratios that *several* rows reproduce to float precision (a mix of images does not repeat).
  The attack returns a batch only when it finds N such images and they explain the whole
  first-layer gradient (least-squares residual below ``tolerance``); otherwise it refuses,
  since anything else would be an approximation, not a recovery.
* **FedAvg:** with SGD (any momentum) every local step adds rows proportional to [x_i, 1], so
  the ratios above survive K steps unchanged; weight decay is undone for one step (the server
  knows W), and Adam (per-element scaling) is refused.

The image is un-normalized with the model's :class:`~fedleak.models.Normalize` mean/std back to
[0, 1] pixels. Labels are not needed (``uses_labels=False``) and none are returned.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedleak.attacks.base import Attack, AttackInputs, Reconstruction, register_attack
from fedleak.attacks.fit import FitTerms
from fedleak.errors import ConfigError, InsufficientKnowledgeError, UpdateError
from fedleak.fl.update import ClientUpdate
from fedleak.models.normalize import Normalize

_TRANSPARENT = (Normalize, nn.Flatten, nn.Identity)


def _flat_modules(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules in run order, nested Sequentials expanded (only Sequentials have a known order)."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        if isinstance(child, nn.Sequential):
            out += [(f"{name}.{n}", m) for n, m in _flat_modules(child)]
        else:
            out.append((name, child))
    return out


def leading_linear(
    model: nn.Module, image_shape: tuple[int, int, int]
) -> tuple[str, nn.Linear, Normalize | None]:
    """The biased ``nn.Linear`` that sees the image first, its name and the Normalize before it.

    Raises :class:`ConfigError` naming the layer that stands in the way otherwise.
    """
    mods = _flat_modules(model) if isinstance(model, nn.Sequential) else []
    norm = None
    for name, m in mods:
        if isinstance(m, Normalize):
            norm = m
            continue
        if isinstance(m, _TRANSPARENT):
            continue
        if isinstance(m, nn.Linear) and m.bias is not None:
            if m.in_features != math.prod(image_shape):
                break
            return name, m, norm
        raise ConfigError(
            "attack 'analytic' inverts a leading fully-connected layer with bias; this model's "
            f"first layer is {type(m).__name__} ({name!r}). Use an optimization attack "
            "(e.g. inverting-gradients) instead."
        )
    raise ConfigError(
        "attack 'analytic' needs a model that starts with [Normalize, Flatten,] a biased "
        f"nn.Linear on all {math.prod(image_shape)} pixels of {tuple(image_shape)} images "
        "(e.g. build_model('mlp')); this model has none."
    )


def _relu_follows(model: nn.Module, name: str) -> bool:
    """Whether the module right after the leading layer ``name`` is a ReLU."""
    mods = _flat_modules(model)
    names = [n for n, _ in mods]
    i = names.index(name)
    return i + 1 < len(mods) and isinstance(mods[i + 1][1], nn.ReLU)


def _first_layer_signal(
    update: ClientUpdate, model: nn.Module, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows proportional to the first layer's loss gradient (W part, b part), in float64."""
    wk, bk = f"{name}.weight", f"{name}.bias"
    if wk not in update.tensors or bk not in update.tensors:
        raise UpdateError(
            f"attack 'analytic' needs the update of {wk!r} and {bk!r}; the update lacks them."
        )
    w, b = update.tensors[wk].double(), update.tensors[bk].double()
    if update.kind == "gradient":
        return w, b
    cfg = update.training
    if cfg is None:
        raise InsufficientKnowledgeError(
            "attack 'analytic' on a FedAvg update needs the training details (level C or higher)."
        )
    if cfg.optimizer != "sgd":
        raise ConfigError(
            f"attack 'analytic' is exact for SGD clients only; this client used {cfg.optimizer!r}, "
            "whose per-element scaling breaks the weight/bias ratio."
        )
    if cfg.weight_decay:
        if cfg.local_steps != 1:
            raise ConfigError(
                "attack 'analytic' undoes weight decay only for one local step; this client took "
                f"{cfg.local_steps}."
            )
        params = dict(model.named_parameters())
        w0, b0 = params[wk].detach().double(), params[bk].detach().double()
        # delta = -lr (g + wd p0)  ->  g = -delta / lr - wd p0
        return -w / cfg.lr - cfg.weight_decay * w0, -b / cfg.lr - cfg.weight_decay * b0
    return w, b  # a common factor (-lr, momentum sums) cancels in the ratio


def _explain(w: torch.Tensor, b: torch.Tensor, xs: torch.Tensor) -> float:
    """Relative residual of fitting every row [W_j, b_j] by combinations of [x_i, 1]."""
    ones = torch.ones(xs.shape[0], 1, dtype=xs.dtype, device=xs.device)
    basis = torch.cat([xs, ones], 1)  # (N, D+1)
    rows = torch.cat([w, b[:, None]], 1)  # (H, D+1)
    coef = torch.linalg.lstsq(basis.T, rows.T).solution  # (N, H)
    res = rows - coef.T @ basis
    return float(res.norm() / rows.norm().clamp_min(1e-300))


def _groups(
    w: torch.Tensor, b: torch.Tensor, tol: float
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Ratios that >= 2 rows reproduce to precision ``tol``: (input, row mask) per group."""
    rows = torch.nonzero(b.abs() > 1e-9 * b.abs().max()).flatten()
    ratios = w[rows] / b[rows, None]
    scale = ratios.norm(dim=1)
    close = torch.cdist(ratios, ratios) <= tol * (scale[:, None] + scale[None, :]) / 2
    out = []
    used = torch.zeros(rows.numel(), dtype=torch.bool, device=rows.device)
    for j in range(rows.numel()):
        if used[j]:
            continue
        members = close[j] & ~used
        used |= members
        if int(members.sum()) >= 2:
            mask = torch.zeros_like(b, dtype=torch.bool)
            mask[rows[members]] = True
            out.append((ratios[members].mean(0), mask))
    return sorted(out, key=lambda g: -int(g[1].sum()))


def _separable_inputs(
    w: torch.Tensor,
    b: torch.Tensor,
    w0: torch.Tensor,
    b0: torch.Tensor,
    n: int,
    tol: float,
    max_sets: int = 20_000,
) -> tuple[torch.Tensor | None, int]:
    """N inputs, each reproduced by rows that (ReLU) no other of the N activates.

    Rows active for several images all mix them with the same weights when the loss gradients
    are collinear (e.g. 2 classes), so repeated ratios alone do not prove a single image; the
    global layer (w0, b0) tells which images activate each row, and a valid set is one where
    every image's rows are active for it and for none of the others.
    """
    groups = _groups(w, b, tol)
    if len(groups) < n:
        return None, len(groups)
    xs = torch.stack([g[0] for g in groups])
    masks = torch.stack([g[1] for g in groups])  # (G, H) rows giving each ratio
    active = (xs @ w0.T + b0) > 0  # (G, H) rows each candidate activates
    own = (masks & active).sum(1) == masks.sum(1)  # a true image activates its own rows
    cand = [i for i in range(len(groups)) if bool(own[i])]
    for k, subset in enumerate(itertools.combinations(cand, n)):
        if k >= max_sets:
            break
        idx = torch.tensor(subset)
        act = active[idx][:, None, :] & masks[idx][None, :, :]  # (n, n, H): i activates rows of j
        act[torch.arange(n), torch.arange(n)] = False
        if not bool(act.any()):
            return xs[idx], len(groups)
    return None, len(groups)


def closed_form_result(
    attack: Attack,
    inputs: AttackInputs,
    xs: torch.Tensor,
    norm: Any,
    residual: float,
    *,
    iterations: int,
    start: float,
    extras: dict[str, Any],
) -> Reconstruction:
    """Package inputs recovered in closed form (N, D), in the layer's input space, as images.

    ``norm``: the model's input normalization (undone here), or None. The residual is the
    attack's only loss value.
    """
    images = xs.reshape(inputs.num_images, *inputs.image_shape)
    if norm is not None:
        images = images * norm.std.double() + norm.mean.double()
    images = images.to(torch.get_default_dtype()).clamp(0, 1)
    return Reconstruction(
        images=images,
        labels=None,
        attack=attack.name,
        threat_level=inputs.threat.level,
        loss_history=[residual],
        restart_losses=[residual],
        best_restart=0,
        iterations=iterations,
        seconds=time.perf_counter() - start,
        label_method="none",
        extras=extras,
    )


@register_attack("analytic")
@dataclass(frozen=True)
class Analytic(Attack):
    """Closed-form recovery from a leading fully-connected layer; no optimization.

    Knowledge: the architecture (level B) for FedSGD; FedAvg updates also need the training
    details (level C). ``tolerance``: relative precision to which rows must agree and the
    recovered batch must explain the gradient (float32 updates reach about 1e-6).

    Options:
        tolerance: relative precision the recovery must reach, or the attack refuses.
    """

    tolerance: float = 1e-4

    uses_labels = False

    def objective_at(
        self, inputs: AttackInputs, images: torch.Tensor, labels: torch.Tensor | None
    ) -> FitTerms:
        """How much of the first layer's gradient ``images`` leave unexplained (relative
        least-squares residual, the quantity :meth:`reconstruct` checks); labels are unused."""
        name, _, norm = leading_linear(inputs.model, inputs.image_shape)
        w, b = _first_layer_signal(inputs.update, inputs.model, name)
        x = images.detach().double().reshape(-1, *inputs.image_shape)
        if norm is not None:
            x = (x - norm.mean.double()) / norm.std.double()
        residual = _explain(w, b, x.reshape(x.shape[0], -1))
        return FitTerms(objective=residual, residual=residual)

    def reconstruct(self, inputs: AttackInputs) -> Reconstruction:
        """Divide weight rows by bias entries; refuse whatever would not be exact."""
        if not self.tolerance > 0:
            raise ConfigError(f"`tolerance` of analytic must be > 0; got {self.tolerance!r}.")
        start = time.perf_counter()
        shape, n = inputs.image_shape, inputs.num_images
        name, _, norm = leading_linear(inputs.model, shape)
        w, b = _first_layer_signal(inputs.update, inputs.model, name)
        if not bool((b != 0).any()):
            raise UpdateError(
                f"the bias update of {name!r} is all zero: no row carries the input (dead layer, "
                "or the update was pruned)."
            )
        if n == 1:
            xs = ((b[:, None] * w).sum(0) / b.pow(2).sum())[None]
            groups = 1
        else:
            if not _relu_follows(inputs.model, name):
                raise ConfigError(
                    f"attack 'analytic' separates a batch only when a ReLU follows {name!r} "
                    "(rows that a single image reaches); with this activation every row mixes "
                    f"all {n} images. Use batch 1 or an optimization attack."
                )
            layer = dict(inputs.model.named_modules())[name]
            w0, b0 = layer.weight.detach().double(), layer.bias.detach().double()
            xs, groups = _separable_inputs(w, b, w0, b0, n, self.tolerance)
            if xs is None:
                found = (
                    f"found {groups} of {n} such images"
                    if groups < n
                    else f"none of the {groups} repeated ratios form {n} single images"
                )
                raise ConfigError(
                    f"attack 'analytic' recovers a batch only when each image has rows of its "
                    f"own in {name!r}; {found}, so the images are mixed and no exact recovery "
                    "exists. Use batch 1 or an optimization attack."
                )
        residual = _explain(w, b, xs)
        if n > 1 and residual > self.tolerance * 10:
            raise ConfigError(
                f"attack 'analytic': the {n} separable images leave {residual:.1e} of the "
                f"gradient of {name!r} unexplained (more than {n} images, or noise on the update); "
                "refusing an inexact recovery."
            )
        return closed_form_result(
            self, inputs, xs, norm, residual, iterations=1, start=start,
            extras={"layer": name, "residual": residual, "separable_images": groups},
        )
