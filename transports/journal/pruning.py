"""The journal's prune: what is older than the retention, deleted in rounds, in the
background when due.

Kept apart from the exactly-once steps (:mod:`~transports.journal.core`)
because it is housekeeping on a timer of its own, in a thread of its own: a
delivery only asks whether one is due, and never waits for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import cast

from orderfsm.errors import JournalClosed
from orderfsm.journal import Pruned, prune_due
from transports.journal.base import SqlStore, Store
from transports.journal.change_prune import ChangeLog

logger = logging.getLogger("orderfsm.journal")

PRUNE_ROUND = 5.0
"""Seconds of one round of a prune, at most (plus its last chunk): what a closing
journal waits for it."""


def change_log(store: Store) -> ChangeLog | None:
    """The fleet tracker's change log of ``store``, where it has one (SQLite and
    PostgreSQL: the stores with the orders' tables)."""
    if store.kind in ("sqlite", "postgresql"):
        return ChangeLog(cast(SqlStore, store))
    return None


def prune_rounds(
    store: Store,
    log: ChangeLog | None,
    cutoff: float,
    now: float,
    closing: Callable[[], bool],
) -> Pruned:
    """Delete what is older than ``cutoff``: claims, deliveries and the fleet tracker's
    changes (``log``, :mod:`~transports.journal.change_prune`).

    In rounds of :data:`PRUNE_ROUND` (the claims and deliveries, then the
    changes) until one finds nothing left: however long that takes (an hour of
    a busy fleet's deliveries, millions of rows, takes minutes), so the hourly
    prune keeps up with what comes in; between rounds it stops if the journal is
    ``closing`` (the rest goes at the next start).  The changes never hold up the
    rest: a pass this role may not make is not begun, one that fails is over."""
    changes = None if log is None else log.pass_for(cutoff, now, time.monotonic() + PRUNE_ROUND)
    claims = deliveries = 0
    while True:
        more = store.prune(cutoff, time.monotonic() + PRUNE_ROUND)
        claims, deliveries = claims + more[0], deliveries + more[1]
        if changes is not None and not closing():
            changes.run(time.monotonic() + PRUNE_ROUND)
        done = more == (0, 0) and (changes is None or changes.done)
        if done or closing():
            return Pruned(claims, deliveries, 0 if changes is None else changes.pruned)


class BackgroundPrune:
    """Starts ``prune`` in a thread when one is due (``every`` seconds after the last),
    at most one at a time; never on an answer's path."""

    def __init__(self, prune: Callable[[], Pruned], every: float) -> None:
        self._prune = prune
        self._every = every
        self.last: float | None = None
        """When the last prune began (``None``: none since the journal opened)."""
        self._thread: threading.Thread | None = None

    def start_if_due(self, now: float, closing: Callable[[], bool]) -> None:
        if closing() or not prune_due(self.last, now, self._every):
            return
        if self._thread is not None and self._thread.is_alive():
            return
        self.last = now

        def prune() -> None:
            try:
                pruned = self._prune()
                if any(pruned):
                    logger.info(
                        "pruned %d claims, %d deliveries and %d order changes",
                        *pruned,
                        extra={"event": "journal.pruned"},
                    )
            except Exception as exc:
                if not (isinstance(exc, JournalClosed) and closing()):  # closed mid-round
                    logger.exception(
                        "pruning the journal failed; it is tried again later",
                        extra={"event": "journal.prune_failed"},
                    )

        self._thread = threading.Thread(target=prune, name="orderfsm-journal-prune", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout=timeout)
