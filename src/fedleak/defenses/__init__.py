"""Defenses against data leakage from client updates.

Update-level filters (``fedleak.defenses.filters``) share one signature,
``(update, *, generator=None) -> update``, are registered by name in :data:`FILTERS` and chain with
:func:`compose`; :class:`ClientDPAccountant` tracks the client-level DP they buy. Training-time
defenses live in their own modules of this package and are added to the exports below.
"""

from fedleak.defenses.accounting import ClientDPAccountant
from fedleak.defenses.filters import (
    FILTERS,
    ClipNoiseFilter,
    Compose,
    ExcludeFilter,
    Filter,
    GaussianFilter,
    PercentileFilter,
    PruneFilter,
    QuantizeFilter,
    SVTFilter,
    UpdateTransform,
    available_filters,
    compose,
    make_filter,
    register_filter,
)

__all__ = [
    "FILTERS",
    "ClientDPAccountant",
    "ClipNoiseFilter",
    "Compose",
    "ExcludeFilter",
    "Filter",
    "GaussianFilter",
    "PercentileFilter",
    "PruneFilter",
    "QuantizeFilter",
    "SVTFilter",
    "UpdateTransform",
    "available_filters",
    "compose",
    "make_filter",
    "register_filter",
]
