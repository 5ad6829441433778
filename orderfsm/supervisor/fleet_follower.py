"""The fleet link's follower: what the others wrote, applied here.

Kept apart from the rest of the link (:mod:`orderfsm.supervisor.fleet`)
because it is the link's reading side: the changes past each order's cursor,
read after each wake-up, after every reconnect and at the backstop, and the
past of newly followed orders, all applied through the orders' own core so
each change reaches the application once.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from orderfsm.core import Observation
from orderfsm.errors import JournalValueRefused, OrderFsmError
from orderfsm.journal.orders import ChangeRow
from orderfsm.supervisor.fleet_writer import BACKOFF_MIN
from orderfsm.supervisor.slices import in_slices

if TYPE_CHECKING:
    from orderfsm.supervisor.order import TrackedOrder
    from transports.journal.order_log import News, OrderLog

logger = logging.getLogger("orderfsm.fleet")


class FollowsJournal:
    """The fleet link's reads of the journal (mixed into ``FleetLink``).

    A mixin rather than an object of its own: it moves the link's cursors and
    applies to the link's orders, and its catch-up retries as the writer does;
    what it uses of the link is declared here.
    """

    log: OrderLog
    backstop: float
    busy_backstop: float
    cursors: dict[int, int]
    _orders: dict[int, TrackedOrder]

    if TYPE_CHECKING:

        async def _retrying(self, what: str, call: Callable[[], Awaitable[Any]]) -> Any: ...

        def _queue(self, note: Any) -> None: ...

    async def read_past(self, order_ids: Iterable[int]) -> dict[int, list[ChangeRow]]:
        """Orders' changes, per order, read before they are tracked here: a resume
        applies each order's past as it tracks it, before its poller's first
        request, not after ten thousand of them have started.  Empty when the
        journal cannot say now: the catch-up that follows each order reads it."""
        try:
            changes = await self.log.catch_up(dict.fromkeys(order_ids, 0))
        except OrderFsmError as exc:
            logger.info(
                "journal unavailable (reading resumed orders' past): %s",
                exc,
                extra={"event": "journal.unavailable", "doing": "reading the past"},
            )
            return {}
        past: dict[int, list[ChangeRow]] = {}
        for change in changes:
            past.setdefault(change.order_id, []).append(change)
        return past

    def apply_past(self, changes: list[ChangeRow]) -> None:
        """Changes read by :meth:`read_past`, for orders tracked here since (those past
        their cursors: an order followed here already has had the rest)."""
        cursors = self.cursors
        past = [c for c in changes if c.version > cursors.get(c.order_id, c.version)]
        self._apply(past, whole=True)

    async def _follow(self) -> None:
        """Apply what others wrote: after each wake-up, after ``backstop`` s without one,
        and at least every ``busy_backstop`` s however many come.

        The wake-ups' connection failing (even for good: a connection limit, say)
        leaves the backstop: everything is read through the pool after each pause.
        An outage is logged once, and the pauses double up to the backstop.  A
        new connection is not a recovery until a wait on it has ended well: one
        ended as soon as it is made (a proxy, a ``pg_terminate_backend`` loop)
        would otherwise reconnect and log every tenth of a second.
        """
        everything = True
        reconnecting = False
        delay = BACKOFF_MIN
        read_all_at = anyio.current_time()
        while True:
            news: News | None = None
            failed = False
            # Every order is read again after ``backstop`` s with no wake-up, and after
            # ``busy_backstop`` s however many came: steady traffic must not put off for
            # good the read that covers what no wake-up told.
            due = read_all_at + self.busy_backstop - anyio.current_time()
            if due > 0:
                try:
                    within = min(self.backstop, due)
                    news = await self.log.wait_for_news(within, self.cursors)
                except OrderFsmError as exc:
                    delay = await self._pause(delay, "journal wake-ups unavailable", exc)
                    everything = reconnecting = failed = True
            full = everything or failed or (news is not None and news.everything)
            if news is not None and news.changes is not None and not full:
                self._apply(news.changes)  # read with the wake-up, on its connection
                delay, reconnecting = self._back(delay), False
                continue
            if news is not None and news.order_ids is not None and not full:
                targets = {i: self.cursors[i] for i in news.order_ids if i in self.cursors}
            else:
                # A reconnect, a SQLite commit, the backstop: every order followed, the
                # live mapping and not a copy.  SQLite's read filters what it found by
                # it after the read, and moves past all of it: an order followed during
                # the read (its change committed meanwhile) must be in, or that change
                # is never read again.
                targets = self.cursors
                read_all_at = anyio.current_time()
            if targets:
                try:
                    changes = await self.log.changes(targets, everything=full)
                except OrderFsmError as exc:
                    delay = await self._pause(delay, "journal unavailable (reading)", exc)
                    everything = True
                    continue
                self._apply(changes)
            if news is not None:
                if reconnecting and news.everything:
                    reconnecting = False  # connected again; back once a wait on it ends well
                else:
                    delay = self._back(delay)
                everything = False

    async def _pause(self, delay: float, what: str, exc: OrderFsmError) -> float:
        """Wait out a failure: logged at its first pause; the next pause, doubled."""
        if delay == BACKOFF_MIN:
            logger.warning(
                "%s: %s", what, exc, extra={"event": "journal.unavailable", "doing": what}
            )
        await anyio.sleep(delay)
        return min(2 * delay, self.backstop)

    @staticmethod
    def _back(delay: float) -> float:
        if delay != BACKOFF_MIN:
            logger.info(
                "journal wake-ups back", extra={"event": "journal.back", "doing": "wake-ups"}
            )
        return BACKOFF_MIN

    async def _catch_up(self, orders: Iterable[int]) -> None:
        """Newly followed orders' past, read at once (the wake-ups only tell of news)."""
        cursors = {i: self.cursors[i] for i in orders if i in self.cursors}
        if cursors:
            try:
                changes = await self._retrying(
                    "catch-up", functools.partial(self.log.catch_up, cursors)
                )
            except JournalValueRefused as exc:  # a read: never expected; the backstop reads again
                logger.error(
                    "the journal refused to read orders' past: %s",
                    exc,
                    extra={"event": "journal.refused", "doing": "reading the past"},
                )
                return
            await in_slices(changes, functools.partial(self._apply, whole=True))

    def _apply(self, changes: Sequence[ChangeRow], *, whole: bool = False) -> None:
        """``whole``: read from each order's cursor on (a catch-up, a resumed order's
        past), so a hole in its versions is a hole in the log itself (the retention's, rows
        deleted by hand, a restored backup), gone for good: applied, not caught up again
        forever."""
        now = anyio.current_time()
        cursors = self.cursors
        behind: dict[int, None] = {}
        for change in changes:
            order = self._orders.get(change.order_id)
            cursor = cursors.get(change.order_id)
            if order is None or cursor is None:
                continue
            if change.version > cursor + 1 and not whole:
                # Versions have no holes: the order's past is unread here (just followed,
                # or read again, and SQLite's news of everything committed came before
                # its catch-up).  Applied now, the cursor would jump past it for good.
                behind[change.order_id] = None
                continue
            if change.version > cursor:
                cursors[change.order_id] = change.version
            observation = Observation.trusted(
                change.order_id, change.status, change.source, now, None, change
            )
            order.observe(observation)
        for order_id in behind:
            self._queue(("catch-up", order_id))
