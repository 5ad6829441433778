"""The pure core: statuses, the status graph, observations and outcomes.

Nothing in this package performs I/O, reads a clock, or imports from
``transports``; ``tests/test_architecture.py`` keeps it that way.
"""

from orderfsm.core.apply import apply
from orderfsm.core.book import OrderBook
from orderfsm.core.graph import GRAPH, TABLE, mermaid
from orderfsm.core.ids import order_id_of
from orderfsm.core.records import (
    Advanced,
    Conflict,
    Duplicate,
    Observation,
    Outcome,
    Position,
    Stale,
)
from orderfsm.core.settle import GOALS, Verdict, verdict
from orderfsm.core.status import FINAL_STATUSES, LAPSED_STATUSES, Status, parse_status

__all__ = [
    "FINAL_STATUSES",
    "GOALS",
    "GRAPH",
    "LAPSED_STATUSES",
    "TABLE",
    "Advanced",
    "Conflict",
    "Duplicate",
    "Observation",
    "OrderBook",
    "Outcome",
    "Position",
    "Stale",
    "Status",
    "Verdict",
    "apply",
    "mermaid",
    "order_id_of",
    "parse_status",
    "verdict",
]
