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
others follow the journal.  One that can follow an order no more (its socket's
time is over, and it does not poll) lets the lease go at once and follows the
journal (:mod:`orderfsm.supervisor.handover`).  A lease that runs out (its
owner was SIGKILLed), or was let go, is taken over with a Get order at once:
by an instance that follows the order too, at its next renewal, or else by
one that can follow any order through Xsolla (it has tokens), which adopts
such orders on a timer, and once at its start (with its own previous life's:
:mod:`orderfsm.supervisor.takeover`).
``on_settled`` is called once
per order and event (its settlement, a later refund) across the fleet
(claims in the journal; :mod:`orderfsm.supervisor.settled`).

This module is the link's face to the tracker and its tasks' start; the tasks
themselves are the writer (:mod:`orderfsm.supervisor.fleet_writer`), the
follower (:mod:`orderfsm.supervisor.fleet_follower`), the leases and
adoption (:mod:`orderfsm.supervisor.fleet_leases`) and the reader of expired
orders' verdicts (:mod:`orderfsm.supervisor.fleet_lapses`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from orderfsm.core import Verdict, verdict
from orderfsm.journal.orders import ChangeRow, OrderRow
from orderfsm.supervisor.fleet_follower import FollowsJournal
from orderfsm.supervisor.fleet_lapses import AwaitsLapseVerdicts
from orderfsm.supervisor.fleet_leases import HoldsLeases
from orderfsm.supervisor.fleet_writer import WritesJournal
from orderfsm.supervisor.records import StatusChange
from orderfsm.supervisor.settled import (
    CallsOnSettled,
    Settled,
    SettledHandler,
    SettledInTransaction,
)

if TYPE_CHECKING:
    from orderfsm.supervisor.order import TrackedOrder
    from transports.journal.order_log import OrderLog

logger = logging.getLogger("orderfsm.fleet")

# The on_settled event's types live in supervisor.settled; still importable from here.
__all__ = ["LEASE", "FleetLink", "Settled", "SettledHandler", "SettledInTransaction"]

LEASE = 15.0
"""Seconds an owner holds an order without renewing: how long a SIGKILLed
instance's orders wait for another to take over (Xsolla's clients give a
status up to 3 s late by polling; a few lease periods are no loss)."""
BACKSTOP = 3.0
"""Seconds between two reads of every followed order when no wake-up came."""
BUSY_BACKSTOP = 30.0
"""Seconds between two reads of every followed order however many wake-ups come: under
steady traffic the quiet backstop never comes, and what no wake-up told (a NOTIFY
lost to a bug, a change written by hand) would wait for good.  Not every 3 s: with
thousands of orders followed, a read of them all that often cost about 2 ms of the
p99 from webhook to waiter at 500 webhooks/s (``bench_fleet``)."""


class FleetLink(CallsOnSettled, WritesJournal, FollowsJournal, HoldsLeases, AwaitsLapseVerdicts):
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
        self.busy_backstop = BUSY_BACKSTOP
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
        self._settled: list[tuple[Settled, int | None]] = []
        """Events to call, each with its change's journal version when read from there."""
        self._told: dict[int, Verdict] = {}
        """The answer each order's last ``on_settled`` event gave."""
        self._settled_news = anyio.Event()
        self._lapsed_calls: set[int] = set()
        """Orders settled here as expired whose ``on_settled`` is not recorded yet: kept
        tracked in the journal, their leases held, until it is (the sweep cannot judge
        a grace; an instance resuming the order can)."""
        self._lease_now = anyio.Event()
        self._verdict_asks = {}
        """Expired orders whose grace's verdict is awaited here, each with its next read's
        answer (:mod:`orderfsm.supervisor.fleet_lapses`)."""
        self._verdict_asked = anyio.Event()
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

    def resuming(self, order_id: int) -> None:
        """The order is about to be tracked from the journal's row: the row says so
        already, so only its past is read (a restart with thousands is quick)."""
        self._resumed.add(order_id)

    def reread(self, order_id: int) -> None:
        """An order untracked here after it settled is wanted again: what was applied
        meanwhile was dropped, so its whole log is read again (the core drops what
        was known)."""
        self.cursors[order_id] = 0
        self._queue(("catch-up", order_id))

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
                self._settle(order, change, raw if type(raw) is ChangeRow else None)

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
            tg.start_soon(self._read_verdicts, name="orderfsm fleet verdicts")
            if self.keep_name is not None:
                tg.start_soon(self.keep_name, name="orderfsm fleet name")
            if self.adopts:
                tg.start_soon(self._adopt_orphans, name="orderfsm fleet adopter")
            if self.calls_settled:
                tg.start_soon(self._call_settled, tg, name="orderfsm fleet settled")
                tg.start_soon(self._sweep, name="orderfsm fleet sweep")
