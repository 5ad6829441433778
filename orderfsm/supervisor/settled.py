"""``on_settled``: called once per order and event (its settlement, a refund) across a fleet.

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

import contextlib
import functools
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import attrs
from anyio.abc import TaskGroup

from orderfsm.callables import require_ran
from orderfsm.core import LAPSED_STATUSES, Status, Verdict, verdict
from orderfsm.errors import OrderFsmError
from orderfsm.journal import Answer
from orderfsm.journal.orders import (
    ChangeRow,
    later_in_journal,
    settled_call,
    settled_key,
    settled_name,
    told_for_good,
)

if TYPE_CHECKING:
    from orderfsm.supervisor.order import TrackedOrder
    from orderfsm.supervisor.records import StatusChange
    from transports.journal import NewDelivery
    from transports.journal.order_log import OrderLog
    from transports.journal.settled_log import SettledLog
    from transports.journal.steps import Taken

logger = logging.getLogger("orderfsm.fleet")

SETTLED_AT_ONCE = 8
"""``on_settled`` calls running at once in one instance."""
SETTLED_RETRY_MIN, SETTLED_RETRY_MAX = 0.1, 30.0
"""The first and the longest wait between two tries of one ``on_settled`` call."""
SWEEP_PAGE = 1000
"""Orders the sweep judges in one statement (one page every lease period)."""


@attrs.frozen
class Settled:
    """What ``on_settled`` is told: an order settled (or a later change of it, a refund).

    Fleet-wide, once per order and event: whichever instance learns of it
    first runs the handler, and a failed or interrupted one runs again.  For the goal
    ``paid`` the settlement is one event whether ``paid`` or ``done`` was heard first
    (``status`` says which).
    """

    order_id: int
    status: Status
    until: Status
    succeeded: bool
    """The goal was reached (``False`` for a refund, an expired order)."""
    later: bool = False
    """It followed an earlier settlement (a refund after ``done``)."""


SettledHandler = Callable[[Settled], Awaitable[None] | None]
"""Called once per order and event across the fleet, until it returns: an
``async def`` (or a plain ``def``, which runs on the event loop: keep it short, or
use the transactional form, which runs in a worker thread)."""
SettledInTransaction = Callable[[Settled, Any], None]
"""The exactly-once form: given the event and the journal's open connection (the
grant written in the transaction that records the call), in a worker thread."""


def _delivery(event: Settled) -> NewDelivery:
    """The call's claim, as a delivery of the journal: its key names the event."""
    from transports.journal import NewDelivery

    body = json.dumps(attrs.asdict(event), default=str).encode()
    return NewDelivery(
        "settled", settled_key(event.order_id, _name(event)), event.order_id,
        body, (), None, time.time(),
    )  # fmt: skip


