"""Feature matching from the last Linear layer's update (Inverting Gradients' ``feature_match``).

Why: for a model whose last layer is ``Linear(F, C)`` with a bias, the update of that layer
carries the layer's input directly. With per-example logit gradients g_ic (FedSGD),

    dW[c] = sum_i g_ic h_i / B,   db[c] = sum_i g_ic / B,   so   dW[c] / db[c] = sum_i w_ic h_i

with w_ic = g_ic / sum_j g_jc: at batch 1 this is the feature vector h = phi(x) itself (exact,
for every class row with db[c] != 0), at batch B a mixture of the images' features weighted by
their logit gradients. The term hands the optimizer this target directly and at its own
scale, instead of as a share of one cosine over all tensors.

Measured (issue 16, docs/attacks.md "The GAP rows"): it helps where the features are large
(flatten head, batch 1: +9 dB) and not after global average pooling, where the default already
matches the 128 pooled features to ~0.06 % and the missing information is spatial.

The term compares the candidate's ratios with the update's, row by row, both computed from
simulated/observed updates by the same formula, so it is exact at any batch size (the candidate
side mixes its own features with its own weights) and needs nothing beyond the update and the
architecture (the threat of Inverting Gradients). For FedAvg deltas the same ratio of the
(replayed or observed) delta is compared, which is a mixture over the local steps too.

Distance per row: ``||h_cand - h_obs||^2 / ||h_obs||^2`` ("l2", default: keeps the features'
scale, i.e. brightness/contrast) or ``1 - cos`` ("cosine"), averaged over the rows with
``|db[c]| > 1e-3 max |db|``, weighted by ``|db[c]|``.
"""

from __future__ import annotations

import torch
from torch import nn

from fedleak.errors import ConfigError

METRICS = ("l2", "cosine")
#: rows whose observed bias entry is below this share of the largest one are left out
ROW_FLOOR = 1e-3
#: candidate bias entries are kept at least this far from 0 (with the observed entry's sign)
TINY = 1e-12


def final_linear(model: nn.Module, names: list[str], who: str) -> tuple[str, str]:
    """Names of the weight and bias of the model's last Linear layer, as matched tensors.

    "Last" is the module registered last among those with parameters (the execution order
    for ``nn.Sequential`` and fedleak's models). ConfigError when that module is not a Linear
    with a bias, or when its tensors are not among the matched ones.
    """
    last: tuple[str, nn.Module] | None = None
    for mname, mod in model.named_modules():
        if any(True for _ in mod.parameters(recurse=False)):
            last = (mname, mod)
    if last is None or not isinstance(last[1], nn.Linear) or last[1].bias is None:
        kind = "none" if last is None else type(last[1]).__name__
        raise ConfigError(
            f"`feature_match` of {who} needs a model whose last layer is a Linear with bias; "
            f"the last layer with parameters is {kind}."
        )
    prefix = f"{last[0]}." if last[0] else ""
    w, b = f"{prefix}weight", f"{prefix}bias"
    if w not in names or b not in names:
        raise ConfigError(
            f"`feature_match` of {who} needs the last Linear's {w!r} and {b!r} among the "
            "matched tensors (check `layers` and the update's tensors)."
        )
    return w, b


class FeatureDistance:
    """Distance between the candidate's and the update's ``dW[c] / db[c]`` rows, (R,)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, metric: str = "l2") -> None:
        if metric not in METRICS:
            raise ConfigError(
                f"`feature_metric` must be one of {', '.join(map(repr, METRICS))}; got {metric!r}."
            )
        b = bias.detach()
        mag = b.abs()
        if not bool(mag.max() > 0):
            raise ConfigError(
                "`feature_match` needs a non-zero bias update of the last Linear layer; "
                "this update's is all zero."
            )
        self.rows = torch.nonzero(mag > ROW_FLOOR * mag.max()).flatten()
        db = b[self.rows]
        self.sign = torch.sign(db)
        self.target = weight.detach()[self.rows] / db[:, None]  # (C', F)
        self.share = mag[self.rows] / mag[self.rows].sum()  # (C',)
        self.metric = metric

    def __call__(self, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``weight`` (R, C, F) and ``bias`` (R, C) of candidate updates -> (R,)."""
        rows = self.rows.to(bias.device)
        db = bias[:, rows]
        sign = self.sign.to(db.dtype)
        db = torch.where(db.abs() < TINY, sign * TINY, db)
        h = weight[:, rows] / db[..., None]  # (R, C', F)
        t = self.target.to(h.dtype)
        if self.metric == "l2":
            err = (h - t).pow(2).sum(-1) / t.pow(2).sum(-1).clamp_min(1e-30)
        else:
            cos = (h * t).sum(-1) / (h.norm(dim=-1) * t.norm(dim=-1) + 1e-12)
            err = 1 - cos
        return err @ self.share.to(err.dtype)
