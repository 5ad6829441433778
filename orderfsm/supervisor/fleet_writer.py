"""The fleet link's writer: what this instance tells the journal, in order, in batches.

Kept apart from the rest of the link (:mod:`orderfsm.supervisor.fleet`)
because it is the one task that writes: the notes the link queues as its
orders are tracked, advance and end, written in batches and retried through
outages, so that a database down delays and never drops what others wait on
(a value the database refuses is dropped alone, logged).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from orderfsm.errors import JournalValueRefused, OrderFsmError

if TYPE_CHECKING:
    from transports.journal.order_log import OrderLog
    from transports.journal.settled_log import SettledLog

logger = logging.getLogger("orderfsm.fleet")
T = TypeVar("T")
R = TypeVar("R")

BACKOFF_MIN, BACKOFF_MAX = 0.1, 5.0
"""Retries of a journal call that failed (the database is down, say)."""
BATCH = 256
"""Changes written in one transaction, at most."""
UNTRACK_GATHER = 0.05
"""Seconds the writer waits when only "no longer tracked" marks are queued, to write
those of that moment together: nothing waits on them (a mark lost to a crash
costs one needless resume and Get order), and at hundreds of orders a second
one transaction each was a commit per order on every instance."""


class WritesJournal:
    """The fleet link's journal writes (mixed into ``FleetLink``).

    A mixin rather than an object of its own: the link's calls queue the notes
    and its follower's catch-up reads what a track found written before; what
    the writer uses of the link is declared here.
    """

    log: OrderLog
    up: bool
    _notes: list[Any]
    _news: anyio.Event
    _writing: bool
    _urgent: bool
    _flushed: anyio.Event
    _lease_now: anyio.Event

    if TYPE_CHECKING:

        @property
        def settled_log(self) -> SettledLog: ...

        async def _catch_up(self, orders: Iterable[int]) -> None: ...

    def _queue(self, note: Any) -> None:
        """Queue a note to write; ``("written", call)`` calls ``call()`` once everything
        queued before it is written."""
        self._notes.append(note)
        self._writing = True
        if note[0] != "untrack":
            self._urgent = True
        self._news.set()

    async def flush(self, within: float) -> bool:
        """Wait (at most ``within`` s) until everything queued is written: a tracker
        that closes leaves the journal knowing what it knew.  False if it could not."""
        with anyio.move_on_after(within):
            while self._writing:
                self._flushed = anyio.Event()
                await self._flushed.wait()
            return True
        logger.warning(
            "closing with %d journal writes not done",
            len(self._notes),
            extra={"event": "fleet.writes_not_done", "count": len(self._notes)},
        )
        return False

    async def _retrying(self, what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """``call()`` until it succeeds: a database outage delays, never drops, a write.
        A ``JournalValueRefused`` is raised: the same values would be refused again (a
        statement refused for a missing table or permission is retried: a deploy may
        be mending it)."""
        delay = BACKOFF_MIN
        while True:
            try:
                result = await call()
            except JournalValueRefused:
                raise
            except OrderFsmError as exc:
                if self.up:
                    logger.warning(
                        "journal unavailable (%s): %s",
                        what,
                        exc,
                        extra={"event": "journal.unavailable", "doing": what},
                    )
                self.up = False
                await anyio.sleep(delay)
                delay = min(2 * delay, BACKOFF_MAX)
                continue
            if not self.up:
                logger.info(
                    "journal back (%s)", what, extra={"event": "journal.back", "doing": what}
                )
            self.up = True
            return result

    async def _write(self) -> None:
        """Write what was queued, in order, in batches, retrying until done."""
        from transports.journal.orders import Note

        log = self.log
        while True:
            if not self._notes:
                self._writing = False
                self._flushed.set()
                await self._news.wait()
            self._news = anyio.Event()
            if not self._urgent:
                await self._gather_untracks()
            self._urgent = False
            while self._notes:
                if any(item[0] == "catch-up" for item in self._notes):
                    # Resumed orders' past, all of it in one read (chunked there), not
                    # a read per batch: a restart resuming 10,000 orders made 40 reads
                    # in turn, each waiting for a loop busy starting their pollers.
                    resumed = [item[1] for item in self._notes if item[0] == "catch-up"]
                    self._notes = [item for item in self._notes if item[0] != "catch-up"]
                    await self._catch_up(resumed)
                    continue
                batch, self._notes = self._notes[:BATCH], self._notes[BATCH:]
                # Every track is written, before the untracks, and an untrack only if it
                # came last (an order forgotten, then tracked again meanwhile, stays
                # tracked).  A track and then an untrack are both written: an order that
                # settled before its track was written keeps a row the on_settled sweep
                # judges (marked tracked, with its goal), or its call was lost with a
                # process that died in it.
                last = {item[1]: item[0] for item in batch if item[0] in ("track", "untrack")}
                tracks = list({item[1]: item[1:] for item in batch if item[0] == "track"}.values())
                past: dict[int, int] = {}
                if tracks:
                    rows = await self._write_or_drop_refused("track", log.track_many, tracks)
                    past.update({row.order_id: 0 for row in rows if row.version})
                    self._lease_now.set()  # a lease asked before the row existed took nothing
                if past:
                    await self._catch_up(past)
                notes = [Note(*item[1:]) for item in batch if item[0] == "note"]
                if notes:
                    await self._write_or_drop_refused("record", log.record, notes)
                lapses = [item[1] for item in batch if item[0] == "lapse"]
                if lapses:
                    await self._write_or_drop_refused("owe", self.settled_log.owe_lapses, lapses)
                done = [item[1] for item in batch if item[0] == "untrack" == last[item[1]]]
                if done:
                    await self._write_or_drop_refused("untrack", log.untrack, done)
                for item in batch:
                    if item[0] == "written":
                        item[1]()

    async def _write_or_drop_refused(
        self, what: str, write: Callable[[list[T]], Awaitable[list[R] | None]], items: list[T]
    ) -> list[R]:
        """``write(items)``, retried through outages; what the database refuses (a value
        it cannot store) is written again one item at a time, and an item refused alone
        is dropped and logged: one bad value must not hold back every later write of
        this instance, which waiters on other instances would never hear of."""
        try:
            return await self._retrying(what, functools.partial(write, items)) or []
        except JournalValueRefused as exc:
            if len(items) == 1:
                logger.error(
                    "the journal refused to %s %r, which is dropped: %s",
                    what,
                    items[0],
                    exc,
                    extra={"event": "fleet.write_refused"},
                )
                return []
        written: list[R] = []
        for item in items:
            written.extend(await self._write_or_drop_refused(what, write, [item]))
        return written

    async def _gather_untracks(self) -> None:
        with anyio.move_on_after(UNTRACK_GATHER):
            while not self._urgent:
                await self._news.wait()
                self._news = anyio.Event()
