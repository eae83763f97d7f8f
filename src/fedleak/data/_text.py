"""Keep wrapped low-level error text to one short line (DataError messages are one line)."""

from fedleak.errors import brief

__all__ = ["brief"]
