"""The orders' rows in SQL, shared by the fleet tracker's writes, leases and reads
(:mod:`~transports.journal.orders`, :mod:`~transports.journal.order_leases`,
:mod:`~transports.journal.order_reads`) and the ``on_settled`` SQL: their columns,
their conversions, and the statuses that settle an order, from the core's verdicts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from orderfsm.core import GOALS, Status, verdict
from orderfsm.journal.orders import ChangeRow, OrderRow

CHUNK = 500
"""Order ids per statement when a list is long."""

ORDER_COLUMNS = (
    "order_id, status, version, until, user_id, tracking, owner, lease_until, fence, tracked_at"
)
CHANGE_COLUMNS = "order_id, version, status, previous, source, at"


def in_dialect(dialect: str, text: str) -> str:
    """A statement written with PostgreSQL's ``%s`` marks, for ``dialect``."""
    return text if dialect == "postgresql" else text.replace("%s", "?")


def settled_statuses(until: Status) -> list[str]:
    """The statuses that settle an order whose goal is ``until``."""
    return [s.value for s in Status if verdict(s, until).settled]


SETTLING = ", ".join(
    f"('{status}', '{goal.value}')" for goal in GOALS for status in settled_statuses(goal)
)
"""(status, goal) pairs that settle an order, for SQL: from the core's own verdicts."""


def order_from_row(row: Sequence[Any]) -> OrderRow:
    order_id, status, version, until, user_id, tracking, owner, lease_until, fence, tracked = row
    return OrderRow(
        int(order_id),
        None if status is None else Status(status),
        int(version),
        Status(until),
        user_id,
        bool(tracking),
        owner,
        float(lease_until),
        int(fence),
        None if tracked is None else float(tracked),
    )


def change_from_row(row: Sequence[Any]) -> ChangeRow:
    order_id, version, status, previous, source, at = row
    before = None if previous is None else Status(previous)
    return ChangeRow(int(order_id), int(version), Status(status), before, source, float(at))


def chunks(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    """In ascending order: rows are locked in order id order everywhere (see track_many)."""
    ids = sorted(ids)
    for start in range(0, len(ids), CHUNK):
        yield ids[start : start + CHUNK]


def marks(count: int, dialect: str) -> str:
    """``count`` parameter marks, comma-separated, for ``dialect``."""
    return ", ".join(["?" if dialect == "sqlite" else "%s"] * count)
