"""The durable ``on_settled`` handler's SQL, both backends: what is owed, and what was told.

Each order's row says how far its calls were made: ``settled_told``, the
version up to which every change that calls ``on_settled`` has its call
recorded (a change that calls nothing counts as told).  The claims
(``settled:ORDER:NAME``, a success named by its goal:
:func:`~orderfsm.journal.orders.settled_name`) still make each call once across the fleet, but
only for the few changes past that mark: claims are pruned after the
journal's retention, the orders table never is, so a call made long ago is
never judged owed again (review bug 8): not by the sweep, nor by an instance
that tracks the order again and reads its past from the journal (:func:`mark`);
and the sweep needs no time window (bug 9).  The mark moves only over calls
recorded in order, so a delivery whose call was lost is still owed after its
refund's call (bug 1).  The mark is judged for the row's goal; a track that
raises the goal pulls it back to where the new goal's calls are owed
(:func:`mark_for_goal`).  The changes past the mark that may call are kept by
the retention whatever their age (:mod:`~transports.journal.change_prune`):
the sweep reads them.

A claim answered above the mark and then pruned would be owed again; it cannot
last that long: calls are made in order (so an answered claim sits above an
unanswered one only while that lower call is retried), each recorded call
moves the mark at once, and every sweep page moves the marks of the orders it
reads, all of them each round (1,000 orders a lease period: a round is hours
even at millions owed, the retention 14 days).  Only a fleet without any
instance with ``on_settled`` for the whole retention, after a failed mark,
would repeat a call.

Each function is one unit of work on a DB-API connection inside a transaction
the store opened, as in :mod:`transports.journal.orders`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orderfsm.core import GOALS, LAPSED_STATUSES, Status, verdict
from orderfsm.journal.orders import RowMark, advance, settled_call, settled_key, settled_name
from transports.journal.order_rows import SETTLING, in_dialect, marks

_CALLING = ", ".join(
    f"('{status}', '{'' if previous is None else previous.value}', '{goal.value}')"
    for goal in GOALS
    for status in Status
    for previous in (None, *Status)
    if advance(previous, status) is not None and settled_call(previous, status, goal)
)
"""(status, previous or '', goal) of the changes ``on_settled`` is called for, for SQL."""

_SETTLED_ANY = ", ".join(
    f"'{s.value}'" for s in Status if any(verdict(s, goal).settled for goal in GOALS)
)
"""Statuses that settle an order for some goal: the index below holds only their rows."""

OWING = f"settled_told < version AND tracked_at IS NOT NULL AND status IN ({_SETTLED_ANY})"
"""Rows that may owe a call: the partial index's condition, which a query must repeat
word for word for SQLite and PostgreSQL to use the index.  Orders still waiting are
not in it (a status that settles nothing calls nothing), nor orders nobody tracked
(whose rows only receivers wrote, before 2026-12-07 or in REPEATABLE READ: nobody
is owed a call)."""

(_LAPSED,) = LAPSED_STATUSES
"""The one status that settles through a grace (``expired``): its call is not a change
in the journal but an instance's judgement, recorded as the claim of its call."""

LAPSE_OWING = "lapse_owed = 1"
"""Rows whose lapse's call may be owed: the condition of their own partial index, as
:data:`OWING`.  A flag of its own, not derived from the status and the mark: most
expired orders owe nothing (dropped before their grace ended, expired before schema
4, their claim pruned), and an index of every expired order whose mark lags was read
whole by every sweep page (review 6, F2).  Set with the call's claim by the instance
that judges the grace over (:func:`owe_lapses`); cleared by :func:`tell` once the
claim is answered, gone, or behind a settling call that was made."""

_LAPSE_OWED = (
    "({o}.status, {o}.until) NOT IN (" + SETTLING + ") AND EXISTS (SELECT 1"
    " FROM orderfsm_claims k WHERE k.key = 'settled:' || CAST({o}.order_id AS TEXT)"
    " || ':" + _LAPSED.value + "' AND k.state <> 'answered')"
)
"""The lapse's call is owed: its claim is not answered, and the order has not settled
since (a call after a settling change's would be out of order: never made then)."""

MIGRATION_TEXT = {
    "sqlite": [
        "ALTER TABLE orderfsm_orders ADD COLUMN settled_told INTEGER NOT NULL DEFAULT 0",
        "UPDATE orderfsm_orders SET settled_told = version"
        " WHERE updated_at < CAST(strftime('%s', 'now') AS REAL) - 86400",
    ],
    "postgresql": [
        "ALTER TABLE orderfsm_orders ADD COLUMN IF NOT EXISTS settled_told INTEGER NOT NULL"
        " DEFAULT 0",
        "UPDATE orderfsm_orders SET settled_told = version"
        " WHERE updated_at < extract(epoch FROM now()) - 86400",
    ],
}


