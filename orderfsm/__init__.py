"""orderfsm: learn, exactly once, when an Xsolla store order changes status."""

from orderfsm.core import (
    FINAL_STATUSES,
    Advanced,
    Conflict,
    Duplicate,
    Observation,
    OrderBook,
    Outcome,
    Position,
    Stale,
    Status,
    apply,
)
from orderfsm.errors import OrderFsmError

__version__ = "0.1.0"

__all__ = [
    "FINAL_STATUSES",
    "Advanced",
    "Conflict",
    "Duplicate",
    "Observation",
    "OrderBook",
    "OrderFsmError",
    "Outcome",
    "Position",
    "Stale",
    "Status",
    "__version__",
    "apply",
]
