"""Orders and their changes in the journal: the SQL of the fleet tracker, both backends.

Each function is one unit of work on a DB-API connection inside a transaction
the store opened (``store.write``) or a read (``store.read``); the decisions
are :mod:`orderfsm.journal.orders`'s and the core's.  A change is written
under the order's row lock (``FOR UPDATE`` on PostgreSQL; SQLite has one
writer at a time), after the same core an instance applies said it advances,
and announced in the same transaction: PostgreSQL NOTIFYs once per
transaction, only when something changed, with the order ids as the payload
(a hint: the listener reads the rows); SQLite's readers notice a commit by
``PRAGMA data_version``.

The writes; the leases are :mod:`~transports.journal.order_leases`'s, the reads
:mod:`~transports.journal.order_reads`'s, the rows' shared SQL
:mod:`~transports.journal.order_rows`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from orderfsm.core import GOALS, Status, verdict
from orderfsm.interface import WEBHOOK
from orderfsm.journal.orders import (
    WEBHOOK_STATUSES,
    ChangeRow,
    OrderRow,
    advance,
)
from transports.journal.order_news import lock_news, lock_news_shared
from transports.journal.order_reads import orders, tracked_ids
from transports.journal.order_rows import (
    CHANGE_COLUMNS,
    SETTLING,
    chunks,
    in_dialect,
    marks,
    settled_statuses,
)
from transports.journal.settled_sql import mark_for_goal

CHANNEL = "orderfsm_orders"
"""The PostgreSQL notification channel's prefix; the database schema's name follows,
since a channel is shared by every schema of a database."""
NOTIFY_LIMIT = 7000
"""Bytes of order ids in one NOTIFY payload (PostgreSQL allows 8,000); past it the
payload is empty, meaning "read everything you follow"."""


@attrs.frozen
class Note:
    """What to write: an order's status as one instance (or a receiver) learned it."""

    order_id: int
    status: Status
    source: str
    at: float
    """Wall-clock seconds."""


def strictest(goals: Sequence[Status] = GOALS) -> Status:
    """The goal that settles later than every other (``done``: what settles it settles
    ``paid`` too).  :data:`_STRICTER` is right for two goals only (the row's, or the
    other one): a third goal, or two that do not nest, fails here at import, not as
    a goal quietly lost in a row."""
    wrong = RuntimeError(f"_STRICTER handles two nested goals, not {[g.value for g in goals]}")
    if len(goals) != 2:
        raise wrong
    settling = {goal: set(settled_statuses(goal)) for goal in goals}
    found = [g for g in goals if all(settling[g] <= settling[other] for other in goals)]
    if len(found) != 1:
        raise wrong
    return found[0]


_STRICTER = f"(CASE WHEN until = '{strictest().value}' THEN until ELSE %s END)"
_GOAL = f"(CASE WHEN tracked_at IS NULL THEN %s ELSE {_STRICTER} END)"
"""The goal a track leaves: the tracker's own on a row no instance tracked yet (one
made by news, a webhook before the track, whose goal is only a placeholder), else
the stricter of the two."""
"""The row's goal or the one given, whichever settles later (``done`` over ``paid``)."""


# --- writes ----------------------------------------------------------------------------


def track(
    db: Any,
    dialect: str,
    order_id: int,
    until: Status,
    user_id: str | None,
    now: float,
    *,
    channel: str,
) -> OrderRow:
    """Say an instance follows the order; the row as it is now (see :func:`track_many`)."""
    return track_many(db, dialect, [(order_id, until, user_id)], now, channel=channel)[0]


def track_many(
    db: Any,
    dialect: str,
    entries: Sequence[tuple[int, Status, str | None]],
    now: float,
    *,
    channel: str,
) -> list[OrderRow]:
    """:func:`_track` for each (order id, goal, user id), in a transaction of its own
    (it begins it: on PostgreSQL its first statement sets READ COMMITTED); the rows as
    they are now.  ``channel``: the store's, which keys the orders' news locks as the
    receivers' do (another key and the race below is open again).

    An order no instance tracked before may have news only in the webhook
    deliveries (receivers write an order's changes only once it is tracked:
    :func:`record`'s ``tracked_only``): those are written now, before the rows
    are read.  On PostgreSQL the orders' news locks are taken first, each
    exclusively (a receiver takes them shared before it asks whether an order is
    tracked): either the receiver saw this track and wrote its news, or it
    committed its delivery before this transaction reads the deliveries.

    Rows are locked in order id order, as :func:`record` locks them: two
    transactions over the same orders then never wait for each other in a circle
    (a deadlock PostgreSQL would break by failing one of them)."""
    ids = sorted({order_id for order_id, _, _ in entries})
    if dialect == "postgresql":
        # Each statement its own snapshot: the deliveries are read after the lock's wait
        # (under REPEATABLE READ the snapshot of the first statement, before it, would
        # miss the claim the wait was for; a review found it).
        db.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
    tracked = tracked_ids(db, dialect, ids)  # for good: ``tracked_at`` is never cleared
    untracked = [i for i in ids if i not in tracked]
    if untracked and dialect == "postgresql":
        db.execute(lock_news(channel, untracked, exclusive=True))
        tracked = tracked_ids(db, dialect, untracked)  # by another track meanwhile
        untracked = [i for i in untracked if i not in tracked]
    for order_id, until, user_id in sorted(entries, key=lambda entry: entry[0]):
        _track(db, dialect, order_id, until, user_id, now)
    if untracked:
        _write_news_of_deliveries(db, dialect, untracked, now, channel)
    by_id = orders(db, dialect, ids)
    return [by_id[order_id] for order_id, _, _ in entries]


