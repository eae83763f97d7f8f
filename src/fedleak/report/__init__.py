"""Human-facing outputs of a run: image grids now, plots and HTML pages alongside later."""

from __future__ import annotations

from fedleak.report.grid import save_grid

__all__ = ["save_grid"]
