"""BiDO: bilateral dependency optimization (Peng et al., KDD 2022), a seed-001 baseline.

Loss = CE + sum over hidden layers j of (lambda_x d(X, Z_j) - lambda_y d(Z_j, Y)): hidden
representations are pushed to depend little on the input X (what an inversion recovers) and
much on the label Y (what the task needs). d is BiDO's HSIC or COCO with a Gaussian kernel
(sigma 5) on X and Z and a linear kernel on one-hot Y.

Kernels follow BiDO's public code: the Gaussian kernel's bandwidth is scaled by the feature
dimension D, K_ij = exp(-|a_i - a_j|^2 / (2 sigma^2 D)), which is what makes one sigma fit every
layer. BiDO's "HSIC" (``hsic_normalized_cca`` in its code) is the normalized cross-covariance
operator form: with K~ = HKH (centered) and R_K = K~ (K~ + eps m I)^-1, the value is
sum(R_K * R_L^T) = tr(R_K R_L). It grows with the batch size m (about m - 1 for identical
kernels), and BiDO's published (lambda_x, lambda_y) are tuned to that scale, which is why it is
the default. CKA = tr(K~ L~) / (|K~|_F |L~|_F), in [0, 1], is kept as measure ``"cka"``: at the
same lambdas it is a much weaker regularizer. COCO (Gretton et al. 2005) is
sqrt(lambda_max(K~ L~)) / m, computed exactly (a symmetric eigenproblem); BiDO's code uses a
Frobenius-norm relaxation instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fedleak.defenses.training import (
    TrainingDefense,
    check_number,
    fail,
    local_training,
    register_training_defense,
)
from fedleak.errors import ConfigError
from fedleak.fl.update import ClientUpdate

__all__ = [
    "BiDO",
    "center",
    "cka",
    "coco",
    "dependence",
    "gaussian_kernel",
    "hidden_layers",
    "hsic",
    "linear_kernel",
    "normalized_hsic",
]

MEASURES = ("hsic", "cka", "coco")
HSIC_EPS = 1e-5  # BiDO's ridge: R_K = K~ (K~ + eps m I)^-1
_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh)


def gaussian_kernel(a: torch.Tensor, sigma: float) -> torch.Tensor:
    """(m, m) Gaussian kernel of the rows of ``a`` (m, ...), bandwidth scaled by the dimension."""
    a = a.flatten(1)
    sq = (a * a).sum(1, keepdim=True)
    dist = (sq + sq.T - 2 * a @ a.T).clamp_min(0)
    return torch.exp(-dist / (2 * sigma * sigma * a.shape[1]))


def linear_kernel(a: torch.Tensor) -> torch.Tensor:
    """(m, m) linear kernel a a^T of the rows of ``a`` (e.g. one-hot labels)."""
    a = a.flatten(1)
    return a @ a.T


def center(k: torch.Tensor) -> torch.Tensor:
    """H K H with H = I - 11^T / m: the kernel of the centered features."""
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def hsic(k: torch.Tensor, l_: torch.Tensor, eps: float = HSIC_EPS) -> torch.Tensor:
    """BiDO's dependence measure (``hsic_normalized_cca``): sum(R_K * R_L^T).

    R_K = K~ (K~ + eps m I)^-1 with K~ = HKH, R_L likewise. R_K is close to the projection onto
    the span of the centered features, so the value is about m - 1 for identical kernels and
    grows with m for dependent ones. Computed in float64 (the ridge is 1e-5 m): a solve, not an
    explicit inverse; K~ is symmetric, so K~ (K~ + cI)^-1 = (K~ + cI)^-1 K~.
    """
    m = k.shape[0]
    eye = torch.eye(m, dtype=torch.float64, device=k.device)

    def resolvent(a: torch.Tensor) -> torch.Tensor:
        ac = center(a.to(torch.float64))
        return torch.linalg.solve(ac + eps * m * eye, ac)

    return (resolvent(k) * resolvent(l_).T).sum().to(k.dtype)


def cka(k: torch.Tensor, l_: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """tr(K~ L~) / (|K~|_F |L~|_F) (CKA): 0 for independent samples (as m grows), 1 for K = L."""
    kc, lc = center(k), center(l_)
    # sqrt(sum + eps), not norm(): a constant layer (all-zero features) must not give NaN grads
    norms = ((kc * kc).sum() + eps).sqrt() * ((lc * lc).sum() + eps).sqrt()
    return (kc * lc).sum() / norms


normalized_hsic = cka  # the name this measure had before BiDO's own HSIC was implemented


def coco(k: torch.Tensor, l_: torch.Tensor) -> torch.Tensor:
    """Constrained covariance sqrt(lambda_max(K~ L~)) / m (Gretton et al. 2005).

    K~ L~ has the eigenvalues of V^T K~ V where L~ = V V^T, a symmetric matrix, so the largest
    one comes from ``eigvalsh``. Put the kernel that carries no gradient (the data's or the
    labels') second: its square root is then taken without autograd.
    """
    m = k.shape[0]
    kc, lc = center(k), center(l_)
    with torch.set_grad_enabled(lc.requires_grad):
        evals, vecs = torch.linalg.eigh(lc)
        v = vecs * evals.clamp_min(0).sqrt()
    top = torch.linalg.eigvalsh(v.T @ kc @ v)[-1]
    return (top.clamp_min(0) + 1e-12).sqrt() / m  # eps: a finite gradient at 0


def dependence(k: torch.Tensor, l_: torch.Tensor, measure: str) -> torch.Tensor:
    """d(., .) of BiDO on two kernel matrices: "hsic" (BiDO's), "cka" or "coco"."""
    if measure == "hsic":
        return hsic(k, l_)
    if measure == "cka":
        return cka(k, l_)
    if measure == "coco":
        return coco(k, l_)
    raise fail("measure", "BiDO", "'hsic', 'cka' or 'coco'", measure)


def hidden_layers(model: nn.Module, layers: Sequence[str] | None = None) -> list[str]:
    """Names of the modules whose outputs are the hidden representations Z_j.

    Default: every activation module (ReLU, ...), i.e. the output of each hidden block.
    """
    named = dict(model.named_modules())
    if layers is None:
        names = [k for k, m in named.items() if k and isinstance(m, _ACTIVATIONS)]
        if not names:
            raise ConfigError(
                "BiDO found no activation modules in the model; name the hidden layers with "
                "`layers` (module names from model.named_modules())."
            )
        return names
    missing = [name for name in layers if name not in named or not name]
    if missing:
        raise ConfigError(
            f"`layers` of BiDO must name modules of the model; {missing[0]!r} is not one "
            f"(e.g. {', '.join(k for k in list(named)[1:6])})."
        )
    return list(layers)


@register_training_defense("bido")
@dataclass
class BiDO(TrainingDefense):
    """Bilateral dependency optimization (Peng et al. 2022) as a client trainer.

    Options:
        measure: "hsic" (BiDO's own measure, the default), "cka" (normalized HSIC in [0, 1];
            a much weaker regularizer at BiDO's lambdas) or "coco".
        lambda_x: weight of d(X, Z_j) (minimized); paper values (0.05, 0.5) and (0.1, 2) for HSIC,
            (1, 50) for COCO as (lambda_x, lambda_y).
        lambda_y: weight of d(Z_j, Y) (maximized).
        sigma: Gaussian kernel width for X and Z (5 in BiDO).
        layers: module names of the hidden layers (default: every activation module).
    """

    measure: str = "hsic"
    lambda_x: float = 0.05
    lambda_y: float = 0.5
    sigma: float = 5.0
    layers: list[str] | None = None

    def __post_init__(self) -> None:
        if self.measure not in MEASURES:
            raise fail("measure", "BiDO", "'hsic', 'cka' or 'coco'", self.measure)
        check_number(self.lambda_x, "lambda_x", "BiDO", low=0.0)
        check_number(self.lambda_y, "lambda_y", "BiDO", low=0.0)
        check_number(self.sigma, "sigma", "BiDO", low=0.0, low_open=True)
        if self.layers is not None:
            if isinstance(self.layers, str) or not all(isinstance(s, str) for s in self.layers):
                raise fail("layers", "BiDO", "None or a list of module names", self.layers)
            self.layers = list(self.layers)

    def loss(
        self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, names: Sequence[str]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """CE + sum_j (lambda_x d(X, Z_j) - lambda_y d(Z_j, Y)), and the terms for logging."""
        feats: list[torch.Tensor] = []
        hooks = [
            net.get_submodule(name).register_forward_hook(lambda _m, _i, out: feats.append(out))
            for name in names
        ]
        try:
            logits = net(x)
        finally:
            for h in hooks:
                h.remove()
        ce = F.cross_entropy(logits, y)
        kx = gaussian_kernel(x, self.sigma).detach()
        ky = linear_kernel(F.one_hot(y, logits.shape[1]).to(x.dtype))
        dx = dy = torch.zeros((), dtype=x.dtype, device=x.device)
        for z in feats:
            kz = gaussian_kernel(z, self.sigma)
            dx = dx + dependence(kz, kx, self.measure)
            dy = dy + dependence(kz, ky, self.measure)
        total = ce + self.lambda_x * dx - self.lambda_y * dy
        terms = {"ce": ce.item(), "d_x": dx.item(), "d_y": dy.item()}
        return total, terms

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, **train: Any
    ) -> ClientUpdate:
        names = hidden_layers(model, self.layers)

        def objective(net: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
            return self.loss(net, x, y, names)[0]

        return local_training(model, images, labels, objective, **train)
