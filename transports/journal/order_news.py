"""The orders' news locks (PostgreSQL): what keeps a receiver's claim and an order's
first track from missing each other.

A receiver writes an order's news as a change only once an instance tracks the
order (:func:`~transports.journal.orders.record`'s ``tracked_only``); a first
track reads the news that came before from the webhook deliveries
(:func:`~transports.journal.orders.track_many`).  A claim asking "tracked?" and a
track reading the deliveries at the same moment could each miss the other's
uncommitted work, so each takes the order's advisory lock first (shared for
claims, exclusive for tracks) and asks in a later statement, whose snapshot
follows the wait: under READ COMMITTED, which is why the isolation level is
checked.  SQLite's writers take turns and need none of this.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any


def lock_news(channel: str, order_ids: Iterable[int], *, exclusive: bool) -> str:
    """PostgreSQL: a statement (no parameters) that takes these orders' news locks for the
    transaction, in one order everywhere (no two transactions wait in a circle):
    shared by receivers before they ask whether an order is tracked, exclusive by a
    track before it reads the deliveries.  Advisory locks, keyed by the schema's
    channel and the order: no table row is written for them.  Its row is the
    transaction's isolation level (the locks work under READ COMMITTED only)."""
    keys = sorted({news_key(channel, order_id) for order_id in order_ids})
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    listed = ",".join(str(key) for key in keys)
    return (
        "SELECT current_setting('transaction_isolation') FROM"
        f" (SELECT count({function}(k)) FROM unnest('{{{listed}}}'::bigint[]) AS k) AS locked"
    )


STATEMENT_SNAPSHOTS = ("read committed", "read uncommitted")
"""``transaction_isolation`` values under which each statement has a snapshot of its
own (PostgreSQL runs READ UNCOMMITTED as READ COMMITTED)."""


def lock_news_shared(db: Any, channel: str, ids: Sequence[int]) -> bool:
    """Take the orders' news locks, shared; whether later statements see what committed
    before them (:data:`STATEMENT_SNAPSHOTS`)."""
    isolation = db.execute(lock_news(channel, ids, exclusive=False)).fetchone()[0]
    return isolation in STATEMENT_SNAPSHOTS


def news_begin(channel: str, order_ids: Iterable[int]) -> str:
    """PostgreSQL: the ``BEGIN`` of a receiver's claim that tells of these orders, and
    their news locks (shared), in one round trip and before any row lock (a batch of
    claims takes them in the same order).  READ COMMITTED whatever the session's
    default: each later statement then reads what committed before the locks."""
    return f"BEGIN ISOLATION LEVEL READ COMMITTED; {lock_news(channel, order_ids, exclusive=False)}"


def news_key(channel: str, order_id: int) -> int:
    """An order's news lock (:func:`lock_news`): a signed 64-bit key of its own, apart
    from the instance names' (:func:`~transports.journal.postgres_name.name_key`)."""
    digest = hashlib.blake2b(f"orderfsm-order\0{channel}\0{order_id}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)
