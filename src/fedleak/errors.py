"""Every exception fedleak raises on purpose.

All subclass :class:`FedleakError` (so the CLI can turn them into one-line messages) and a
builtin (``ValueError`` or ``TypeError``) so existing ``except`` clauses keep working.
Message template: "`{param}` of {caller} must be {constraint}; got {value!r}." plus the fix.
"""

from __future__ import annotations


class FedleakError(Exception):
    """Base class: a user-facing problem with a one-line explanation."""


class ConfigError(FedleakError, ValueError):
    """An option or combination of options that cannot work."""


class DataError(FedleakError, ValueError):
    """A missing, truncated or wrong-format data file, or data of the wrong shape."""


class UpdateError(FedleakError, ValueError):
    """A client update that is malformed (NaN/inf values, missing tensors, wrong shapes)."""


class AttackDivergedError(UpdateError):
    """An attack whose loss or image gradient stayed NaN/inf after its retries.

    Raised instead of returning a candidate that never moved (the random start), which would
    read as "this update does not leak" when the truth is "this attack broke".
    """


class InsufficientKnowledgeError(FedleakError, ValueError):
    """An attack needs knowledge that the threat model does not grant."""


class UnknownNameError(FedleakError, KeyError):
    """A registry lookup for a name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0]) if self.args else ""


def check_finite(tensors: dict, what: str) -> None:
    """Raise :class:`UpdateError` naming the first tensor that holds NaN or inf."""
    import torch

    for name, t in tensors.items():
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise UpdateError(
                f"{what}: tensor {name!r} holds NaN or inf values; refusing to use it."
            )


def brief(exc: BaseException, limit: int = 200) -> str:
    """``exc``'s message with whitespace collapsed, cut to ``limit`` characters (one line)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