def migration(dialect: str) -> list[str]:
    """Schema version 3: the ``settled_told`` mark and its partial index.

    Rows older than a day are marked told: the sweep before this version looked
    back 24 hours only, so it would never have made their calls (and their claims
    may be pruned: judging them now would repeat calls made long ago).  Newer rows
    start at 0 and the sweep judges them from their claims, as before.
    """
    return [
        *MIGRATION_TEXT[dialect],
        f"CREATE INDEX IF NOT EXISTS orderfsm_orders_owing ON orderfsm_orders (order_id)"
        f" WHERE {OWING}",
    ]


def lapse_migration(dialect: str) -> list[str]:
    """Schema version 4: the ``lapse_owed`` flag and its partial index (:data:`LAPSE_OWING`),
    so the sweep finds the expired calls whose instance died owing them, or had no
    ``on_settled``.  Only rows with an unanswered lapse claim are flagged, found from
    the claims (bounded by the retention), not by reading every expired order.

    A short pause for writers of ``orderfsm_orders``: the flag's default is constant
    (no table rewrite on either database), but the index is built inside the
    migration's transaction, which holds writes to the table for the length of one
    scan of it (0.3 s at a million rows on PostgreSQL, review 6).  A webhook batch's
    row update waiting longer than its lock timeout is written alone.
    """
    add = "ADD COLUMN IF NOT EXISTS" if dialect == "postgresql" else "ADD COLUMN"
    lapse = f":{_LAPSED.value}"
    return [
        f"ALTER TABLE orderfsm_orders {add} lapse_owed INTEGER NOT NULL DEFAULT 0",
        "UPDATE orderfsm_orders SET lapse_owed = 1 WHERE order_id IN (SELECT"
        f" CAST(substr(key, 9, length(key) - {8 + len(lapse)}) AS BIGINT) FROM orderfsm_claims"
        f" WHERE substr(key, 1, 8) = 'settled:' AND substr(key, length(key) - {len(lapse) - 1})"
        f" = '{lapse}' AND state <> 'answered') AND {_LAPSE_OWED.format(o='orderfsm_orders')}",
        "CREATE INDEX IF NOT EXISTS orderfsm_orders_lapse_owed ON orderfsm_orders (order_id)"
        f" WHERE {LAPSE_OWING}",
    ]


def _key(dialect: str, order_id: str, status: str) -> str:
    text = f"CAST({order_id} AS TEXT)" if dialect == "postgresql" else order_id
    return f"'settled:' || {text} || ':' || {status}"


def _named(status: str, goal: str) -> str:
    """The name of the call a change to ``status`` makes for ``goal`` (SQL expressions),
    as :func:`~orderfsm.journal.orders.settled_name` gives it: the goal for a success."""
    renamed = [
        f"WHEN {status} = '{s.value}' AND {goal} = '{g.value}' THEN '{settled_name(s, g).value}'"
        for g in GOALS
        for s in Status
        if settled_name(s, g) is not s
    ]
    return f"CASE {' '.join(renamed)} ELSE {status} END" if renamed else status


def tell(db: Any, dialect: str, order_ids: Sequence[int]) -> None:
    """Move each order's mark up to just before its first calling change whose claim is
    not answered (to its version when there is none), and set its lapse flag to whether
    its lapse's call is still owed.  Idempotent; never moves back over a call recorded
    (a mark is only ever the first gap, and a gap closes only when its claim is
    answered).  The lapse is not a change: the mark passes it, its claim is the debt.

    With no call owed the mark goes to the newest change the statement's snapshot
    holds, not to the row's ``version``: on PostgreSQL an update that waited for the
    row's lock (a change being recorded) reads the row as that change left it, but its
    subqueries still see the snapshot taken before it, without the change, whose call
    was then passed unmade (a review found it: a refund, a grant lost)."""
    if not order_ids:
        return
    o = "orderfsm_orders"
    db.execute(
        in_dialect(
            dialect,
            f"UPDATE {o} SET settled_told = coalesce((SELECT min(c.version) - 1"
            f" FROM orderfsm_changes c"
            f" LEFT JOIN orderfsm_claims k"
            f" ON k.key = {_key(dialect, 'c.order_id', _named('c.status', f'{o}.until'))}"
            f" WHERE c.order_id = {o}.order_id AND c.version > {o}.settled_told"
            f" AND (c.status, coalesce(c.previous, ''), {o}.until) IN ({_CALLING})"
            f" AND (k.state IS NULL OR k.state <> 'answered')),"
            f" (SELECT max(c.version) FROM orderfsm_changes c WHERE c.order_id = {o}.order_id),"
            f" {o}.settled_told),"
            f" lapse_owed = CASE WHEN {_LAPSE_OWED.format(o=o)} THEN 1 ELSE 0 END"
            f" WHERE order_id IN ({marks(len(order_ids), dialect)})"
            f" AND (settled_told < version OR {LAPSE_OWING})",
        ),
        tuple(sorted(order_ids)),
    )


