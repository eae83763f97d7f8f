"""fedleak.metrics: agreement with skimage, hand-computed values, pairing and error messages."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.ndimage import gaussian_filter
from skimage import data as skdata
from skimage.metrics import structural_similarity
from skimage.transform import resize

from fedleak.errors import ConfigError, DataError
from fedleak.metrics import (
    HIGHER_IS_BETTER,
    LPIPS_SKIPPED_NOTE,
    expected_lpips_keys,
    flat_psnr,
    label_accuracy,
    lpips,
    lpips_available,
    match,
    mse,
    psnr,
    rdlv,
    score_images,
    ssim,
    ssim_window,
)

# ----------------------------------------------------------------------------------- helpers


def _sk_ssim(x: torch.Tensor, y: torch.Tensor, win_size: int | None = None) -> np.ndarray:
    return np.array(
        [
            structural_similarity(
                a.double().numpy(),
                b.double().numpy(),
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1,
                channel_axis=0,
                win_size=win_size,
            )
            for a, b in zip(x, y, strict=True)
        ]
    )


def _smooth(n: int, c: int, h: int, w: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    a = gaussian_filter(rng.random((n, c, h, w)), sigma=(0, 0, 2, 2))
    a = (a - a.min()) / (a.max() - a.min())
    return torch.from_numpy(a).float()


def _camera(h: int, w: int) -> torch.Tensor:
    img = resize(skdata.camera() / 255.0, (h, w), anti_aliasing=True)
    return torch.from_numpy(img).float()[None, None]


def _astronaut(h: int, w: int) -> torch.Tensor:
    img = resize(skdata.astronaut() / 255.0, (h, w, 3), anti_aliasing=True)
    return torch.from_numpy(img).float().permute(2, 0, 1)[None]


def _noisy(x: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


# -------------------------------------------------------------------------------------- SSIM


@pytest.mark.parametrize("shape", [(3, 1, 32, 32), (2, 3, 24, 40), (2, 3, 11, 11)])
def test_ssim_matches_skimage_on_random_images(shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    y = _noisy(x, 0.3, 2)
    ours = ssim(x, y).double().numpy()
    np.testing.assert_allclose(ours, _sk_ssim(x, y), atol=1e-3)  # skimage default window


def test_ssim_matches_skimage_on_smooth_images():
    x = _smooth(3, 3, 32, 32, seed=3)
    y = _noisy(x, 0.05, 4)
    np.testing.assert_allclose(ssim(x, y).numpy(), _sk_ssim(x, y), atol=1e-3)


@pytest.mark.parametrize("size", [(64, 64), (40, 56)])
def test_ssim_matches_skimage_on_real_grey_and_rgb(size):
    for x in (_camera(*size), _astronaut(*size)):
        for y in (_noisy(x, 0.1, 5), x.flip(-1), torch.roll(x, 3, dims=-2)):
            np.testing.assert_allclose(ssim(x, y).numpy(), _sk_ssim(x, y), atol=1e-3)


@pytest.mark.parametrize(("h", "w", "win"), [(8, 8, 7), (10, 12, 9), (5, 7, 5), (2, 9, 1)])
def test_ssim_small_images_use_reduced_window_like_skimage(h, w, win):
    assert ssim_window(h, w) == win
    x = torch.cat([_camera(h, w), _smooth(1, 1, h, w, seed=6)])
    y = _noisy(x, 0.1, 7)
    np.testing.assert_allclose(ssim(x, y).numpy(), _sk_ssim(x, y, win_size=win), atol=1e-3)
    rgb = _astronaut(h, w)
    rgb_y = _noisy(rgb, 0.1, 8)
    np.testing.assert_allclose(
        ssim(rgb, rgb_y).numpy(), _sk_ssim(rgb, rgb_y, win_size=win), atol=1e-3
    )


def test_identical_images_score_perfectly():
    x = _astronaut(32, 32).repeat(2, 1, 1, 1)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)
    assert torch.allclose(psnr(x, x), torch.full((2,), 100.0))
    assert torch.isfinite(psnr(x, x)).all()
    assert torch.equal(mse(x, x), torch.zeros(2))


def test_ssim_is_differentiable_and_keeps_dtype():
    x = torch.rand(2, 1, 16, 16, requires_grad=True)
    y = torch.rand(2, 1, 16, 16)
    s = ssim(x, y)
    assert s.dtype == torch.float32 and s.shape == (2,)
    (1 - s).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ------------------------------------------------------------------------------ MSE and PSNR


def test_mse_and_psnr_by_hand():
    x = torch.zeros(2, 3, 4, 4)
    y = torch.full((2, 3, 4, 4), 0.1)
    y[1, 0] = 0.4  # one of 3 channels off by 0.4: mse = (0.16 + 2 * 0.01) / 3 = 0.06
    assert torch.allclose(mse(x, y), torch.tensor([0.01, 0.06]), atol=1e-7)
    assert torch.allclose(psnr(x, y), torch.tensor([20.0, 10 * math.log10(1 / 0.06)]), atol=1e-4)
    assert torch.allclose(psnr(x, y, data_range=2.0)[0], torch.tensor(10 * math.log10(400.0)))


def test_flat_psnr_is_the_blob_baseline():
    x = torch.zeros(1, 1, 4, 4)
    x[..., :2, :] = 1.0  # channel mean 0.5, every pixel off by 0.5: mse 0.25
    assert torch.allclose(flat_psnr(x), torch.tensor([10 * math.log10(4.0)]))
    flat = torch.full_like(x, 0.5)
    assert torch.allclose(flat_psnr(x), psnr(flat, x))


# ------------------------------------------------------------------------ pairing and leakage


def test_match_recovers_a_known_permutation():
    originals = torch.cat([_camera(24, 24), _smooth(5, 1, 24, 24, seed=9)])
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    recs = _noisy(originals[perm], 0.05, 10)
    for by in ("ssim", "mse"):
        rec_idx, orig_idx = match(recs, originals, by=by)
        assert orig_idx.tolist() == list(range(6))
        assert torch.equal(perm[rec_idx], orig_idx)


def test_match_handles_different_counts():
    originals = _smooth(5, 3, 16, 16, seed=11)
    recs = originals[[4, 1]]
    rec_idx, orig_idx = match(recs, originals)
    assert orig_idx.tolist() == [1, 4] and rec_idx.tolist() == [1, 0]
    rec_idx, orig_idx = match(originals, originals[[2]])  # more recs than originals
    assert rec_idx.tolist() == [2] and orig_idx.tolist() == [0]


def test_rdlv_sign_and_value_by_hand():
    originals = _smooth(3, 1, 16, 16, seed=12)
    prior = originals.mean(0)  # (C, H, W), differs from every original
    base = ssim(prior.expand_as(originals), originals)
    perfect = rdlv(originals, originals, prior)
    assert (perfect > 0).all()
    assert torch.allclose(perfect, (1 - base) / base, atol=1e-5)
    nothing = rdlv(prior[None], originals, prior[None])
    assert torch.allclose(nothing, torch.zeros(3), atol=1e-6)
    # best rec per original, not a one-to-one pairing: one perfect rec plus the prior
    mixed = rdlv(torch.stack([originals[1], prior]), originals, prior)
    assert mixed[1] > 0 and (mixed[[0, 2]] >= -1e-6).all()  # never worse than the prior itself


def test_label_accuracy_multiset_and_paired():
    assert label_accuracy([1, 1, 2], [1, 2, 2]) == pytest.approx(2 / 3)
    assert label_accuracy(torch.tensor([2, 1]), torch.tensor([1, 2])) == 1.0
    assert label_accuracy([2, 1], [1, 2], paired=True) == 0.0
    assert label_accuracy([7, 7, 7, 7], [7, 3]) == 0.5  # extra guesses earn nothing
    with pytest.raises(DataError, match="as many labels"):
        label_accuracy([1], [1, 2], paired=True)
    with pytest.raises(DataError, match="at least one label"):
        label_accuracy([1], [])


# ------------------------------------------------------------------------------ score_images


def test_score_images_keys_and_json():
    originals = _smooth(4, 3, 16, 16, seed=13)
    recs = _noisy(originals[[2, 0, 3, 1]], 0.05, 14)
    out = score_images(
        recs, originals, rec_labels=[3, 1, 1, 0], labels=torch.tensor([0, 1, 3, 1]),
        prior=originals.mean(0),
    )  # fmt: skip
    json.loads(json.dumps(out))
    for key in ("mse", "psnr", "ssim", "flat_psnr", "label_accuracy", "rdlv"):
        assert isinstance(out[key], float) and math.isfinite(out[key])
    for key in ("mse_per_image", "psnr_per_image", "ssim_per_image", "rdlv_per_image"):
        assert len(out[key]) == 4 and all(isinstance(v, float) for v in out[key])
    assert out["pairing"] == [[1, 0], [3, 1], [0, 2], [2, 3]]
    assert out["label_accuracy"] == 1.0
    assert out["rdlv"] == max(out["rdlv_per_image"]) > 0
    assert out["psnr"] > out["flat_psnr"]
    assert out["lpips_note"] == LPIPS_SKIPPED_NOTE and "lpips" not in out
    assert set(HIGHER_IS_BETTER) == {"mse", "psnr", "ssim", "rdlv", "label_accuracy", "lpips"}
    assert not HIGHER_IS_BETTER["mse"] and not HIGHER_IS_BETTER["lpips"]


def test_score_images_minimal_keys_and_fewer_recs():
    originals = _smooth(3, 1, 12, 12, seed=15)
    out = score_images(originals[[2]], originals, by="mse")
    assert out["pairing"] == [[0, 2]] and out["ssim"] == pytest.approx(1.0)
    assert "label_accuracy" not in out and "rdlv" not in out
    no_rec_labels = score_images(originals, originals, labels=[0, 1, 2])
    assert "label_accuracy" not in no_rec_labels and "rec_labels" in no_rec_labels["label_note"]
    with pytest.raises(ConfigError, match="`by` of score_images"):
        score_images(originals, originals, by="psnr")


def test_shape_and_value_errors_are_clear():
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(DataError, match=r"same \(C, H, W\).*\(3, 16, 16\).*\(3, 8, 8\)"):
        score_images(torch.rand(2, 3, 8, 8), x)
    with pytest.raises(DataError, match=r"`x` of ssim must be a 4-D tensor.*\(3, 16, 16\)"):
        ssim(x[0], x[0])
    with pytest.raises(DataError, match="as many images"):
        psnr(x, x[:1])
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="finite"):
        score_images(bad, x)
    with pytest.raises(DataError, match="float tensor"):
        mse(x, (x * 255).to(torch.uint8))
    with pytest.raises(ConfigError, match="data_range"):
        psnr(x, x, data_range=0)
    with pytest.raises(DataError, match="`prior` of rdlv must be one image"):
        rdlv(x, x, x)
    with pytest.raises(DataError, match=r"`prior` of score_images must have the same \(C, H, W\)"):
        score_images(x, x, prior=torch.rand(1, 16, 16))
    assert issubclass(DataError, ValueError)


# ------------------------------------------------------------------------------------- LPIPS


def _random_lpips_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {k: 0.1 * torch.randn(s, generator=g) for k, s in expected_lpips_keys().items()}
    for i in range(5):
        state[f"lin{i}.model.1.weight"] = state[f"lin{i}.model.1.weight"].abs()
    return state


def _reference_lpips(x: torch.Tensor, y: torch.Tensor, state: dict) -> torch.Tensor:
    """Module-based re-statement of lpips.LPIPS(net='alex').forward(2x-1, 2y-1)."""
    features = nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),  # torchvision's final pool is unused
    )  # fmt: skip
    features.load_state_dict({k[len("features.") :]: v for k, v in state.items() if "lin" not in k})
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(t):
        h, out = (2 * t - 1 - shift) / scale, []
        for i, layer in enumerate(features):
            h = layer(h)
            if i in (1, 4, 7, 9, 11):
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    total = 0
    for k, (a, b) in enumerate(zip(taps(x), taps(y), strict=True)):
        lin = state[f"lin{k}.model.1.weight"]
        total = total + nn.functional.conv2d((a - b) ** 2, lin).mean(dim=(2, 3))
    return total.flatten()


def test_lpips_with_local_random_weights(tmp_path):
    state = _random_lpips_state()
    path = tmp_path / "lpips_alex.pth"
    torch.save(state, path)
    x = _astronaut(40, 40).repeat(2, 1, 1, 1)
    y = torch.cat([x[:1], _noisy(x[1:], 0.2, 16)])
    d = lpips(x, y, weights=path)
    assert d.shape == (2,) and d[0] == 0 and d[1] > 0
    assert torch.allclose(d, _reference_lpips(x, y, state), atol=1e-6)
    grey = lpips(_camera(32, 32), _noisy(_camera(32, 32), 0.2, 17), weights=str(path))
    assert grey.shape == (1,) and grey[0] > 0
    assert lpips_available(path) and not lpips_available(None)

    out = score_images(y, x, lpips_weights=path)
    assert out["lpips"] >= 0 and len(out["lpips_per_image"]) == 2 and "lpips_note" not in out
    small = score_images(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16), lpips_weights=path)
    assert "lpips" not in small and "31x31" in small["lpips_note"]


def test_lpips_accepts_lpips_package_names_split_over_two_files(tmp_path):
    state = _random_lpips_state(1)
    slice_of = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
    backbone = {}
    for k, v in state.items():
        if k.startswith("features."):
            idx, kind = k.split(".")[1:]
            backbone[f"net.slice{slice_of[int(idx)]}.{idx}.{kind}"] = v
    lins = {k: v for k, v in state.items() if k.startswith("lin")}
    torch.save(backbone, tmp_path / "net.pth")
    torch.save(lins, tmp_path / "lin.pth")
    torch.save(state, tmp_path / "all.pth")
    x, y = torch.rand(1, 3, 33, 33), torch.rand(1, 3, 33, 33)
    both = lpips(x, y, weights=[tmp_path / "net.pth", tmp_path / "lin.pth"])
    assert torch.allclose(both, lpips(x, y, weights=tmp_path / "all.pth"))


def test_lpips_bad_weights_raise_data_error(tmp_path):
    x = torch.rand(1, 3, 32, 32)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="torch state dict"):
        lpips(x, x, weights=garbage)
    with pytest.raises(DataError, match="nothing is downloaded"):
        lpips(x, x, weights=tmp_path / "missing.pth")
    partial = _random_lpips_state()
    del partial["lin4.model.1.weight"]
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(DataError, match="lin4.model.1.weight"):
        lpips(x, x, weights=tmp_path / "partial.pth")
    wrong = _random_lpips_state()
    wrong["features.0.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(DataError, match=r"features.0.weight.*\(64, 3, 11, 11\)"):
        lpips(x, x, weights=tmp_path / "wrong.pth")
    assert not lpips_available(garbage)
    torch.save(_random_lpips_state(), tmp_path / "ok.pth")
    with pytest.raises(DataError, match="31x31"):
        lpips(torch.rand(1, 3, 28, 28), torch.rand(1, 3, 28, 28), weights=tmp_path / "ok.pth")
