"""One tracker among many: what it tells the journal and what it learns from it.

A journal-backed tracker writes every change it applies (from any of its
sources) to the journal's orders, and applies every change the others wrote,
through the same core, so each instance's ``watch`` / ``wait`` / ``on_change``
sees each change once whatever instance saw it first.  The wake-up is only a
hint (a PostgreSQL NOTIFY, SQLite's ``data_version``); the tables are the
truth: after each wake-up, and after every reconnect, the instance reads the
changes past its per-order cursors, and a slow backstop read covers anything
else.

The instance that follows an order through Xsolla holds a lease on it; the
others follow the journal.  A lease that runs out (its owner was SIGKILLed)
is taken over with a Get order at once: by an instance that follows the
order too, at its next renewal, or else by one that can follow any order
through Xsolla (it has tokens), which adopts such orders on a timer, and
once at its start (with its own previous life's: :mod:`orderfsm.supervisor.takeover`).
``on_settled`` is called once
per order and settled status across the fleet (claims in the journal;
:mod:`orderfsm.supervisor.settled`).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.lowlevel

from orderfsm.core import Observation, Verdict, verdict
from orderfsm.errors import JournalValueRefused, OrderFsmError
from orderfsm.journal.orders import ChangeRow, OrderRow
from orderfsm.supervisor.records import StatusChange
from orderfsm.supervisor.settled import (
    CallsOnSettled,
    Settled,
    SettledHandler,
    SettledInTransaction,
)

if TYPE_CHECKING:
    from orderfsm.supervisor.order import TrackedOrder
    from transports.journal.order_log import News, OrderLog

logger = logging.getLogger("orderfsm.fleet")
T = TypeVar("T")
R = TypeVar("R")

# The on_settled event's types live in supervisor.settled; still importable from here.
__all__ = ["LEASE", "FleetLink", "Settled", "SettledHandler", "SettledInTransaction"]

LEASE = 15.0
"""Seconds an owner holds an order without renewing: how long a SIGKILLed
instance's orders wait for another to take over (Xsolla's clients give a
status up to 3 s late by polling; a few lease periods are no loss)."""
BACKSTOP = 3.0
"""Seconds between two reads of every followed order when no wake-up came."""
BACKOFF_MIN, BACKOFF_MAX = 0.1, 5.0
"""Retries of a journal call that failed (the database is down, say)."""
BATCH = 256
"""Changes written in one transaction, at most."""
UNTRACK_GATHER = 0.05
"""Seconds the writer waits when only "no longer tracked" marks are queued, to write
those of that moment together: nothing waits on them (a mark lost to a crash
costs one needless resume and Get order), and at hundreds of orders a second
one transaction each was a commit per order on every instance."""
APPLY_SLICE = 500
"""Orders' past applied this many changes at a time: a resume's 10,000 at once would
hold the loop (and every socket on it) for a fifth of a second."""
ADOPT_PAGE = 500
"""Orders one instance adopts in one statement, at most (more go at the next period)."""


class FleetLink(CallsOnSettled):
    """Links one tracker's orders with the journal; run :meth:`run` in a task."""

    def __init__(
        self,
        log: OrderLog,
        orders: dict[int, TrackedOrder],
        *,
        follows_xsolla: bool,
        on_settled: SettledHandler | None = None,
        on_settled_transactional: SettledInTransaction | None = None,
        lease: float = LEASE,
        backstop: float = BACKSTOP,
        adopt: Callable[[list[OrderRow]], None] | None = None,
        keep_name: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self.log = log
        self._orders = orders
        self.follows_xsolla = follows_xsolla
        """Whether this instance can follow orders through Xsolla (socket, polling)."""
        self.on_settled = on_settled
        self.on_settled_transactional = on_settled_transactional
        self.calls_settled = on_settled is not None or on_settled_transactional is not None
        self.lease = lease
        self.backstop = backstop
        self.adopt = adopt
        """Called with orders whose owner is gone, their leases just taken here: to
        track as a resume would (``None``: this instance has no tokens to follow them)."""
        self.keep_name = keep_name
        """Run beside the link: keeps this instance's name held (see
        :mod:`transports.journal.instance`); ``None`` where nothing can lose it."""
        self.cursors: dict[int, int] = {}
        """The last journal version applied here, per order followed."""
        self._notes: list[Any] = []
        self._news = anyio.Event()
        self._resumed: set[int] = set()
        """Orders about to be tracked again from the journal's own rows (nothing to write)."""
        self._settled: list[Settled] = []
        self._told: dict[int, Verdict] = {}
        """The answer each order's last ``on_settled`` event gave."""
        self._settled_news = anyio.Event()
        self._lapsed_calls: set[int] = set()
        """Orders settled here as expired whose ``on_settled`` is not recorded yet: kept
        tracked in the journal, their leases held, until it is (the sweep cannot judge
        a grace; an instance resuming the order can)."""
        self._lease_now = anyio.Event()
        self._writing = False
        """Something is queued or being written."""
        self._urgent = False
        """Something queued that others wait on (anything but an untrack mark)."""
        self._flushed = anyio.Event()
        self.up = True
        """The journal answered the last call (``False`` during an outage)."""

    @property
    def adopts(self) -> bool:
        """Whether this instance takes over orders it was not asked for: it can follow
        them through Xsolla, and has tokens for them."""
        return self.follows_xsolla and self.adopt is not None

    # --- what the tracker calls --------------------------------------------------------

    async def read_past(self, order_ids: Iterable[int]) -> dict[int, list[ChangeRow]]:
        """Orders' changes, per order, read before they are tracked here: a resume
        applies each order's past as it tracks it, before its poller's first
        request, not after ten thousand of them have started.  Empty when the
        journal cannot say now: the catch-up that follows each order reads it."""
        try:
            changes = await self.log.catch_up(dict.fromkeys(order_ids, 0))
        except OrderFsmError as exc:
            logger.info("journal unavailable (reading resumed orders' past): %s", exc)
            return {}
        past: dict[int, list[ChangeRow]] = {}
        for change in changes:
            past.setdefault(change.order_id, []).append(change)
        return past

    def apply_past(self, changes: list[ChangeRow]) -> None:
        """Changes read by :meth:`read_past`, for orders tracked here since (those past
        their cursors: an order followed here already has had the rest)."""
        cursors = self.cursors
        self._apply([c for c in changes if c.version > cursors.get(c.order_id, c.version)])

    def resuming(self, order_id: int) -> None:
        """The order is about to be tracked from the journal's row: the row says so
        already, so only its past is read (a restart with thousands is quick)."""
        self._resumed.add(order_id)

    def tracked(self, order: TrackedOrder) -> None:
        """A new order here: follow it in the journal, and ask for its lease."""
        order_id = order.order_id
        self.cursors.setdefault(order_id, 0)
        order.owned = not self.follows_xsolla  # nothing to own: the journal is all it follows
        if order_id in self._resumed:
            self._resumed.discard(order_id)
            self._queue(("catch-up", order_id))
        else:
            self._queue(("track", order_id, order.until, order.user.external_id))
        self._lease_now.set()

    def advanced(self, order: TrackedOrder, change: StatusChange, raw: object) -> None:
        """A change applied here; written unless it came from the journal."""
        if type(raw) is not ChangeRow:
            self._queue(("note", order.order_id, change.status, change.source, time.time()))
        if self.calls_settled and order.settled is not None:
            answer = verdict(change.status, order.until)
            # The settlement, then only what changes the answer: a refund after
            # delivery; a success after the expired grace (not each step of it).
            if change.settled or (answer.settled and answer is not self._told.get(order.order_id)):
                self._settle(order, change)

    def ended(self, order: TrackedOrder) -> None:
        """The order settled here, or was given up (untracked, timed out): no one needs
        to resume it.  (A closing tracker leaves its orders to be resumed.)"""
        settled = order.settled
        if settled is not None and not settled.settled:
            # Expired, settled by its grace: its call is owed (its claim, for any
            # instance's sweep: this one may die first, or have no on_settled).
            self._queue(("lapse", order.order_id))
            if self.calls_settled:
                self._lapsed_calls.add(order.order_id)  # untracked once the call is recorded
                self._settle(order, settled)
                return
        self._queue(("untrack", order.order_id))

    def forget(self, order_id: int) -> None:
        """The tracker dropped the order: nothing more is read or told of it."""
        self.cursors.pop(order_id, None)
        self._told.pop(order_id, None)
        self._resumed.discard(order_id)

    def lease_soon(self) -> None:
        """Take or renew the leases now, not at the next period."""
        self._lease_now.set()

    def _queue(self, note: Any) -> None:
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
        logger.warning("closing with %d journal writes not done", len(self._notes))
        return False

    # --- the link's tasks -------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.log.stop_listening()

    async def _run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._write, name="orderfsm fleet writer")
            tg.start_soon(self._follow, name="orderfsm fleet follower")
            tg.start_soon(self._hold_leases, name="orderfsm fleet leases")
            if self.keep_name is not None:
                tg.start_soon(self.keep_name, name="orderfsm fleet name")
            if self.adopts:
                tg.start_soon(self._adopt_orphans, name="orderfsm fleet adopter")
            if self.calls_settled:
                tg.start_soon(self._call_settled, tg, name="orderfsm fleet settled")
                tg.start_soon(self._sweep, name="orderfsm fleet sweep")

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
                    logger.warning("journal unavailable (%s): %s", what, exc)
                self.up = False
                await anyio.sleep(delay)
                delay = min(2 * delay, BACKOFF_MAX)
                continue
            if not self.up:
                logger.info("journal back (%s)", what)
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
                # Tracks are written before untracks: of the two for one order, only
                # the later counts (an order forgotten, then tracked again meanwhile).
                last = {item[1]: item[0] for item in batch if item[0] in ("track", "untrack")}
                tracks = [item[1:] for item in batch if item[0] == "track" == last[item[1]]]
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

    async def _follow(self) -> None:
        """Apply what others wrote: after each wake-up, and at least every ``backstop`` s.

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
        while True:
            news: News | None = None
            try:
                news = await self.log.wait_for_news(self.backstop, self.cursors)
            except OrderFsmError as exc:
                delay = await self._pause(delay, "journal wake-ups unavailable", exc)
                everything = reconnecting = True
            full = everything or news is None or news.everything
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
            logger.warning("%s: %s", what, exc)
        await anyio.sleep(delay)
        return min(2 * delay, self.backstop)

    @staticmethod
    def _back(delay: float) -> float:
        if delay != BACKOFF_MIN:
            logger.info("journal wake-ups back")
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
                logger.error("the journal refused to read orders' past: %s", exc)
                return
            for first in range(0, len(changes), APPLY_SLICE):
                if first:
                    await anyio.lowlevel.checkpoint()  # the loop's other work between slices
                self._apply(changes[first : first + APPLY_SLICE])

    def _apply(self, changes: list[ChangeRow]) -> None:
        now = anyio.current_time()
        cursors = self.cursors
        for change in changes:
            order = self._orders.get(change.order_id)
            cursor = cursors.get(change.order_id)
            if order is None or cursor is None:
                continue
            if change.version > cursor:
                cursors[change.order_id] = change.version
            observation = Observation.trusted(
                change.order_id, change.status, change.source, now, None, change
            )
            order.observe(observation)

    async def _hold_leases(self) -> None:
        """Take, renew and lose the leases of the orders followed through Xsolla."""
        if not self.follows_xsolla:
            await self._stay_wanted()
            return
        while True:
            with anyio.move_on_after(self.lease / 3):
                await self._lease_now.wait()
            self._lease_now = anyio.Event()
            live = [o for o in self._orders.values() if not o.ended]
            if not live and not self._lapsed_calls:
                continue
            try:
                held: dict[int, int] | None = await self.log.lease(
                    [o.order_id for o in live] + list(self._lapsed_calls), self.lease
                )
            except OrderFsmError as exc:
                logger.warning("journal unavailable (leases): %s", exc)
                held = None
            for order in live:
                # Without the journal an instance follows its own orders itself: news
                # twice (two pollers) costs less than news lost.
                owned = True if held is None else order.order_id in held
                if owned is not order.owned:
                    order.owned = owned
                    if owned:
                        order.doubt()  # taken over: a status may have moved meanwhile
                    order.wake(order)

    async def _stay_wanted(self) -> None:
        """An instance that follows only the journal says, at the leases' pace, that its
        orders are still waited on: the instance that followed one through Xsolla may
        give it up (its own waiter left) and mark it not tracked, and then nobody would
        adopt it, and nobody would ever hear ``done`` (no webhook says it)."""
        while True:
            await anyio.sleep(self.lease / 3)
            live = [o.order_id for o in self._orders.values() if not o.ended]
            if not live:
                continue
            try:
                await self.log.want(live)
            except OrderFsmError as exc:
                logger.warning("journal unavailable (marking orders tracked): %s", exc)

    async def _adopt_orphans(self) -> None:
        """Take over the orders whose owner is gone and that no instance following them
        took over (only the dead one did): no sweeper job for the application.

        At the renewals' pace (a third of the lease), so a dead owner's orders wait
        at most a third longer than its lease; one indexed statement, which finds
        nothing almost always.  The lease decides between adopters, as between
        followers: an order is adopted by one instance, and only once its lease ran out.
        """
        assert self.adopt is not None
        while True:
            await anyio.sleep(self.lease / 3)
            try:
                rows = await self.log.adopt(self.lease, ADOPT_PAGE)
            except OrderFsmError as exc:
                logger.warning("journal unavailable (adopting orders): %s", exc)
                continue
            if rows:
                logger.info(
                    "taking over %d orders whose owner is gone",
                    len(rows),
                    extra={"event": "fleet.adopted", "count": len(rows)},
                )
                self.adopt(rows)