def mark_for_goal(dialect: str, goal: Status, o: str = "orderfsm_orders") -> str:
    """SQL of the row ``o``'s ``settled_told`` once its goal becomes ``goal``, for a track
    that raises it (:func:`~orderfsm.journal.orders.mark_for_goal`, the decision): back
    to just before the new goal's first calling change with no call made at or after
    it, else where it is.  ``o``'s columns are the row's before the update (its old
    goal and mark), as both databases read them in an ``UPDATE``'s ``SET``."""
    g = f"'{goal.value}'"

    def calling(c: str) -> str:
        return f"({c}.status, coalesce({c}.previous, ''), {g}) IN ({_CALLING})"

    # A change at or after c that clears c's debt: its call made (its claim answered
    # or being made, or the old mark past it with the old goal's call of the same
    # name: the retention prunes claims, never the mark), or a later such shared call
    # (a refund) not made yet: no grant is owed before a refund owed.
    was = f"{o}.until"
    shared = (
        f"(m.status, coalesce(m.previous, ''), {was}) IN ({_CALLING})"
        f" AND {_named('m.status', was)} = {_named('m.status', g)}"
    )
    made_since = (
        f"EXISTS (SELECT 1 FROM orderfsm_changes m LEFT JOIN orderfsm_claims k"
        f" ON k.key = {_key(dialect, 'm.order_id', _named('m.status', g))}"
        f" WHERE m.order_id = c.order_id AND m.version >= c.version AND {calling('m')}"
        f" AND (k.state <> 'released' OR ({shared}"
        f" AND (m.version <= {o}.settled_told OR m.version > c.version))))"
    )
    least = "least" if dialect == "postgresql" else "min"
    # Never past the newest change the statement's snapshot holds: on PostgreSQL an
    # update that waited for the row's lock reads the mark as moved since, past a
    # change its subqueries do not see (so judge no call of); a review found it.
    newest = f"SELECT max(n.version) FROM orderfsm_changes n WHERE n.order_id = {o}.order_id"
    return (
        f"{least}({o}.settled_told, coalesce((SELECT min(c.version) - 1"
        f" FROM orderfsm_changes c WHERE c.order_id = {o}.order_id AND {calling('c')}"
        f" AND NOT {made_since}), {o}.settled_told), coalesce(({newest}), {o}.settled_told))"
    )


def mark(db: Any, dialect: str, order_id: int) -> RowMark | None:
    """What the order's row says of its calls (``None``: no row), with the changes past
    its mark, read in one statement."""
    rows = db.execute(
        in_dialect(
            dialect,
            "SELECT o.settled_told, o.until, o.status, o.version, c.version, c.status,"
            " c.previous FROM orderfsm_orders o LEFT JOIN orderfsm_changes c"
            " ON c.order_id = o.order_id AND c.version > o.settled_told"
            " WHERE o.order_id = %s ORDER BY c.version",
        ),
        (order_id,),
    ).fetchall()
    if not rows:
        return None
    told, goal, status, version = rows[0][:4]
    above = tuple(
        (int(v), Status(s), None if before is None else Status(before))
        for *_, v, s, before in rows
        if v is not None
    )
    now = None if status is None else Status(status)
    return RowMark(int(told), Status(goal), now, int(version), above)


