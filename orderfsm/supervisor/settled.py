"""``on_settled``: called once per order and settled status across a fleet.

Each settlement a tracker applies (and each later change that alters the answer,
a refund) becomes a :class:`Settled` event; the instance that claims it in the
journal runs the handler, and records the call there, retrying until it is
recorded by this instance or another.  A sweep runs the calls an instance died
owing.  Kept apart from the rest of the fleet's link
(:mod:`orderfsm.supervisor.fleet`: writing changes, following others', leases)
because it is the application's side: its handler, its failures and its
transaction, none of which the link's own journal traffic waits on.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import attrs
from anyio.abc import TaskGroup

from orderfsm.core import LAPSED_STATUSES, Status, Verdict, verdict
from orderfsm.errors import OrderFsmError
from orderfsm.journal.orders import settled_call, settled_key

if TYPE_CHECKING:
    from orderfsm.supervisor.order import TrackedOrder
    from orderfsm.supervisor.records import StatusChange
    from transports.journal.order_log import OrderLog

logger = logging.getLogger("orderfsm.fleet")

SETTLED_AT_ONCE = 8
"""``on_settled`` calls running at once in one instance."""
SETTLED_RETRY_MIN, SETTLED_RETRY_MAX = 0.1, 30.0
"""The first and the longest wait between two tries of one ``on_settled`` call."""
SWEEP_WINDOW = 24 * 3600.0
"""How far back the sweep looks for settlements nobody handled."""


@attrs.frozen
class Settled:
    """What ``on_settled`` is told: an order settled (or a later change of it, a refund).

    Fleet-wide, once per order and status: whichever instance learns of it
    first runs the handler, and a failed or interrupted one runs again.
    """

    order_id: int
    status: Status
    until: Status
    succeeded: bool
    """The goal was reached (``False`` for a refund, an expired order)."""
    later: bool = False
    """It followed an earlier settlement (a refund after ``done``)."""


SettledHandler = Callable[[Settled], Awaitable[None]]
"""Called once per order and settled status across the fleet, until it returns."""
SettledInTransaction = Callable[[Settled, Any], None]
"""The exactly-once form: given the event and the journal's open connection (the
grant written in the transaction that records the call), in a worker thread."""


class CallsOnSettled:
    """The fleet link's ``on_settled`` calls (mixed into ``FleetLink``).

    A mixin rather than an object of its own: which events are owed depends on
    the link's orders (what each was last told, which expired ones it still
    holds), and a recorded call untracks through the link's queue; what it uses
    of the link is declared here.
    """

    log: OrderLog
    lease: float
    on_settled: SettledHandler | None
    on_settled_transactional: SettledInTransaction | None
    _orders: dict[int, TrackedOrder]
    _settled: list[Settled]
    _settled_news: anyio.Event
    _told: dict[int, Verdict]
    _lapsed_calls: set[int]

    if TYPE_CHECKING:

        def _queue(self, note: Any) -> None: ...

    def _settle(self, order: TrackedOrder, change: StatusChange) -> None:
        status = change.status
        answer = self._told[order.order_id] = verdict(status, order.until)
        succeeded = answer is Verdict.SUCCEEDED
        later = change is not order.settled
        self._settled.append(Settled(order.order_id, status, order.until, succeeded, later))
        self._settled_news.set()

    async def _call_settled(self, tg: TaskGroup) -> None:
        limiter = anyio.CapacityLimiter(SETTLED_AT_ONCE)
        running: set[tuple[int, Status]] = set()
        while True:
            await self._settled_news.wait()
            self._settled_news = anyio.Event()
            events, self._settled = self._settled, []
            for event in events:
                key = (event.order_id, event.status)
                if key not in running:
                    running.add(key)
                    tg.start_soon(self._handle_settled, event, limiter, running)

    async def _handle_settled(
        self, event: Settled, limiter: anyio.CapacityLimiter, running: set[tuple[int, Status]]
    ) -> None:
        """Claim the event in the journal, run the handler, record it; retried until
        it is recorded here or elsewhere (a failed handler, an outage, a busy owner)."""
        from transports.journal import NewDelivery

        body = json.dumps(attrs.asdict(event), default=str).encode()
        delivery = NewDelivery(
            "settled", settled_key(event.order_id, event.status), event.order_id,
            body, (), None, time.time(),
        )  # fmt: skip
        delay = SETTLED_RETRY_MIN
        try:
            while True:
                try:
                    async with limiter:
                        if await self._settle_once(event, delivery):
                            self._recorded(event)
                            return
                except OrderFsmError as exc:
                    logger.warning("on_settled for order %s waits: %s", event.order_id, exc)
                await anyio.sleep(delay)
                delay = min(2 * delay, SETTLED_RETRY_MAX)
        finally:
            running.discard((event.order_id, event.status))

    def _recorded(self, event: Settled) -> None:
        """An expired order's call is recorded: now nobody needs to resume it."""
        if event.status in LAPSED_STATUSES and event.order_id in self._lapsed_calls:
            self._lapsed_calls.discard(event.order_id)
            order = self._orders.get(event.order_id)
            if order is None or order.ended:  # not tracked again here meanwhile
                self._queue(("untrack", event.order_id))

    async def _settle_once(self, event: Settled, delivery: Any) -> bool:
        """One try; True once the call is recorded (by this instance or another)."""
        from transports.journal import Answer, Reply
        from transports.journal.base import Work

        journal = self.log.journal
        busy = Answer(503)
        transactional = self.on_settled_transactional
        if transactional is not None:

            def work(connection: Any, attempt: int) -> tuple[Any, str | None]:
                try:
                    transactional(event, connection)
                except Exception as exc:
                    logger.exception("on_settled_transactional failed for %s", event)
                    return Answer(500), repr(exc)
                return Answer(204), None

            ran = await journal.run(delivery, Work(work), busy)
            return ran.answer.ok
        assert self.on_settled is not None
        taken = await journal.begin(delivery, busy)
        if isinstance(taken, Reply):
            return taken.answer.ok  # done already, here or elsewhere; or still running
        try:
            await self.on_settled(event)
        except Exception as exc:
            logger.exception("on_settled failed for %s", event)
            await journal.settle(taken, Answer(500), repr(exc), busy)
            return False
        await journal.settle(taken, Answer(204), None, busy)
        return True

    async def _sweep(self) -> None:
        """Settlements whose handler never got recorded (their instance died): run them."""
        while True:
            await anyio.sleep(self.lease)
            try:
                found = await self.log.unhandled(time.time() - SWEEP_WINDOW)
            except OrderFsmError as exc:
                logger.warning("journal unavailable (settled sweep): %s", exc)
                continue
            # Each order's first call owed, this time: the next one after it is recorded,
            # in the order a live instance would have made them.
            first: dict[int, tuple[Status, Status | None, Status]] = {}
            for order_id, status, previous, until in found:
                first.setdefault(order_id, (status, previous, until))
            for order_id, (status, previous, until) in first.items():
                call = settled_call(previous, status, until)
                assert call is not None  # the SQL reads only changes that call
                self._settled.append(Settled(order_id, status, until, *call))
            if found:
                self._settled_news.set()