def _name(event: Settled) -> Status:
    """The call's name: one per order and event (a settlement, heard as ``paid`` or as
    ``done`` for the goal ``paid``), the same on every instance and in the sweep."""
    return settled_name(event.status, event.until)


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
    _settled: list[tuple[Settled, int | None]]
    _settled_news: anyio.Event
    _told: dict[int, Verdict]
    _lapsed_calls: set[int]
    sweeps = 0
    """Pages the sweep has read (for tests: "the sweep ran since")."""

    @functools.cached_property
    def settled_log(self) -> SettledLog:
        from transports.journal.settled_log import SettledLog

        return SettledLog(self.log)

    if TYPE_CHECKING:

        def _queue(self, note: Any) -> None: ...

    def _settle(
        self, order: TrackedOrder, change: StatusChange, row: ChangeRow | None = None
    ) -> None:
        """``row``: the change as the journal holds it, when read from there (an order
        tracked again long after it settled reads its past there).

        ``later`` when this instance settled the order before, or the journal holds a
        settlement before the change (another instance's grant): an instance that
        heard the order's past only in part must not call a refund after a grant
        ``later=False``, a grant never revoked (reviews found both ways it did).
        Erring the other way (``later`` with no grant made, as after news the journal
        never held) is the handler's to shrug off: revoke what was granted."""
        status = change.status
        answer = self._told[order.order_id] = verdict(status, order.until)
        succeeded = answer is Verdict.SUCCEEDED
        call = None if row is None else settled_call(row.previous, row.status, order.until)
        later = change is not order.settled or (call is not None and call[1])
        event = Settled(order.order_id, status, order.until, succeeded, later)
        version = None if row is None else row.version
        # Called once the order's notes queued so far are written (its track, this
        # change): an instance that dies in the call leaves what the sweep needs.
        self._queue(("written", functools.partial(self._owed_here, event, version)))

    def _owed_here(self, event: Settled, version: int | None) -> None:
        self._settled.append((event, version))
        self._settled_news.set()

    async def _call_settled(self, tg: TaskGroup) -> None:
        """Each order's events in one task, one after the other: a refund's call is not
        made while the delivery's before it is unanswered (its instance died mid-call,
        say: its claim is retried here until that claim's lease runs out)."""
        limiter = anyio.CapacityLimiter(SETTLED_AT_ONCE)
        queues: dict[int, list[tuple[Settled, int | None]]] = {}
        while True:
            await self._settled_news.wait()
            self._settled_news = anyio.Event()
            events, self._settled = self._settled, []
            for event, version in events:
                queue = queues.get(event.order_id)
                if queue is None:
                    queues[event.order_id] = [(event, version)]
                    tg.start_soon(self._handle_order, queues, event.order_id, limiter)
                elif all(_name(e) is not _name(event) for e, _ in queue):
                    queue.append((event, version))

    async def _handle_order(
        self,
        queues: dict[int, list[tuple[Settled, int | None]]],
        order_id: int,
        limiter: anyio.CapacityLimiter,
    ) -> None:
        """The order's events in order; the one being called stays first in its queue,
        so the same event found again (the sweep) is not queued twice."""
        queue = queues[order_id]
        try:
            while queue:
                await self._handle_settled(*queue[0], limiter)
                queue.pop(0)
        finally:
            del queues[order_id]

    async def _handle_settled(
        self, event: Settled, version: int | None, limiter: anyio.CapacityLimiter
    ) -> None:
        """Claim the event in the journal, run the handler, record it; retried until
        it is recorded here or elsewhere (a failed handler, an outage, a busy owner).

        An event is first looked up in the order's row (its change's ``version`` when
        read from the journal, else the row's status stands for it): a call recorded
        there is not made again, though the retention has pruned its claim (an order
        tracked again months after it settled: its claim gone, the claim alone would
        let the handler run twice)."""
        delay = SETTLED_RETRY_MIN
        # A lapse this instance judged: its debt (claim and flag) is written before
        # its call, not only by the write queue, or dying in the call would lose it.
        owing = event.status in LAPSED_STATUSES and event.order_id in self._lapsed_calls
        delivery = None
        while True:
            try:
                # Within the limiter, the judgement's read too: a sweep's page holds up
                # to 1,000 events, whose reads at once would starve the journal's
                # threads (the leases' renewals among them; a review found it).
                async with limiter:
                    if delivery is None:  # once: after that the claim decides, and retries
                        judgement = await self._judge(event, version)
                        if judgement is None:
                            return
                        event, delivery = judgement, _delivery(judgement)
                    if owing:
                        await self.settled_log.owe_lapses([event.order_id])
                        owing = False
                    if await self._settle_once(event, delivery):
                        self._recorded(event)
                        await self._tell(event.order_id)
                        return
            except OrderFsmError as exc:
                logger.warning(
                    "on_settled for order %s waits: %s",
                    event.order_id,
                    exc,
                    extra={"event": "settled.waits", "order_id": event.order_id},
                )
            await anyio.sleep(delay)
            delay = min(2 * delay, SETTLED_RETRY_MAX)

    async def _judge(self, event: Settled, version: int | None) -> Settled | None:
        """The event to call, or ``None`` when the order's row says it was made.

        ``later`` too when this instance settled the order otherwise before (a sweep's
        event knows only the journal); for news not read from the journal, when the
        journal holds a settlement before its change (a refund heard first from Xsolla
        after another instance's grant); and for a refund, when the row holds a
        success (its own news refused, another instance's grant written): reviews found
        refunds after a grant called ``later=False``, a grant never revoked by a
        handler that revokes on it."""
        mark = await self.settled_log.mark(event.order_id)
        if mark is not None and told_for_good(mark, event.status, event.until, version):
            return None
        if event.later:
            return event
        later = False
        order = self._orders.get(event.order_id)
        if order is not None and order.settled is not None:
            first = settled_name(order.settled.status, event.until)
            # Another goal's settlement here is no earlier success of this goal (the
            # sweep's events carry the row's, the strictest): only a refund follows it.
            same_goal = order.until is event.until or not event.succeeded
            later = same_goal and first is not settled_name(event.status, event.until)
        if not later and mark is not None and version is None:
            later = later_in_journal(mark, event.status, event.until)
        refund = event.status is Status.CANCELED
        if not later and refund and mark is not None and mark.status is not None:
            later = verdict(mark.status, event.until) is Verdict.SUCCEEDED
        return attrs.evolve(event, later=True) if later else event

    async def _tell(self, order_id: int) -> None:
        """Mark the order's calls made so far in its row, which outlives the claims; if
        this fails the sweep marks it (the order stays in its page until then)."""
        try:
            await self.settled_log.tell(order_id)
        except OrderFsmError as exc:
            logger.warning(
                "on_settled's mark for order %s waits for the sweep: %s",
                order_id,
                exc,
                extra={"event": "settled.waits", "order_id": order_id},
            )

    def _recorded(self, event: Settled) -> None:
        """An expired order's call is recorded: now nobody needs to resume it."""
        if event.status in LAPSED_STATUSES and event.order_id in self._lapsed_calls:
            self._lapsed_calls.discard(event.order_id)
            order = self._orders.get(event.order_id)
            if order is None or order.ended:  # not tracked again here meanwhile
                self._queue(("untrack", event.order_id))

    async def _settle_once(self, event: Settled, delivery: Any) -> bool:
        """One try; True once the call is recorded (by this instance or another)."""
        from transports.journal import Reply
        from transports.journal.base import Work

        journal = self.log.journal
        busy = Answer(503)
        transactional = self.on_settled_transactional
        if transactional is not None:

            def work(connection: Any, attempt: int) -> tuple[Any, str | None]:
                try:
                    require_ran(transactional(event, connection), awaited=False)
                except Exception as exc:
                    logger.exception(
                        "on_settled_transactional failed for %s",
                        event,
                        extra={"event": "settled.failed", "order_id": event.order_id},
                    )
                    return Answer(500), repr(exc)
                return Answer(204), None

            ran = await journal.run(delivery, Work(work), busy)
            return ran.answer.ok
        assert self.on_settled is not None
        taken = await journal.begin(delivery, busy)
        if isinstance(taken, Reply):
            return taken.answer.ok  # done already, here or elsewhere; or still running
        # The claim is renewed (every third of the lease, by the journal's renewer,
        # fenced by its attempt) until its answer is recorded: a handler slower than
        # the lease, or a slow write of its answer, must not let another instance
        # make the same call.
        with journal.sync.renewer.held(taken.key, taken.attempt):
            try:
                result = self.on_settled(event)
                if inspect.isawaitable(result):  # an async def, or a lambda that makes one
                    await result
                else:  # a plain def ran: awaiting its None would fail after the grant
                    require_ran(result, awaited=True)
            except Exception as exc:
                logger.exception(
                    "on_settled failed for %s",
                    event,
                    extra={"event": "settled.failed", "order_id": event.order_id},
                )
                await self._answer(taken, Answer(500), repr(exc), busy)
                return False
            except BaseException:  # cancelled (the tracker closes): free the key at once
                with contextlib.suppress(OrderFsmError):
                    await self._answer(taken, Answer(500), "interrupted: the tracker closed", busy)
                raise
            # Fenced (another attempt took the key over): the other's answer, or busy
            # while it still runs; only a recorded success ends the retries.
            return (await self._answer(taken, Answer(204), None, busy)).ok

    async def _answer(
        self, taken: Taken, answer: Answer, error: str | None, busy: Answer
    ) -> Answer:
        """Record the handler's answer even while the tracker closes (shielded, for at
        most a lease): a success not recorded is a handler run again elsewhere, and a
        claim left running holds the call up a whole lease."""
        with anyio.move_on_after(self.log.journal.settings.lease, shield=True):
            return await self.log.journal.settle(taken, answer, error, busy)
        return busy

    async def _sweep(self) -> None:
        """Calls owed that no live instance makes (their instance died, their handler
        kept failing): made here.  Every lease period one page of orders, going on
        from the last page's end and round again, so failing orders never hide the
        others; at start, page after page to the end (an app restarted days later)."""
        after: int | None = None
        starting = True
        while True:
            try:
                found, after = await self.settled_log.owed(after or 0, SWEEP_PAGE)
            except OrderFsmError as exc:
                logger.warning(
                    "journal unavailable (settled sweep): %s",
                    exc,
                    extra={"event": "journal.unavailable", "doing": "settled sweep"},
                )
                found, starting = [], False
            for order_id, status, until, succeeded, later in found:
                # Past the order's mark by the sweep's own judgement: no version to look up.
                self._settled.append((Settled(order_id, status, until, succeeded, later), None))
            if found:
                self._settled_news.set()
            self.sweeps += 1
            starting = starting and after is not None
            if not starting:
                await anyio.sleep(self.lease)
