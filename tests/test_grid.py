"""fedleak.report.save_grid writes readable PNGs without touching matplotlib's global state."""

from __future__ import annotations

import matplotlib
import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from fedleak.errors import ConfigError, DataError
from fedleak.report import save_grid


def _read(path) -> np.ndarray:
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4) and img.size > 0
    return img


def test_grey_and_rgb_rows_with_captions(tmp_path):
    backend = matplotlib.get_backend()
    grey = torch.rand(4, 1, 28, 28)
    rgb = torch.rand(4, 3, 32, 32)
    path = save_grid(
        tmp_path / "nested" / "dir" / "grid.png",
        [grey, grey.flip(0), rgb],
        row_titles=["originals", "reconstructions", "rgb"],
        captions=[None, [f"PSNR {v:.1f}" for v in (31.2, 12.0, 8.5, 40.0)], list("abcd")],
        title="grey and RGB",
    )
    assert path == tmp_path / "nested" / "dir" / "grid.png" and path.is_file()
    img = _read(path)
    h, w = img.shape[:2]
    assert w > h  # 4 columns by 3 rows
    assert img[..., :3].std() > 0.05  # images were drawn, not a blank canvas
    assert matplotlib.get_backend() == backend


def test_long_rows_wrap_into_blocks(tmp_path):
    short = _read(save_grid(tmp_path / "short.png", [torch.rand(8, 3, 16, 16)] * 2))
    long = _read(save_grid(tmp_path / "long.png", [torch.rand(20, 3, 16, 16)] * 2))
    # 20 images wrap to 16 columns x 2 blocks: wider than 8 columns, and about 2x as tall
    assert long.shape[1] > short.shape[1]
    assert long.shape[0] > 1.7 * short.shape[0]


def test_rows_of_different_lengths_and_out_of_range_values(tmp_path):
    wild = torch.rand(3, 3, 16, 16) * 3 - 1
    wild[0, 0, 0, 0] = float("nan")
    path = save_grid(tmp_path / "mixed.png", [torch.rand(5, 1, 16, 16), wild])
    _read(path)


def test_bad_arguments_raise_clear_errors(tmp_path):
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ConfigError, match=r"`captions\[0\]` of save_grid must be a sequence of 2"):
        save_grid(tmp_path / "a.png", [x], captions=[["only one"]])
    with pytest.raises(ConfigError, match="`row_titles` of save_grid"):
        save_grid(tmp_path / "a.png", [x, x], row_titles=["one"])
    with pytest.raises(DataError, match="1 \\(grey\\) or 3 \\(RGB\\) channels"):
        save_grid(tmp_path / "a.png", [torch.rand(2, 2, 8, 8)])
    with pytest.raises(DataError, match=r"\(N, C, H, W\)"):
        save_grid(tmp_path / "a.png", [torch.rand(1, 8, 8)])
    with pytest.raises(ConfigError, match=r"\.png"):
        save_grid(tmp_path / "a.jpg", [x])
    with pytest.raises(ConfigError, match="non-empty sequence"):
        save_grid(tmp_path / "a.png", [])
    assert not (tmp_path / "a.png").exists()
