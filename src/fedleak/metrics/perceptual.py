"""LPIPS (AlexNet, v0.1) in plain torch, from local weights only.

Learned perceptual distance tracks human judgement better than PSNR/SSIM for blurry or
shifted reconstructions. fedleak never downloads anything, so the weights must be a local
file (or files) the user supplies; ``torch.load(..., weights_only=True)`` keeps loading safe.

Expected state-dict keys (all float tensors; other keys such as ``classifier.*`` or
``scaling_layer.*`` are ignored; several files are merged, so the torchvision AlexNet
checkpoint and the lpips package's ``weights/v0.1/alex.pth`` can be passed as a pair):

* AlexNet convs, torchvision ``alexnet().features`` naming:
  ``features.0.weight`` (64, 3, 11, 11), ``features.0.bias`` (64,),
  ``features.3.weight`` (192, 64, 5, 5), ``features.3.bias`` (192,),
  ``features.6.weight`` (384, 192, 3, 3), ``features.6.bias`` (384,),
  ``features.8.weight`` (256, 384, 3, 3), ``features.8.bias`` (256,),
  ``features.10.weight`` (256, 256, 3, 3), ``features.10.bias`` (256,).
  The lpips package's full-model names ``net.slice{k}.{N}.weight|bias`` are mapped to
  ``features.{N}.*`` (they keep torchvision's index N).
* Linear calibration, lpips package naming: ``lin0.model.1.weight`` (1, 64, 1, 1),
  ``lin1.model.1.weight`` (1, 192, 1, 1), ``lin2.model.1.weight`` (1, 384, 1, 1),
  ``lin3.model.1.weight`` (1, 256, 1, 1), ``lin4.model.1.weight`` (1, 256, 1, 1).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from fedleak.errors import ConfigError, DataError
from fedleak.metrics._checks import check_images, check_same_image_shape

__all__ = [
    "LPIPS_MIN_SIZE",
    "expected_lpips_keys",
    "load_lpips_weights",
    "lpips",
    "lpips_available",
]

WeightsArg = str | os.PathLike | Sequence[str | os.PathLike]

# (torchvision features index, out channels, in channels, kernel, stride, padding)
_CONVS = ((0, 64, 3, 11, 4, 2), (3, 192, 64, 5, 1, 2), (6, 384, 192, 3, 1, 1),
          (8, 256, 384, 3, 1, 1), (10, 256, 256, 3, 1, 1))  # fmt: skip
_POOL_AFTER = (0, 3)  # max-pool 3/2 after the relus of convs 0 and 3 (the last pool is unused)
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_NORM_EPS = 1e-10
# Smallest side for which every AlexNet tap is non-empty (conv s4 then two 3/2 max-pools).
LPIPS_MIN_SIZE = 31
_SLICE_KEY = re.compile(r"^net\.slice\d+\.(\d+)\.(weight|bias)$")


def expected_lpips_keys() -> dict[str, tuple[int, ...]]:
    """Every key the LPIPS weights must provide, with its shape."""
    keys: dict[str, tuple[int, ...]] = {}
    for idx, cout, cin, k, _, _ in _CONVS:
        keys[f"features.{idx}.weight"] = (cout, cin, k, k)
        keys[f"features.{idx}.bias"] = (cout,)
    for i, (_, cout, *_) in enumerate(_CONVS):
        keys[f"lin{i}.model.1.weight"] = (1, cout, 1, 1)
    return keys


def _paths(weights: object) -> list[Path]:
    if isinstance(weights, str | os.PathLike):
        return [Path(weights)]
    if (
        isinstance(weights, Sequence)
        and weights
        and all(isinstance(w, str | os.PathLike) for w in weights)
    ):
        return [Path(w) for w in weights]
    raise ConfigError(
        "`weights` of lpips must be a path (or a list of paths) to local LPIPS weights; "
        f"got {weights!r}."
    )


def _read_one(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise DataError(
            f"`weights` of lpips must be an existing local file (nothing is downloaded); "
            f"got {str(path)!r}."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/non-torch files
        raise DataError(
            f"`weights` of lpips must be a torch state dict file; got {str(path)!r} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'})."
        ) from exc
    if not isinstance(obj, Mapping):
        raise DataError(
            f"`weights` of lpips must hold a state dict (a mapping of names to tensors); "
            f"got a {type(obj).__name__!r} in {str(path)!r}."
        )
    out: dict[str, Tensor] = {}
    for key, val in obj.items():
        if not torch.is_tensor(val):
            continue
        m = _SLICE_KEY.match(str(key))
        out[f"features.{m.group(1)}.{m.group(2)}" if m else str(key)] = val
    return out


@functools.lru_cache(maxsize=4)
def _load_cached(stamp: tuple[tuple[str, int, int], ...]) -> dict[str, Tensor]:
    merged: dict[str, Tensor] = {}
    for path, _, _ in stamp:
        merged.update(_read_one(Path(path)))
    expected = expected_lpips_keys()
    missing = [k for k in expected if k not in merged]
    if missing:
        files = ", ".join(repr(p) for p, _, _ in stamp)
        raise DataError(
            f"`weights` of lpips must provide all LPIPS-AlexNet keys (see "
            f"fedleak.metrics.expected_lpips_keys()); got {files} missing {missing[:4]!r}"
            f"{' and more' if len(missing) > 4 else ''}."
        )
    state: dict[str, Tensor] = {}
    for key, shape in expected.items():
        t = merged[key]
        if tuple(t.shape) != shape or not t.is_floating_point():
            raise DataError(
                f"`weights` of lpips must hold {key!r} as a float tensor of shape {shape!r}; "
                f"got {t.dtype} {tuple(t.shape)!r}."
            )
        if not bool(torch.isfinite(t).all()):
            raise DataError(
                f"`weights` of lpips must hold finite values; got NaN or inf in {key!r}."
            )
        state[key] = t.detach().float()
    return state


def load_lpips_weights(weights: WeightsArg) -> dict[str, Tensor]:
    """Load, validate and cache LPIPS-AlexNet weights from local file(s); raises DataError."""
    stamp = []
    for p in _paths(weights):
        if not p.is_file():
            raise DataError(
                f"`weights` of lpips must be an existing local file (nothing is downloaded); "
                f"got {str(p)!r}."
            )
        st = p.stat()
        stamp.append((str(p.resolve()), st.st_mtime_ns, st.st_size))
    return _load_cached(tuple(stamp))


def lpips_available(weights: WeightsArg | None) -> bool:
    """True when ``weights`` names local file(s) holding usable LPIPS-AlexNet weights."""
    if weights is None:
        return False
    try:
        load_lpips_weights(weights)
    except (DataError, ConfigError):
        return False
    return True


def _features(x: Tensor, state: Mapping[str, Tensor]) -> list[Tensor]:
    taps = []
    for idx, _, _, _, stride, pad in _CONVS:
        x = F.relu(F.conv2d(x, state[f"features.{idx}.weight"], state[f"features.{idx}.bias"],
                            stride=stride, padding=pad))  # fmt: skip
        taps.append(x)
        if idx in _POOL_AFTER:
            x = F.max_pool2d(x, kernel_size=3, stride=2)
    return taps


def lpips(x: Tensor, y: Tensor, *, weights: WeightsArg) -> Tensor:
    """LPIPS-AlexNet distance per image, shape (N,); lower is more similar, 0 for identical.

    Inputs are (N, C, H, W) in [0, 1] with C = 1 (repeated to RGB) or 3, at least 31x31 px
    (:data:`LPIPS_MIN_SIZE`; upsample smaller images yourself). ``weights``: local file(s),
    see the module docstring for the keys. Matches ``lpips.LPIPS(net='alex')(2x-1, 2y-1)``.
    """
    check_images(x, "x", "lpips")
    check_images(y, "y", "lpips")
    check_same_image_shape(x, y, "x", "y", "lpips", same_n=True)
    if x.shape[1] not in (1, 3):
        raise DataError(f"`x` of lpips must have 1 (grey) or 3 (RGB) channels; got {x.shape[1]}.")
    if min(x.shape[-2:]) < LPIPS_MIN_SIZE:
        raise DataError(
            f"`x` of lpips must be at least {LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE} px for AlexNet "
            f"(upsample first); got {tuple(x.shape[-2:])!r}."
        )
    state = {k: v.to(x.device) for k, v in load_lpips_weights(weights).items()}
    shift = torch.tensor(_SHIFT, device=x.device).view(1, 3, 1, 1)
    scale = torch.tensor(_SCALE, device=x.device).view(1, 3, 1, 1)

    def prep(t: Tensor) -> Tensor:
        t = t.float().expand(-1, 3, -1, -1) if t.shape[1] == 1 else t.float()
        return ((2 * t - 1) - shift) / scale

    fx, fy = _features(prep(x), state), _features(prep(y), state)
    total = x.new_zeros(x.shape[0], dtype=torch.float32)
    for i, (a, b) in enumerate(zip(fx, fy, strict=True)):
        a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + _NORM_EPS)
        b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + _NORM_EPS)
        d = F.conv2d((a - b).pow(2), state[f"lin{i}.model.1.weight"])
        total = total + d.mean(dim=(1, 2, 3))
    return total.to(torch.promote_types(x.dtype, y.dtype))
