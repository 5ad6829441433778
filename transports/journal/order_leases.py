"""The fleet tracker's leases in the journal, both backends: who follows an order
through Xsolla (its lease and fence), who still waits on it, and the adoption of
orders whose owner is gone.  Each function is one unit of work inside a
transaction the store opened, as in :mod:`transports.journal.orders`; the
decisions are :mod:`orderfsm.journal.orders`'s (``may_lease``, ``adoptable``,
``let_go``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orderfsm.journal.orders import LET_GO, OrderRow
from transports.journal.order_rows import (
    ORDER_COLUMNS,
    SETTLING,
    chunks,
    in_dialect,
    marks,
    order_from_row,
)


def untrack(db: Any, dialect: str, order_ids: Sequence[int], owner: str, now: float) -> None:
    """``owner`` no longer needs these (settled here, or given up): its lease is dropped,
    and nobody needs to resume them, unless another instance holds a live lease on one
    (it follows the order still: stopped for a deploy before its next renewal, it
    must find the order marked to take it back)."""
    for chunk in chunks(order_ids):
        placeholders = marks(len(chunk), dialect)
        db.execute(
            in_dialect(
                dialect,
                f"UPDATE orderfsm_orders SET"
                f" tracking = CASE WHEN owner <> %s AND lease_until > %s THEN tracking"
                f" ELSE %s END,"
                f" owner = CASE WHEN owner = %s THEN NULL ELSE owner END,"
                f" lease_until = CASE WHEN owner = %s THEN 0 ELSE lease_until END"
                f" WHERE order_id IN ({placeholders})",
            ),
            (owner, now, False, owner, owner, *chunk),
        )


def let_go(db: Any, dialect: str, order_ids: Sequence[int], owner: str, now: float) -> None:
    """``owner`` still waits on these orders but can no longer follow them through
    Xsolla: :func:`~orderfsm.journal.orders.let_go` (its leases end now, the orders
    are marked tracked).  A row already so changes nothing, so an instance says it
    at every renewal, as :func:`want` is said, and writes only what changed."""
    wanted = (
        f"NOT tracking AND tracked_at IS NOT NULL"
        f" AND (status IS NULL OR (status, until) NOT IN ({SETTLING}))"
    )
    for chunk in chunks(order_ids):
        db.execute(
            in_dialect(
                dialect,
                f"UPDATE orderfsm_orders SET"
                f" lease_until = CASE WHEN owner = %s THEN %s ELSE lease_until END,"
                f" tracked_at = CASE WHEN {wanted} THEN %s ELSE tracked_at END,"
                f" tracking = CASE WHEN {wanted} THEN %s ELSE tracking END"
                f" WHERE order_id IN ({marks(len(chunk), dialect)})"
                f" AND ((owner = %s AND lease_until <> %s) OR ({wanted}))",
            ),
            (owner, LET_GO, now, True, *chunk, owner, LET_GO),
        )


def want(db: Any, dialect: str, order_ids: Sequence[int], now: float) -> None:
    """Mark tracked again the orders an instance still waits on that another instance's
    :func:`untrack` marked not tracked: an instance that follows only the journal
    holds no lease, and adoption (so Xsolla's following) needs the mark.  The mark's
    time is new, so the order is adopted a lease later, as a newly tracked one."""
    for chunk in chunks(order_ids):
        db.execute(
            in_dialect(
                dialect,
                f"UPDATE orderfsm_orders SET tracking = %s, tracked_at = %s"
                f" WHERE order_id IN ({marks(len(chunk), dialect)}) AND NOT tracking"
                # Only a row some track marked (untrack keeps tracked_at): one the news
                # made (a claim in REPEATABLE READ, a receiver before 2026-12-07), its
                # track still queued, must keep no goal for that track to set.
                f" AND tracked_at IS NOT NULL"
                f" AND (status IS NULL OR (status, until) NOT IN ({SETTLING}))",
            ),
            (True, now, *chunk),
        )


def lease(
    db: Any, dialect: str, order_ids: Sequence[int], owner: str, now: float, seconds: float
) -> dict[int, int]:
    """Take or renew the lease on each order that :func:`~orderfsm.journal.orders.may_lease`
    allows; the orders ``owner`` holds now, with their fences."""
    held: dict[int, int] = {}
    for chunk in chunks(order_ids):
        rows = db.execute(
            in_dialect(
                dialect,
                f"UPDATE orderfsm_orders SET"
                f" fence = CASE WHEN owner = %s AND lease_until > %s THEN fence"
                f" ELSE fence + 1 END,"
                f" owner = %s, lease_until = %s, tracking = %s"
                f" WHERE order_id IN ({marks(len(chunk), dialect)})"
                f" AND (status IS NULL OR (status, until) NOT IN ({SETTLING}))"
                f" AND (owner IS NULL OR owner = %s OR lease_until <= %s)"
                f" RETURNING order_id, fence",
            ),
            (owner, now, owner, now + seconds, True, *chunk, owner, now),
        ).fetchall()
        held.update((int(order_id), int(fence)) for order_id, fence in rows)
    return held


def adopt(
    db: Any,
    dialect: str,
    owner: str,
    now: float,
    seconds: float,
    limit: int,
    passed: Sequence[int] = (),
) -> list[OrderRow]:
    """Take the lease of up to ``limit`` orders nobody follows any more
    (:func:`~orderfsm.journal.orders.adoptable`: not one ``owner`` let go itself, nor
    one it ``passed``), with a new fence; the rows taken.  ``passed`` goes as one
    parameter (a JSON array on SQLite, an array on PostgreSQL), however long.

    One statement, through the ``tracking`` index (an index on ``lease_until``
    would make every lease renewal a non-HOT update on PostgreSQL: measured 40%
    slower renewals against 7.7 ms for this read over 100,000 tracked orders).
    PostgreSQL skips rows another adopter has locked; SQLite's writers take turns.
    """
    orphan = (
        f"tracking = %s AND lease_until <= %s"
        f" AND (status IS NULL OR (status, until) NOT IN ({SETTLING}))"
        f" AND (owner IS NOT NULL OR tracked_at <= %s)"
        f" AND (owner IS NULL OR owner <> %s OR lease_until >= 0)"
        + (
            " AND NOT (order_id = ANY(%s))"
            if dialect == "postgresql"
            # Any SQLite has instr() (json_each needs its JSON functions): ",1,2,".
            else " AND instr(%s, ',' || order_id || ',') = 0"
        )
    )
    excluded: object = list(passed)
    if dialect != "postgresql":
        excluded = "," + "".join(f"{order_id}," for order_id in passed)
    orphan_args = (True, now, now - seconds, owner, excluded)
    skip = " FOR UPDATE SKIP LOCKED" if dialect == "postgresql" else ""
    rows = db.execute(
        in_dialect(
            dialect,
            f"UPDATE orderfsm_orders SET fence = fence + 1, owner = %s, lease_until = %s"
            f" WHERE order_id IN (SELECT order_id FROM orderfsm_orders WHERE {orphan}"
            f" ORDER BY lease_until LIMIT %s{skip}) AND {orphan}"
            f" RETURNING {ORDER_COLUMNS}",
        ),
        (owner, now + seconds, *orphan_args, limit, *orphan_args),
    ).fetchall()
    return [order_from_row(r) for r in rows]


def release(db: Any, dialect: str, owner: str) -> None:
    """End now every lease ``owner`` holds: it is starting, so the life that took them
    is over (an instance's name is never two live instances'), and its orders are
    adoptable at once (:func:`adopt`, which takes those first: their leases ended
    earliest), by it or another, rather than a lease later; those its previous life
    let go (:func:`let_go`) too: this life may follow them (a new socket).  Through
    the ``tracking`` index: an order whose lease counts is tracked."""
    db.execute(
        in_dialect(
            dialect,
            "UPDATE orderfsm_orders SET lease_until = 0"
            " WHERE tracking = %s AND owner = %s AND lease_until <> 0",
        ),
        (True, owner),
    )
