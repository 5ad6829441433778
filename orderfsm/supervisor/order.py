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
from typing import TYPE_CHECKING, Any

import anyio

from orderfsm.core import Advanced, Conflict, Observation, OrderBook
from orderfsm.errors import OrderFsmError
from orderfsm.interface import WEBSOCKET, Health, HealthReport
from orderfsm.supervisor.policy import Situation
from orderfsm.supervisor.records import Change, ConflictSeen, FinalResult, StatusChange, User

if TYPE_CHECKING:
    from transports.polling import OrderDetails

logger = logging.getLogger("orderfsm")

ChangeHook = Callable[[Change], None]
ReportHook = Callable[[int, HealthReport], None]


class TrackedOrder:
    __slots__ = (
        "_done",
        "_news",
        "attachment",
        "book",
        "check_once",
        "custom_error",
        "custom_running",
        "details",
        "ended",
        "error",
        "final",
        "helpers",
        "is_finished",
        "log",
        "on_change",
        "on_report",
        "order_id",
        "poller",
        "polling_error",
        "result",
        "review_at",
        "seen_on_websocket",
        "started_at",
        "unseen_checked",
        "user",
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
        wake: Callable[[TrackedOrder], None] | None = None,
        on_change: ChangeHook | None = None,
        on_report: ReportHook | None = None,
    ):
        self.order_id = order_id
        self.user = user
        self.book = book
        self.started_at = now
        self.websocket: Health | None = Health.CONNECTING if websocket else None
        self.websocket_since = now
        self.websocket_error: OrderFsmError | None = None
        self.polling_error: OrderFsmError | None = None
        self.custom_running = 0
        self.custom_error: OrderFsmError | None = None
        """The first error a custom transport ended with."""
        self.check_once = False
        """A source said news may have been lost: look once with Get order."""
        self.seen_on_websocket = False
        """The user's socket delivered (or replayed) something about this order."""
        self.log: list[Change] = []
        """Changes and conflicts in the order they were applied (read it, do not
        change it).  Application order, not ``at`` order: a socket replaying what
        it saw before the order was attached delivers an older ``at`` after newer
        news, and a late ``watch`` must replay what earlier ones saw."""
        self.final: StatusChange | None = None
        self.details: OrderDetails | None = None
        self.result: FinalResult | None = None
        self.error: OrderFsmError | None = None
        self.is_finished = False
        """It has its ``result`` or its ``error``: waiters may return."""
        self.ended = False
        """No transport runs for it any more; ``result`` or ``error`` may still be coming."""
        self.wake = wake or _nobody
        """Asks the scheduler to look at this order again soon."""
        self.on_change = on_change
        self.on_report = on_report
        # The scheduler's bookkeeping: what it set up for the order.
        self.attachment: Any = None
        self.poller: tuple[anyio.CancelScope, float] | None = None
        self.helpers: set[anyio.CancelScope] | None = None
        """Scopes of the order's running custom transports and Get order checks."""
        self.unseen_checked = False
        self.review_at: float | None = None
        self._done: anyio.Event | None = None
        self._news: anyio.Event | None = None
        """Set on the next change or at the end; created only while a watcher waits."""

    # --- news from transports -------------------------------------------

    def observe(self, observation: Observation) -> None:
        if observation.source == WEBSOCKET:
            self.seen_on_websocket = True
        outcome = self.book.apply(observation)
        if self.is_finished:
            if type(outcome) is Conflict:
                logger.warning(
                    "order %s ended %s, but %s now says %s",
                    self.order_id, outcome.current, observation.source, outcome.observed,
                )  # fmt: skip
            return
        if type(outcome) is Advanced:
            change = StatusChange(
                self.order_id,
                outcome.status,
                outcome.previous,
                outcome.skipped,
                observation.source,
                observation.at,
            )
            self._record(change)
            if outcome.final:
                self.final = change
                self._keep_details(observation)
                self.wake(self)
        elif type(outcome) is Conflict and all(
            type(c) is not ConflictSeen or c.observed is not outcome.observed for c in self.log
        ):
            self._record(
                ConflictSeen(
                    self.order_id,
                    outcome.current,
                    outcome.observed,
                    observation.source,
                    observation.at,
                )
            )

    def _record(self, change: Change) -> None:
        self.log.append(change)
        # Listeners first: told before the scheduler's end-of-tracking work
        # takes the loop, they see a final status with the least delay.
        if self.on_change is not None:
            try:
                self.on_change(change)
            except Exception:  # an application callback must not break tracking
                logger.exception("on_change callback failed")
        self._tell_watchers()

    def _keep_details(self, observation: Observation) -> None:
        # Details only ever come from Get order: if that module was never loaded,
        # nothing can hold any, and importing it here would stall the loop on the
        # first final status of a WebSocket-only run.
        polling = sys.modules.get("transports.polling.order")
        if polling is not None and isinstance(observation.raw, polling.OrderDetails):
            self.details = observation.raw

    def report(self, report: HealthReport) -> None:
        if self.on_report is not None and not self.is_finished:
            try:
                self.on_report(self.order_id, report)
            except Exception:  # an application callback must not break tracking
                logger.exception("on_report callback failed")
        if report.gap:
            self.check_once = True
            self.wake(self)
        if report.source != WEBSOCKET or self.websocket is None:
            return  # pollers' failures reach the scheduler as exceptions
        if report.health is not self.websocket:
            self.websocket = report.health
            self.websocket_since = report.at
            if report.health is Health.FAILED:
                self.websocket_error = report.error
            self.wake(self)

    # --- the scheduler's view ------------------------------------------------

    def situation(self, can_poll: bool) -> Situation:
        return Situation(
            started_at=self.started_at,
            websocket=self.websocket,
            websocket_since=self.websocket_since,
            can_poll=can_poll and self.polling_error is None,
        )

    @property
    def changes(self) -> list[StatusChange]:
        return [c for c in self.log if type(c) is StatusChange]

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
        """Return once the log holds more than ``seen`` entries or the order is finished.

        Watchers read the log at their own pace and wait here: no per-watcher
        queue to fill up or to feed on every change.
        """
        if len(self.log) > seen or self.is_finished:
            return
        if self._news is None:
            self._news = anyio.Event()
        await self._news.wait()

    def _tell_watchers(self) -> None:
        news, self._news = self._news, None
        if news is not None:
            news.set()

    def finish(self, result: FinalResult | None, error: OrderFsmError | None) -> None:
        self.result, self.error = result, error
        self.is_finished = self.ended = True
        if self._done is not None:
            self._done.set()
        self._tell_watchers()


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