def _track(
    db: Any, dialect: str, order_id: int, until: Status, user_id: str | None, now: float
) -> None:
    """One order's track.

    An order first met here gets a row; one already settled for its goal is
    not marked tracked again (there is nothing to resume).  The row keeps the
    strictest goal any instance asked for (``done`` over ``paid``): one instance
    that grants on payment must not end the following of an order another
    waits to see delivered, since no webhook says ``done`` (a review found the
    last tracker's goal winning, and the order followed by nobody).
    A row news made first (a receiver before 2026-12-07, or one whose claim ran
    in a REPEATABLE READ transaction: see :func:`record`) has no goal asked yet:
    the first track's is taken, or an instance granting on ``paid`` would have
    its order judged by the placeholder ``done`` and its ``on_settled`` call never
    made (a review found it).
    A goal raised pulls the row's ``settled_told`` back to where the new goal's
    calls are owed (:func:`~transports.journal.settled_sql.mark_for_goal`): the
    mark judged for ``paid`` had passed the delivery, which calls nothing there,
    and hid the ``done`` goal's call of it for ever (a review found it).  The goal
    changes only to the one given, so that is the goal the mark is judged for.
    """
    db.execute(
        in_dialect(
            dialect,
            "INSERT INTO orderfsm_orders (order_id, status, version, until, user_id, tracking,"
            " tracked_at, owner, lease_until, fence, updated_at)"
            " VALUES (%s, NULL, 0, %s, %s, %s, %s, NULL, 0, 0, %s)"
            " ON CONFLICT (order_id) DO NOTHING",
        ),
        (order_id, until.value, user_id, True, now, now),
    )
    db.execute(
        in_dialect(
            dialect,
            f"UPDATE orderfsm_orders SET until = {_GOAL}, user_id = coalesce(%s, user_id),"
            f" tracking = (status IS NULL OR (status, {_GOAL}) NOT IN ({SETTLING})),"
            f" settled_told = CASE WHEN until = {_GOAL} THEN settled_told"
            f" ELSE {mark_for_goal(dialect, until)} END,"
            f" tracked_at = %s, updated_at = %s WHERE order_id = %s",
        ),
        (until.value,) * 2 + (user_id,) + (until.value,) * 4 + (now, now, order_id),
    )


def _write_news_of_deliveries(
    db: Any, dialect: str, ids: Sequence[int], now: float, channel: str
) -> None:
    """The news of orders tracked for the first time that only their webhook deliveries
    hold (:data:`~orderfsm.journal.orders.WEBHOOK_STATUSES`), written as a receiver
    that found them tracked would have: a waiter on any instance hears them.  Only
    what the retention kept (14 days by default): a status told before that is heard
    again only by an instance that follows Xsolla (its first Get order)."""
    kinds = list(WEBHOOK_STATUSES)
    notes: list[Note] = []
    for chunk in chunks(ids):
        rows = db.execute(
            in_dialect(
                dialect,
                "SELECT order_id, kind, received_at FROM orderfsm_deliveries"
                f" WHERE order_id IN ({marks(len(chunk), dialect)})"
                f" AND kind IN ({marks(len(kinds), dialect)}) ORDER BY id",
            ),
            [*chunk, *kinds],
        ).fetchall()
        notes.extend(
            Note(int(order_id), WEBHOOK_STATUSES[kind], WEBHOOK, float(at))
            for order_id, kind, at in rows
        )
    if notes:
        record(db, dialect, notes, now, channel)


def channel_for(schema: str) -> str:
    """The channel of the orders in ``schema`` (an identifier: only [a-z0-9_] kept)."""
    safe = "".join(c for c in schema.lower() if c.isalnum() or c == "_")
    return f"{CHANNEL}_{safe}"[:63]


