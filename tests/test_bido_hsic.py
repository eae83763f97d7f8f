"""BiDO's own dependence measure (issue 11, defect 2): ``hsic`` is BiDO's normalized
cross-covariance form (``hsic_normalized_cca``), not CKA, and BiDO trains with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from fedleak.defenses import make_training_defense
from fedleak.defenses.bido import (
    BiDO,
    cka,
    gaussian_kernel,
    hidden_layers,
    hsic,
    linear_kernel,
)
from fedleak.models import build_model

SHAPE = (1, 16, 16)


def _np_hsic(k: np.ndarray, l_: np.ndarray, eps: float = 1e-5) -> float:
    """The published formula, by hand: K~ = HKH, R_K = K~ (K~ + eps m I)^-1, sum(R_K * R_L^T)."""
    m = k.shape[0]
    h = np.eye(m) - np.ones((m, m)) / m
    kc, lc = h @ k @ h, h @ l_ @ h
    rk = kc @ np.linalg.inv(kc + eps * m * np.eye(m))
    rl = lc @ np.linalg.inv(lc + eps * m * np.eye(m))
    return float((rk * rl.T).sum())


def _np_gauss(a: np.ndarray, sigma: float = 5.0) -> np.ndarray:
    a = a.reshape(len(a), -1)
    d = ((a[:, None, :] - a[None, :, :]) ** 2).sum(-1)
    return np.exp(-d / (2 * sigma * sigma * a.shape[1]))


def test_hsic_matches_a_hand_computation_of_bidos_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 3, 8, 8, generator=g, dtype=torch.float64)
    z = torch.rand(12, 40, generator=g, dtype=torch.float64)
    y = F.one_hot(torch.randint(0, 4, (12,), generator=g), 4).double()
    kx, kz, ky = gaussian_kernel(x, 5.0), gaussian_kernel(z, 5.0), linear_kernel(y)
    assert np.allclose(kx.numpy(), _np_gauss(x.numpy()), atol=1e-12)
    for a, b in ((kz, kx), (kz, ky), (kx, kx)):
        hand = _np_hsic(a.numpy(), b.numpy())
        assert float(hsic(a, b)) == pytest.approx(hand, rel=1e-6)
    # float32 inputs (what training feeds it) give the same value
    assert float(hsic(kz.float(), kx.float())) == pytest.approx(float(hsic(kz, kx)), rel=1e-3)


def test_hsic_grows_with_batch_size_unlike_cka():
    g = torch.Generator().manual_seed(1)
    values, ckas = {}, {}
    for m in (8, 32, 128):
        x = torch.rand(m, 3 * 32 * 32, generator=g, dtype=torch.float64)
        z = torch.rand(m, 256, generator=g, dtype=torch.float64)
        kz, kx = gaussian_kernel(z, 5.0), gaussian_kernel(x, 5.0)
        values[m], ckas[m] = float(hsic(kz, kx)), float(cka(kz, kx))
    # BiDO's scale: about 7 at m = 8 and 28 at 32 on random features (FIELD.md section 7)
    assert 6.0 < values[8] < 7.5
    assert 22.0 < values[32] < 31.5
    assert values[128] > 1.5 * values[32]
    assert all(0.0 <= c <= 1.0 for c in ckas.values())


def test_bido_trains_with_hsic_at_the_seeds_lambda_pairs():
    torch.manual_seed(0)
    model = build_model("latent-net", input_shape=SHAPE, num_classes=3, width=2, pool=2)
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(8, *SHAPE, generator=g), torch.randint(0, 3, (8,), generator=g)
    names = hidden_layers(model)
    assert BiDO().measure == "hsic"
    feats: list[torch.Tensor] = []
    hooks = [
        model.get_submodule(n).register_forward_hook(lambda _m, _i, o: feats.append(o.detach()))
        for n in names
    ]
    logits = model(x)
    for h in hooks:
        h.remove()
    kx, ky = gaussian_kernel(x, 5.0), linear_kernel(F.one_hot(y, 3).float())
    want_x = sum(_np_hsic(gaussian_kernel(z, 5.0).double().numpy(), kx.double().numpy())
                 for z in feats)
    want_y = sum(_np_hsic(gaussian_kernel(z, 5.0).double().numpy(), ky.double().numpy())
                 for z in feats)
    ce = float(F.cross_entropy(logits.detach(), y))
    for lx, ly in ((0.05, 0.5), (0.1, 2.0)):  # the published HSIC pairs
        bido = make_training_defense("bido", lambda_x=lx, lambda_y=ly)
        loss, terms = bido.loss(model, x, y, names)
        assert terms["d_x"] == pytest.approx(want_x, rel=1e-3)
        assert terms["d_y"] == pytest.approx(want_y, rel=1e-3)
        # BiDO's scale: several units per layer at batch 8 (CKA could give at most 1 per layer)
        assert terms["d_x"] > 3 * len(names)
        assert loss.item() == pytest.approx(ce + lx * want_x - ly * want_y, rel=1e-3)
    # and it trains: one local update with the measure is finite and changes the model
    u = make_training_defense("bido", lambda_x=0.1, lambda_y=2.0)(
        model, x, y, protocol="fedavg", local_epochs=1, batch_size=8, lr=1e-3, optimizer="adam",
        seed=0, client_id="0", round=1,
    )
    assert all(torch.isfinite(t).all() for t in u.tensors.values())
    assert any(float(t.abs().max()) > 0 for t in u.tensors.values())


def test_cka_is_kept_under_its_own_name_and_measures_are_checked():
    assert make_training_defense("bido", measure="cka").measure == "cka"
    with pytest.raises(Exception, match="'hsic', 'cka' or 'coco'"):
        make_training_defense("bido", measure="mi")
