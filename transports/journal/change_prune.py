"""The retention of the fleet tracker's change log (``orderfsm_changes``), both backends.

What may go is :func:`orderfsm.journal.orders.change_prunable`'s decision, which
:data:`PRUNABLE` mirrors: older than the journal's ``retention``, and neither its
order's latest change nor one whose ``on_settled`` call may still be owed.

A prune makes one pass over the log in ``seq`` order (its primary key: no index of
its own, so nothing is added to the write of each change, nor built at a start),
:data:`~transports.journal.sql_shared.PRUNE_CHUNK` rows a transaction, from the
start up to the first change younger than the cutoff.  The log is written about in
time order; a change written late (a tracker's queue held through an outage),
behind a younger one, goes at a later prune.  A change from a clock ahead of this
one's does not stop the pass.  Each pass reads past the changes kept (each order's
latest, and the calls owed), about one per order: the price of keeping them
without a mark that the next change of their order, or a call made, would have to
clear.

The pass never holds up the claims' and deliveries' prune it rides in: a pass that
fails is logged and left for the next prune, and on PostgreSQL a role without the
privileges it needs (:data:`PRIVILEGES`: a receiver that records no orders may run
under one) is told once and makes none.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from orderfsm.core import Status
from orderfsm.errors import JournalClosed, JournalError
from orderfsm.journal.orders import advance, calls_on_settled
from transports.journal.base import SqlStore
from transports.journal.order_rows import in_dialect
from transports.journal.postgres_privileges import missing_privileges
from transports.journal.sql_shared import PRUNE_CHUNK, in_chunks

logger = logging.getLogger("orderfsm.journal")

CALLING = ", ".join(
    f"('{status.value}', '{'' if previous is None else previous.value}')"
    for status in Status
    for previous in (None, *Status)
    if advance(previous, status) is not None and calls_on_settled(previous, status)
)
"""(status, previous or '') of the changes that make an ``on_settled`` call for some goal."""

PRUNABLE = (
    "c.version < o.version AND NOT (o.tracked_at IS NOT NULL AND c.version > o.settled_told"
    f" AND (c.status, coalesce(c.previous, '')) IN ({CALLING}))"
)
"""Mirrors :func:`~orderfsm.journal.orders.change_prunable` for a change ``c`` of the
order ``o``, but for its age (checked by :data:`DELETE` apart)."""

WINDOW = (
    "SELECT count(*), max(seq), min(CASE WHEN at >= %s AND at <= %s THEN seq END)"
    " FROM (SELECT seq, at FROM orderfsm_changes WHERE seq > %s ORDER BY seq LIMIT %s) AS w"
)
"""The next rows of a pass: how many, the last, and the first younger than the cutoff
(and not from a clock ahead of the prune's)."""

DELETE = (
    "DELETE FROM orderfsm_changes AS c WHERE c.seq > %s AND c.seq <= %s AND c.at < %s"
    f" AND (SELECT {PRUNABLE} FROM orderfsm_orders o WHERE o.order_id = c.order_id)"
)
"""The prunable changes of a window, each order's row read by its key: a scalar subquery,
which PostgreSQL runs per change, not a join, which it made a scan of every order for
each window (29 ms against 2 ms at 200,000 orders, and growing with them).

Change rows are never written again, and an order's row only moves towards more of
them prunable (its version and its mark only grow), so a window judged on a snapshot
a little old deletes nothing it must keep.  The one exception, an order tracked for
the first time meanwhile, loses changes no call was owed for: as if the prune had come
just before the track (its tracker applies the order's latest change and makes its
own call)."""


PRIVILEGES = {"orderfsm_changes": ("SELECT", "DELETE"), "orderfsm_orders": ("SELECT",)}
"""What a pass needs of a PostgreSQL role: the log read (:data:`WINDOW`) and deleted
from, each change's order read (:data:`DELETE`).  A webhook receiver that records no
orders (``record_orders=False``) may run under a role without them; its journal's
prunes are then of the claims and deliveries alone.  Without them, the pass failed
each round until the round's end, and failed the whole prune with it: the claims and
deliveries were pruned one round an hour, so a backlog was never caught up."""

MISSING = "SELECT " + missing_privileges(PRIVILEGES)
"""The privileges of :data:`PRIVILEGES` this role lacks, as one text (empty: none)."""


def prune_chunk(
    db: Any, dialect: str, after: int, cutoff: float, now: float, size: int
) -> tuple[int, int, bool]:
    """One transaction of a pass, the ``size`` changes past ``seq`` ``after``: how many
    it deleted, where the next goes on, and whether the pass is over (the log's end,
    or a change younger than ``cutoff``, is reached)."""
    count, top, young = db.execute(
        in_dialect(dialect, WINDOW), (cutoff, now, after, size)
    ).fetchone()
    if not count:
        return 0, after, True
    end = int(top) if young is None else int(young) - 1
    deleted = 0
    if end > after:
        deleted = db.execute(in_dialect(dialect, DELETE), (after, end, cutoff)).rowcount
    return deleted, end, young is not None or count < size


def _failed(exc: Exception) -> None:
    """A pass given up for this prune, tried again at the next: the database's refusal
    told as a warning, anything else as the bug it is."""
    text = "pruning the order changes failed (claims and deliveries go on; tried again later)"
    if isinstance(exc, JournalError):
        logger.warning("%s: %s", text, exc, extra={"event": "journal.changes_prune_failed"})
    else:
        logger.exception(text, extra={"event": "journal.changes_prune_failed"})


class ChangesPass:
    """One prune's pass over the change log of ``store``, resumed by each of the prune's
    rounds where the one before stopped (a round stops at its deadline).  A pass that
    fails is logged and over (:attr:`done`), so the prune's rounds of claims and
    deliveries go on without it."""

    def __init__(self, store: SqlStore, cutoff: float, now: float) -> None:
        self.store = store
        self.cutoff = cutoff
        self.now = now
        self.after = 0
        """The ``seq`` the pass has read up to."""
        self.done = False
        self.pruned = 0
        """Changes deleted so far."""

    def run(self, deadline: float) -> None:
        """Until the pass is over or ``deadline`` is past; a chunk the database refuses is
        tried again as the claims' and deliveries' are (:func:`in_chunks`)."""

        def chunk(until: float) -> bool:
            work = functools.partial(
                prune_chunk, dialect=self.store.kind, after=self.after, cutoff=self.cutoff,
                now=self.now, size=PRUNE_CHUNK,
            )  # fmt: skip
            deleted, self.after, self.done = self.store.write(work, until)
            self.pruned += deleted
            return not self.done

        if self.done:
            return
        try:
            in_chunks(chunk, deadline)
        except JournalClosed:
            raise  # the journal closing ends the whole prune
        except Exception as exc:
            self.done = True
            _failed(exc)


class ChangeLog:
    """The change log's retention across one journal's prunes: on PostgreSQL, whether
    its role may prune it is asked at each prune (a catalog read, no lock), so a grant
    given later counts, and a lack of it is told once, not each hour."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.missing = ""
        """The privileges found missing at the last prune, as one text."""

    def pass_for(self, cutoff: float, now: float, deadline: float) -> ChangesPass | None:
        """A pass for a prune at ``now``, or ``None`` when this role may not make one
        or the database cannot say (logged)."""
        if self.store.kind == "postgresql":
            try:
                missing = self.store.read(lambda db: db.execute(MISSING).fetchone()[0], deadline)
            except JournalClosed:
                raise
            except Exception as exc:
                _failed(exc)
                return None
            if missing and missing != self.missing:
                logger.warning(
                    "this journal's role may not prune the fleet tracker's order changes"
                    " (missing %s): it prunes claims and deliveries, and leaves the changes"
                    " to a journal whose role may",
                    missing,
                    extra={"event": "journal.changes_not_pruned", "missing": missing},
                )
            self.missing = missing
            if missing:
                return None
        return ChangesPass(self.store, cutoff, now)