def record(
    db: Any,
    dialect: str,
    notes: Sequence[Note],
    now: float,
    channel: str = CHANNEL,
    locked: Sequence[Sequence[Any]] | None = None,
    tracked_only: bool = False,
    news_locked: bool = False,
) -> list[ChangeRow]:
    """Write what advances an order; returns the changes written (stale and repeated
    news write nothing).  One NOTIFY for the whole transaction, when anything changed.

    This runs inside every webhook claim (a batch of them, on PostgreSQL), so
    statements count: on PostgreSQL one statement locks and reads every order,
    one more writes the changes, the rows and the NOTIFY, both of a fixed text
    (arrays, not one statement or one text per order), so psycopg and the server
    prepare them once; SQLite, in process, takes a statement per row.
    ``locked``: PostgreSQL, the rows of the orders to write as :data:`LOCK_ALL` (or,
    ``tracked_only``, :data:`LOCK_TRACKED`) returns them, locked already by the caller's
    own statement (a batch of claims locks them in its own).

    ``tracked_only`` (a webhook receiver's news): only the orders an instance tracks
    get a change; the others' news stays in their deliveries, where their first
    track reads it (:func:`track_many`).  A webhook-only fleet then writes no row,
    change or NOTIFY per delivery, and its claims keep their cheap commit (measured:
    about a seventh less CPU per delivery over every process).  On PostgreSQL it
    also decides the locking: the orders' news locks are taken shared first
    (``news_locked`` or ``locked``: the caller took them in its ``BEGIN``), so
    "tracked?" is asked with a snapshot no track can slip past; which needs READ
    COMMITTED, so in another isolation level every order's row is locked instead.
    """
    written: list[ChangeRow] = []
    # Locked in order id order, whatever order the notes come in (see track_many).
    ids = sorted({n.order_id for n in notes})
    if locked is not None:
        rows = _pending(locked)
    elif dialect == "postgresql":
        lock_params = (Status.DONE.value, now, list(ids))
        if not tracked_only:
            rows = _pending(db.execute(LOCK_ALL, lock_params).fetchall())
        elif news_locked or lock_news_shared(db, channel, ids):
            rows = _pending(db.execute(LOCK_TRACKED, lock_params).fetchall())
        else:
            # The transaction's snapshot may predate the locks (an app's REPEATABLE READ
            # transaction around a transactional handler): every order's row is locked,
            # so a track since is a serialization failure (a 5xx, retried), and only the
            # tracked ones written.  Writing the others too had put a refund before the
            # payment still waiting in its delivery, and lost it (a review found it).
            every = _pending(db.execute(LOCK_ALL, lock_params).fetchall())
            tracked = tracked_ids(db, dialect, ids)
            rows = {i: row for i, row in every.items() if i in tracked}
    else:
        if tracked_only:
            ids = sorted(tracked_ids(db, dialect, ids))
        rows = {i: _lock(db, dialect, i, now) for i in ids}
    for note in notes:
        row = rows.get(note.order_id)
        if row is None:  # tracked_only, and nobody tracks it: its first track reads it
            continue
        change = advance(row.status, note.status)
        if change is None:
            continue
        row.version += 1
        written.append(
            ChangeRow(note.order_id, row.version, note.status, row.status, note.source, note.at)
        )
        row.status = note.status
        row.keep_tracking = row.keep_tracking and not verdict(note.status, row.until).settled
    if written:
        changed = [r for r in rows.values() if r.changed]
        if dialect == "postgresql":
            _write_all(db, written, changed, now, channel)
        else:
            _write(db, dialect, written, changed, now)
    return written


@attrs.define
class _Pending:
    """An order's row as this transaction leaves it, before the write."""

    order_id: int
    status: Status | None
    version: int
    until: Status
    first_version: int = attrs.field(init=False)
    keep_tracking: bool = True

    def __attrs_post_init__(self) -> None:
        self.first_version = self.version

    @property
    def changed(self) -> bool:
        return self.version != self.first_version


def _lock(db: Any, dialect: str, order_id: int, now: float) -> _Pending:
    """Make the row if the order is new, lock it and read it, in one statement: the
    no-op update on conflict takes the row lock as ``FOR UPDATE`` would."""
    status, version, until = db.execute(
        in_dialect(
            dialect,
            "INSERT INTO orderfsm_orders (order_id, status, version, until, tracking,"
            " lease_until, fence, updated_at) VALUES (%s, NULL, 0, %s, %s, 0, 0, %s)"
            " ON CONFLICT (order_id) DO UPDATE SET order_id = excluded.order_id"
            " RETURNING status, version, until",
        ),
        (order_id, Status.DONE.value, False, now),
    ).fetchone()
    return _Pending(
        order_id, None if status is None else Status(status), int(version), Status(until)
    )


