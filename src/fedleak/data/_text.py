"""Keep wrapped low-level error text to one short line (DataError messages are one line)."""

from __future__ import annotations


def brief(exc: BaseException, limit: int = 200) -> str:
    """``exc``'s message with whitespace collapsed, cut to ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
