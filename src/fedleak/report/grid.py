"""PNG image grids: originals above their reconstructions, for eyeballing what leaked.

Uses matplotlib's object-oriented API with an Agg canvas attached to a standalone
:class:`~matplotlib.figure.Figure`: no pyplot, no ``matplotlib.use``, so the caller's backend
and open figures are untouched and it works headless.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from fedleak.errors import ConfigError, DataError

__all__ = ["MAX_COLS", "MAX_IMAGES_PER_ROW", "save_grid"]

MAX_COLS = 16  # longer rows wrap into blocks of this many columns
MAX_IMAGES_PER_ROW = 256  # beyond this a grid stops being readable; pass a slice instead
_CELL_IN = 1.25  # inches per image cell
_CAPTION_IN = 0.22  # extra height per grid row when captions are shown
_TITLE_CHAR_IN = 0.085  # inches per character of a 10 pt title (for wrapping)


def _check_row(r: object, i: int) -> Tensor:
    if not torch.is_tensor(r) or r.dim() != 4:  # type: ignore[union-attr]
        got = tuple(r.shape) if torch.is_tensor(r) else type(r).__name__  # type: ignore[union-attr]
        raise DataError(f"`rows[{i}]` of save_grid must be a (N, C, H, W) tensor; got {got!r}.")
    assert isinstance(r, Tensor)
    if r.shape[1] not in (1, 3):
        raise DataError(
            f"`rows[{i}]` of save_grid must have 1 (grey) or 3 (RGB) channels; got {r.shape[1]}."
        )
    if r.shape[0] > MAX_IMAGES_PER_ROW:
        raise ConfigError(
            f"`rows[{i}]` of save_grid must hold at most {MAX_IMAGES_PER_ROW} images "
            f"(slice the batch); got {r.shape[0]}."
        )
    return r


def _check_texts(texts: object, n: int, param: str) -> list:
    if texts is None:
        return [None] * n
    if isinstance(texts, str) or not isinstance(texts, Sequence) or len(texts) != n:
        got = len(texts) if isinstance(texts, Sequence) and not isinstance(texts, str) else texts
        raise ConfigError(f"`{param}` of save_grid must be a sequence of {n} entries; got {got!r}.")
    return list(texts)


def _to_display(img: Tensor) -> tuple:
    """(H, W) or (H, W, 3) numpy array in [0, 1] plus imshow kwargs."""
    a = torch.nan_to_num(img.detach().float().cpu(), nan=0.0).clamp(0, 1)
    if a.shape[0] == 1:
        return a[0].numpy(), {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}
    return a.permute(1, 2, 0).numpy(), {}


def save_grid(
    path: str | Path,
    rows: Sequence[Tensor],
    *,
    row_titles: Sequence[str] | None = None,
    captions: Sequence[Sequence[str] | None] | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG with one grid row per tensor in ``rows`` and return its path.

    Each tensor is (N, C, H, W) in [0, 1], C = 1 (grey, vmin 0 / vmax 1) or 3 (RGB); values
    are clipped and NaN shown black. Rows may differ in length and image size. Rows longer
    than :data:`MAX_COLS` wrap into blocks, each block showing the same index range of every
    row, so an original stays directly above its reconstruction; at most
    :data:`MAX_IMAGES_PER_ROW` images per row. ``captions[r][i]`` (e.g. "PSNR 31.2") goes
    under image i of row r; ``captions[r]`` may be None. Parent directories are created.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"`path` of save_grid must end in .png; got {str(path)!r}.")
    if isinstance(rows, Tensor) or not isinstance(rows, Sequence) or not rows:
        raise ConfigError(
            "`rows` of save_grid must be a non-empty sequence of (N, C, H, W) tensors; "
            f"got {type(rows).__name__!r}."
        )
    rows = [_check_row(r, i) for i, r in enumerate(rows)]
    titles = _check_texts(row_titles, len(rows), "row_titles")
    caps = _check_texts(captions, len(rows), "captions")
    for i, (r, c) in enumerate(zip(rows, caps, strict=True)):
        if c is not None:
            _check_texts(c, r.shape[0], f"captions[{i}]")
    has_caps = any(c is not None for c in caps)

    longest = max(r.shape[0] for r in rows)
    ncols = max(1, min(MAX_COLS, longest))
    nblocks = max(1, math.ceil(longest / ncols))
    ngrid = nblocks * len(rows)
    width = ncols * _CELL_IN + (0.6 if any(titles) else 0.1)
    # a narrow grid (one image) would clip a long title: wrap it to the figure's width
    title_lines = (
        textwrap.wrap(title, max(12, int(width / _TITLE_CHAR_IN)), break_on_hyphens=False)
        if title
        else []
    )
    height = ngrid * (_CELL_IN + (_CAPTION_IN if has_caps else 0.0))
    height += 0.2 + 0.2 * len(title_lines) if title_lines else 0.1

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(ngrid, ncols, squeeze=False)
    for b in range(nblocks):
        for r, (imgs, rt, cap) in enumerate(zip(rows, titles, caps, strict=True)):
            g = b * len(rows) + r
            for c in range(ncols):
                ax = axes[g][c]
                k = b * ncols + c
                if k >= imgs.shape[0]:
                    ax.axis("off")
                    continue
                arr, kw = _to_display(imgs[k])
                ax.imshow(arr, interpolation="nearest", **kw)
                ax.set_xticks([])
                ax.set_yticks([])
                if cap is not None:
                    ax.set_xlabel(str(cap[k]), fontsize=7)
                if c == 0 and rt:
                    label = (
                        rt if nblocks == 1 else f"{rt}\n[{k}..{min(k + ncols, imgs.shape[0]) - 1}]"
                    )
                    ax.set_ylabel(label, fontsize=8)
    if title_lines:
        fig.suptitle("\n".join(title_lines), fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