LOCK_ROWS = (
    "INSERT INTO orderfsm_orders (order_id, status, version, until, tracking,"
    " lease_until, fence, updated_at)"
    " SELECT i, NULL, 0, {until}, FALSE, 0, 0, {now} FROM unnest({ids}::bigint[]) AS ids(i)"
    "{where} ORDER BY i"
    " ON CONFLICT (order_id) DO UPDATE SET order_id = excluded.order_id"
    " RETURNING order_id, status, version, until"
)
"""The text of :data:`LOCK_ALL`, its parameters' marks to fill in, and ``where``: which
orders (:data:`TRACKED`), and a condition that makes it wait for rows another part of
the statement locks first."""
TRACKED = (
    "EXISTS (SELECT 1 FROM orderfsm_orders AS t WHERE t.order_id = i AND t.tracked_at IS NOT NULL)"
)
""":data:`LOCK_ROWS`'s condition for ``tracked_only``: an order some instance tracked."""
LOCK_ALL = LOCK_ROWS.format(until="%s", now="%s", ids="%b", where="")
"""PostgreSQL: :func:`_lock` for many orders, in ``ORDER BY`` order (the insert's order)."""
LOCK_TRACKED = LOCK_ROWS.format(until="%s", now="%s", ids="%b", where=f" WHERE {TRACKED}")
""":data:`LOCK_ALL` for the tracked ones only (``tracked_only``)."""


WRITE_ALL = (
    "WITH w0 AS (INSERT INTO orderfsm_changes (" + CHANGE_COLUMNS + ")"
    " SELECT * FROM unnest(%b::bigint[], %b::integer[], %b::text[], %b::text[], %b::text[],"
    " %b::double precision[])),"
    " w1 AS (INSERT INTO orderfsm_orders AS o (order_id, status, version, until, tracking,"
    " lease_until, fence, updated_at)"
    " SELECT r.order_id, r.status, r.version, 'done', r.keep, 0, 0, %s"
    " FROM unnest(%b::bigint[], %b::text[], %b::integer[], %b::boolean[])"
    " AS r(order_id, status, version, keep)"
    " ON CONFLICT (order_id) DO UPDATE SET status = excluded.status,"
    " version = excluded.version, tracking = (o.tracking AND excluded.tracking),"
    " updated_at = excluded.updated_at)"
    " SELECT pg_notify(%s, %s), set_config('synchronous_commit', 'on', true)"
)
"""PostgreSQL: every change, every row and the NOTIFY, in one statement of one text.

Its transaction commits durably, whatever the claim before it in the same transaction
asked: the NOTIFY is delivered, and the rows are read, at commit, before the log
reaches the disk; an order's change lost to a database crash after that would give
its version number to the next change, which every tracker that saw the first skips
for good (a review found it)."""


def _pending(rows: Sequence[Sequence[Any]]) -> dict[int, _Pending]:
    return {
        int(order_id): _Pending(
            int(order_id), None if status is None else Status(status), int(version), Status(until)
        )
        for order_id, status, version, until in rows
    }


def _write_all(
    db: Any, changes: Sequence[ChangeRow], rows: Sequence[_Pending], now: float, channel: str
) -> None:
    payload = ",".join(dict.fromkeys(str(c.order_id) for c in changes))
    payload = "" if len(payload) > NOTIFY_LIMIT else payload
    db.execute(
        WRITE_ALL,
        (
            [c.order_id for c in changes],
            [c.version for c in changes],
            [c.status.value for c in changes],
            [None if c.previous is None else c.previous.value for c in changes],
            [c.source for c in changes],
            [c.at for c in changes],
            now,
            [r.order_id for r in rows],
            [r.status.value if r.status else None for r in rows],
            [r.version for r in rows],
            [r.keep_tracking for r in rows],
            channel,
            payload,
        ),
    )


def _write(
    db: Any, dialect: str, changes: Sequence[ChangeRow], rows: Sequence[_Pending], now: float
) -> None:
    """SQLite: the changes and the rows, a statement each (its readers need no NOTIFY)."""
    for c in changes:
        db.execute(
            in_dialect(
                dialect,
                f"INSERT INTO orderfsm_changes ({CHANGE_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)",
            ),
            (
                c.order_id,
                c.version,
                c.status.value,
                None if c.previous is None else c.previous.value,
                c.source,
                c.at,
            ),
        )
    for r in rows:
        db.execute(
            in_dialect(
                dialect,
                "UPDATE orderfsm_orders SET status = %s, version = %s,"
                " tracking = (tracking AND %s), updated_at = %s WHERE order_id = %s",
            ),
            (r.status.value if r.status else None, r.version, r.keep_tracking, now, r.order_id),
        )