def owe_lapses(db: Any, dialect: str, order_ids: Sequence[int], owner: str, now: float) -> None:
    """Say the orders' lapse calls are owed (their grace is over, judged by ``owner``):
    their claims, released, for any instance with ``on_settled`` to take, and their
    rows' flag, for the sweeps to find them.  Nothing for a claim there already
    (taken, or answered); no flag for an answered one."""
    ids = sorted(order_ids)
    if not ids:
        return
    for order_id in ids:
        db.execute(
            in_dialect(
                dialect,
                "INSERT INTO orderfsm_claims (key, attempt, state, owner, lease_until,"
                " claimed_at) VALUES (%s, 0, 'released', %s, 0, %s)"
                " ON CONFLICT (key) DO NOTHING",
            ),
            (settled_key(order_id, _LAPSED), owner, now),
        )
    o = "orderfsm_orders"
    db.execute(
        in_dialect(
            dialect,
            f"UPDATE {o} SET lapse_owed = 1 WHERE order_id IN ({marks(len(ids), dialect)})"
            f" AND lapse_owed = 0 AND {_LAPSE_OWED.format(o=o)}",
        ),
        tuple(ids),
    )


Owed = tuple[int, Status, Status, bool, bool]
"""(order id, status, goal, succeeded, later): one ``on_settled`` call owed."""


def owed(db: Any, dialect: str, after: int, limit: int) -> tuple[list[Owed], int | None]:
    """One page of the sweep: orders past ``after`` (an order id) that may owe a call,
    their marks brought up to date, and each one's first calls owed (the next only
    once they are recorded: in the order a live instance makes them).  Also the last
    order id of the page, or ``None`` when the page reached the end.

    Paged by order id rather than by age, so orders whose handler keeps failing
    never hide newer ones: the next sweep goes on past them (bug 10).  The lapse's
    call (an expired order's grace over, judged by an instance) is not a change but
    its claim: owed while that claim is not answered (its instance died in the call,
    or had no ``on_settled``), and made before the order's first settling call after
    it, which is then a later call, as on the instance that made the first: the
    payment (goal ``paid``) or the delivery behind it (goal ``done``), or a refund.
    Each kind of order is limited to the page on its own, and each read from its own
    partial index, so neither index is read past the page."""
    ids = [
        int(r[0])
        for r in db.execute(
            in_dialect(
                dialect,
                f"SELECT order_id FROM (SELECT order_id FROM orderfsm_orders WHERE {OWING}"
                f" AND (status, until) IN ({SETTLING}) AND order_id > %s"
                f" ORDER BY order_id LIMIT %s) AS settled"
                f" UNION SELECT order_id FROM (SELECT order_id FROM orderfsm_orders"
                f" WHERE {LAPSE_OWING} AND order_id > %s"
                f" ORDER BY order_id LIMIT %s) AS lapsed"
                f" ORDER BY order_id LIMIT %s",
            ),
            (after, limit, after, limit, limit),
        ).fetchall()
    ]
    if not ids:
        return [], None
    tell(db, dialect, ids)
    rows = db.execute(
        in_dialect(
            dialect,
            f"SELECT o.order_id, o.status, c.status, c.previous, o.until, k.state"
            f" FROM orderfsm_orders o"
            f" LEFT JOIN orderfsm_changes c ON c.order_id = o.order_id"
            f" AND c.version = o.settled_told + 1 AND o.settled_told < o.version"
            f" LEFT JOIN orderfsm_claims k"
            f" ON k.key = {_key(dialect, 'o.order_id', repr(_LAPSED.value))}"
            f" WHERE o.order_id IN ({marks(len(ids), dialect)})"
            f" AND (o.settled_told < o.version OR o.{LAPSE_OWING}) ORDER BY o.order_id",
        ),
        tuple(ids),
    ).fetchall()
    found: list[Owed] = []
    for order_id, now, status, previous, until, lapse in rows:
        goal = Status(until)
        lapse_owed = lapse is not None and lapse != "answered"
        current = None if now is None else Status(now)
        if status is None or current is _LAPSED:  # no change to call: the lapse alone
            if lapse_owed and not verdict(current, goal).settled:
                found.append((int(order_id), _LAPSED, goal, False, False))
            continue
        before = None if previous is None else Status(previous)
        call = settled_call(before, Status(status), goal)
        if call is None:
            # The mark stops before a calling change, or, on PostgreSQL, at the newest
            # change its tell's snapshot held while the next was being recorded (a
            # review found the assertion here ending the tracker): the next tell moves it.
            continue
        succeeded, later = call
        # The order's first settling change (expired leads only to it, and only from
        # new): a lapse judged before it was told first, wherever it is in the history.
        if lapse is not None and not verdict(before, goal).settled:
            if lapse_owed:  # claimed (the grace judged over), never answered: first
                found.append((int(order_id), _LAPSED, goal, False, False))
            later = True
        found.append((int(order_id), Status(status), goal, succeeded, later))
    return found, (ids[-1] if len(ids) == limit else None)
