"""Bars agree with the files; grid titles are never clipped."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from fedleak.report import grid

cli = importlib.import_module("fedleak.cli.app")  # the package re-exports `app`, the Typer


def test_bar_says_where_an_early_stop_ended(capsys) -> None:
    cli.STATE["quiet"] = False
    with cli.progress_bar("attack", 10) as update:
        update(4, 0.5)
    err = capsys.readouterr().err
    assert "stopped at 4 of 10" in err and "10/10" not in err


def test_long_title_wraps_on_a_one_image_grid(monkeypatch, tmp_path: Path) -> None:
    titles: list[str] = []
    real = grid.save_grid.__globals__["textwrap"].wrap

    def spy(text, width, **kw):
        lines = real(text, width, **kw)
        titles.extend(lines)
        return lines

    monkeypatch.setattr(grid.textwrap, "wrap", spy)
    title = "DLG on a FedSGD update of an lfw-faces client (1 image)"
    x = torch.rand(1, 1, 8, 8)
    grid.save_grid(tmp_path / "g.png", [x, x], row_titles=["a", "b"], title=title)
    assert len(titles) > 1 and " ".join(titles) == title
    assert all(len(t) * grid._TITLE_CHAR_IN <= grid._CELL_IN + 0.6 for t in titles)


def test_bar_label_names_the_restarts() -> None:
    assert cli.describe_attack("bn-fedavg", {}).endswith("(one restart per label spread, up to 8)")
    assert cli.describe_attack("inverting-gradients", {"restarts": 4}).endswith("(4 restarts)")
    assert cli.describe_attack("inverting-gradients", {}) == "inverting-gradients"


def test_optimizer_reports_progress_between_checkpoints(monkeypatch) -> None:
    """A slow attack moves its bar every PROGRESS_SECONDS, not only at checkpoints."""
    from fedleak.attacks import optimize as opt

    monkeypatch.setattr(opt, "PROGRESS_SECONDS", 0.0)
    calls: list[int] = []

    class Inputs:
        checkpoint_every = 1000
        callback = None

        @staticmethod
        def progress(done: int, loss: float) -> None:
            calls.append(done)

    x = torch.zeros(1, 3, requires_grad=True)
    opt.optimize({"images": x}, lambda v: v["images"].pow(2).sum(1) + 1, Inputs(),
                 iterations=5, lr=0.1)
    assert calls == [1, 2, 3, 4, 5]
