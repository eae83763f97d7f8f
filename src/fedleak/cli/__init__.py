"""The ``fedleak`` command line (Typer)."""

from fedleak.cli.app import app, main

__all__ = ["app", "main"]
