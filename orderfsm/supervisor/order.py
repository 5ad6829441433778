"""One tracked order: what is known about it and who is waiting for it.

All mutation happens from callbacks on the event loop (transport sinks) and
from the tracker's scheduler; nothing here awaits except the waiters, so no
lock is needed.  An order that is only waiting for news owns no task, no
cancel scope and no event: those are made when something needs them, so ten
thousand idle orders cost the garbage collector little (``bench_scale``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from orderfsm.core import LAPSED_STATUSES, Advanced, Conflict, Observation, OrderBook, Status
from orderfsm.core.settle import VERDICTS
from orderfsm.errors import OrderFsmError
from orderfsm.interface import WEBSOCKET, Health, HealthReport
from orderfsm.metrics.counters import NO_COUNTERS, TrackerCounters
from orderfsm.supervisor.order_result import EndsTracking
from orderfsm.supervisor.policy import Situation
from orderfsm.supervisor.records import Change, ConflictSeen, FinalResult, StatusChange, User

if TYPE_CHECKING:
    from orderfsm.supervisor.stragglers import RunningCustom
    from transports.polling import OrderDetails

logger = logging.getLogger("orderfsm")

ChangeHook = Callable[[Change], None]
ReportHook = Callable[[int, HealthReport], None]


class FleetHook(Protocol):
    """What a tracker in a fleet hears of its orders (``orderfsm.supervisor.fleet``)."""

    def advanced(self, order: TrackedOrder, change: StatusChange, raw: object) -> None: ...

    def ended(self, order: TrackedOrder) -> None: ...

    def lease_soon(self) -> None: ...

    async def await_lapse_verdict(
        self, order_id: int, look_takes: float, may_look: bool
    ) -> bool: ...


class TrackedOrder(EndsTracking):
    # With the end's own, in EndsTracking: one object, no __dict__, per order.
    __slots__ = (
        "_news",
        "attachment",
        "book",
        "check_once",
        "checking",
        "conflicted",
        "counters",
        "custom_error",
        "customs",
        "details",
        "fleet",
        "followers",
        "follows",
        "helpers",
        "kept",
        "lapsed",
        "last_look",
        "let_go",
        "log",
        "on_change",
        "on_report",
        "order_id",
        "owned",
        "poller",
        "polling_error",
        "released",
        "review_at",
        "settled",
        "settled_count",
        "settling_late",
        "started_at",
        "until",
        "user",
        "verdicts",
        "wake",
        "websocket",
        "websocket_error",
        "websocket_since",
    )

    def __init__(
        self,
        order_id: int,
        user: User,
        book: OrderBook,
        now: float,
        websocket: bool,
        *,
        until: Status = Status.DONE,
        wake: Callable[[TrackedOrder], None] | None = None,
        on_change: ChangeHook | None = None,
        on_report: ReportHook | None = None,
        counters: TrackerCounters = NO_COUNTERS,
    ):
        self.order_id = order_id
        self.user = user
        self.book = book
        self.started_at = now
        self.until = until
        self.verdicts = VERDICTS[until]
        self.websocket: Health | None = Health.CONNECTING if websocket else None
        self.websocket_since = now
        self.websocket_error: OrderFsmError | None = None
        self.polling_error: OrderFsmError | None = None
        self.customs: list[RunningCustom] | None = None
        """Its custom transports whose tasks run (one cancelled still runs until it returns)."""
        self.custom_error: OrderFsmError | None = None
        """The first error a custom transport ended with."""
        self.check_once = False
        """Something may have been missed: ask Get order once (a gap, a socket back
        after an outage, a host that slept, the start of tracking)."""
        self.checking = False
        """A Get order check is under way; a new doubt waits for it, then checks again."""
        self.last_look: bool | None = None
        """The Get order asked before an ``expired`` order settles, or before an order
        nothing follows any more ends: ``False`` while it is under way, ``True`` once
        answered (or given up on)."""
        self.conflicted = False
        """A conflict is in ``log``: not every entry is a ``StatusChange``."""
        self.log: list[Change] = []
        """Changes and conflicts in the order they were applied (read it, do not
        change it).  Application order, not ``at`` order: a socket replaying what
        it saw before the order was attached delivers an older ``at`` after newer
        news, and a late ``watch`` must replay what earlier ones saw."""
        self.lapsed: StatusChange | None = None
        """The ``expired`` change, while that is the order's status and it is not settled."""
        self.settled: StatusChange | None = None
        """The change that settled the order (for an expired one, its ``expired``)."""
        self.settled_count: int | None = None
        """How much of ``log`` led up to the settlement; what follows came later."""
        self.details: OrderDetails | None = None
        self._result: FinalResult | None = None
        self._result_details: OrderDetails | None = None
        self._result_logged = -1
        """What :attr:`result` is made of until it is first read (``-1``: nothing): the
        details and the log's length when the order finished.  Two fields rather than
        a tuple: one object fewer per order for the collector to count."""
        self.error: OrderFsmError | None = None
        self.is_finished = False
        """It has its ``result`` or its ``error``: waiters may return."""
        self.ended = False
        """No transport runs for it any more; ``result`` or ``error`` may still be coming."""
        self.released = False
        """Untracked, or the tracker closed: nothing more will be applied."""
        self.settling_late = False
        """Ended unsettled, then settled after all: its result is on its way."""
        self.followers = 0
        """The app's ``wait()`` and ``watch()`` calls on it under way."""
        self.kept = False
        """The app (or the fleet's take-over) asked for it with ``track()``: only
        ``untrack()`` stops it, not a ``wait()`` given up on."""
        self.wake = wake or _nobody
        """Asks the scheduler to look at this order again soon."""
        self.on_change = on_change
        self.on_report = on_report
        self.fleet: FleetHook | None = None
        """The journal link of a tracker in a fleet: told each change applied here."""
        self.owned = True
        """This instance follows the order through Xsolla (in a fleet: it holds the lease)."""
        self.let_go = False
        """This instance followed the order through Xsolla and let it go (it could no
        more): it still makes the last look at the end of an expired grace, as nobody
        else may (a fleet where none polls)."""
        self.follows = True
        """This instance can follow the order through Xsolla: it has a source for it (a
        socket, polling, a last Get order under way), or would have if it held the
        lease.  In a fleet only such orders are leased here (the scheduler judges it:
        :mod:`orderfsm.supervisor.handover`)."""
        self.counters = counters
        # The scheduler's bookkeeping: what it set up for the order.
        self.attachment: Any = None
        self.poller: tuple[anyio.CancelScope, float] | None = None
        self.helpers: set[anyio.CancelScope] | None = None
        """Scopes of the order's running Get order checks."""
        self.review_at: float | None = None
        self._done: anyio.Event | None = None
        self._news: anyio.Event | None = None
        """Set on the next change or at the end; created only while a watcher waits."""

    # --- news from transports -------------------------------------------

    def observe(self, observation: Observation) -> None:
        if self.released:
            return
        outcome = self.book.apply(observation)
        if type(outcome) is Advanced:
            self.counters.changes[observation.source] += 1
            status = outcome.status
            settles = self.settled is None and self.verdicts[status].settled
            change = StatusChange(
                self.order_id,
                status,
                outcome.previous,
                outcome.skipped,
                observation.source,
                observation.at,
                settles,
            )
            if settles:
                self.settled, self.lapsed = change, None
                self.settled_count = len(self.log) + 1
                self._keep_details(observation)
            self._record(change)
            if self.fleet is not None:
                self.fleet.advanced(self, change, observation.raw)
            if settles:
                self.wake(self)  # the plan changes: end tracking
            elif self.settled is None:
                if self.lapsed is None and status not in LAPSED_STATUSES:
                    self.details = None  # _lapses, for the usual status: no call
                elif self._lapses(change, observation):
                    self.wake(self)  # the plan changes: start or end a grace
        elif type(outcome) is Conflict and all(
            type(c) is not ConflictSeen or c.observed is not outcome.observed for c in self.log
        ):
            self.counters.conflicts += 1
            self.conflicted = True
            self._record(
                ConflictSeen(
                    self.order_id,
                    outcome.current,
                    outcome.observed,
                    observation.source,
                    observation.at,
                )
            )

    def _lapses(self, change: StatusChange, observation: Observation) -> bool:
        """Note whether the order is expired now; True if that changed."""
        was = self.lapsed
        if change.status in LAPSED_STATUSES:
            self.lapsed = change
            self._keep_details(observation)
            return True
        self.lapsed, self.details = None, None
        return was is not None

    def settle_lapsed(self) -> None:
        """The order stayed expired through its grace: that is its answer now."""
        assert self.lapsed is not None
        self.settled, self.lapsed = self.lapsed, None
        self.settled_count = len(self.log)

    def _record(self, change: Change) -> None:
        self.log.append(change)
        # Listeners first: told before the scheduler's end-of-tracking work
        # takes the loop, they see a settled status with the least delay.
        if self.on_change is not None:
            try:
                self.on_change(change)
            except Exception:  # an application callback must not break tracking
                logger.exception(
                    "on_change callback failed",
                    extra={"event": "callback.failed", "order_id": self.order_id},
                )
        if self._news is not None:
            self._tell_watchers()

    def _keep_details(self, observation: Observation) -> None:
        """Keep the observation's Get order details, or forget older ones: details
        must match the status that may settle the order."""
        # Details only ever come from Get order: if that module was never loaded,
        # nothing can hold any, and importing it here would stall the loop on the
        # first settled status of a WebSocket-only run.
        polling = sys.modules.get("transports.polling.order")
        raw = observation.raw
        self.details = (
            raw if polling is not None and isinstance(raw, polling.OrderDetails) else None
        )

    def report(self, report: HealthReport) -> None:
        """A built-in transport's health report: told to the application, a gap
        checked, the WebSocket's own health followed (a custom transport's is only
        told and checked: :class:`CustomSink`)."""
        self.tell(report)
        if report.gap:
            self.doubt()
        if report.source != WEBSOCKET or self.websocket is None:
            return  # pollers' failures reach the scheduler as exceptions
        if report.health is not self.websocket:
            if report.health is Health.HEALTHY and self.websocket is Health.DEGRADED:
                # Back after an outage: recovery is best effort (centrifugo#165),
                # so the order's status is asked for once as well.
                self.check_once = True
            self.websocket = report.health
            self.websocket_since = report.at
            if report.health is Health.FAILED:
                self.websocket_error = report.error
            self.wake(self)

    def tell(self, report: HealthReport) -> None:
        """Pass a health report on to the application's ``on_report``."""
        if self.on_report is not None and not self.is_finished:
            try:
                self.on_report(self.order_id, report)
            except Exception:  # an application callback must not break tracking
                logger.exception(
                    "on_report callback failed",
                    extra={"event": "callback.failed", "order_id": self.order_id},
                )

    def doubt(self) -> None:
        """News may have been missed: the scheduler asks Get order once."""
        if self.settled is None:
            self.check_once = True
            self.wake(self)

    # --- the scheduler's view ------------------------------------------------

    def situation(self, can_poll: bool) -> Situation:
        lapsed = self.lapsed
        return Situation(
            started_at=self.started_at,
            websocket=self.websocket,
            websocket_since=self.websocket_since,
            can_poll=can_poll and self.polling_error is None,
            # From when it was seen here: a socket shared with an earlier order replays
            # an ``expired`` heard minutes ago, whose grace must not be over already.
            lapsed_since=None if lapsed is None else max(lapsed.at, self.started_at),
            owned=self.owned,
        )

    def changes(self, count: int | None = None) -> list[StatusChange]:
        """The status changes among the first ``count`` log entries (all by default)."""
        return [c for c in self.log[:count] if type(c) is StatusChange]

    @property
    def conflicts(self) -> list[ConflictSeen]:
        return [c for c in self.log if type(c) is ConflictSeen]

    # --- listeners ------------------------------------------------------------

    async def finished(self) -> None:
        """Return once the order has its result or its error."""
        if self.is_finished:
            return
        if self._done is None:
            self._done = anyio.Event()
        await self._done.wait()

    async def news_after(self, seen: int) -> None:
        """Return once the log holds more than ``seen`` entries, or nothing more can come.

        Watchers read the log at their own pace and wait here: no per-watcher
        queue to fill up or to feed on every change.
        """
        if len(self.log) > seen or self.released:
            return
        if self._news is None:
            self._news = anyio.Event()
        await self._news.wait()

    def _tell_watchers(self) -> None:
        news, self._news = self._news, None
        if news is not None:
            news.set()

    # --- the end (the result itself: orderfsm.supervisor.order_result) ----------

    def release(self) -> None:
        """Untracked or closed: watchers that follow past the settlement stop too."""
        self.released = True
        self._tell_watchers()


def given_up(order: TrackedOrder) -> bool:
    """Untracked before it settled: tracking it again starts afresh.  (One untracked
    after, its details perhaps still coming, is followed again as it is: its changes
    were told.)"""
    return order.released and order.settled is None


def _nobody(order: TrackedOrder) -> None:
    """The wake-up of an order no scheduler looks after (a test's, say)."""


class SourceSink:
    """What one transport of one order reports into; drops news after the end."""

    __slots__ = ("_order",)

    def __init__(self, order: TrackedOrder) -> None:
        self._order = order

    def observe(self, observation: Observation, /) -> None:
        if observation.order_id == self._order.order_id:
            self._order.observe(observation)

    def report(self, report: HealthReport, /) -> None:
        self._order.report(report)
