"""One tracked order: what is known about it and who is waiting for it.

All mutation happens from callbacks on the event loop (transport sinks) and
from the order's own runner task; nothing here awaits, so no lock is needed.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from orderfsm.core import Advanced, Conflict, Observation, OrderBook
from orderfsm.errors import OrderFsmError
from orderfsm.interface import WEBSOCKET, Health, HealthReport
from orderfsm.supervisor.policy import Situation
from orderfsm.supervisor.records import Change, ConflictSeen, FinalResult, StatusChange, User

if TYPE_CHECKING:
    from transports.polling import OrderDetails

logger = logging.getLogger("orderfsm")


class TrackedOrder:
    def __init__(
        self,
        order_id: int,
        user: User,
        book: OrderBook,
        now: float,
        websocket: bool,
        on_report: Callable[[int, HealthReport], None] | None = None,
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
        self.custom_errors: list[OrderFsmError] = []
        self.check_once = False
        """A source said news may have been lost: look once with Get order."""
        self.seen_on_websocket = False
        """The user's socket delivered (or replayed) something about this order."""
        self.changes: list[StatusChange] = []
        self.conflicts: list[ConflictSeen] = []
        self._log: list[Change] = []
        """Changes and conflicts in the order they were applied, for late watchers."""
        self.final: StatusChange | None = None
        self.details: OrderDetails | None = None
        self.result: FinalResult | None = None
        self.error: OrderFsmError | None = None
        self.on_report = on_report
        self.scope = anyio.CancelScope()
        self.finished = anyio.Event()
        self._wake = anyio.Event()
        self._news: anyio.Event | None = None
        """Set on the next change or at the end; created only while a watcher waits."""

    # --- news from transports -------------------------------------------

    def observe(self, observation: Observation) -> None:
        if observation.source == WEBSOCKET:
            self.seen_on_websocket = True
        outcome = self.book.apply(observation)
        if self.finished.is_set():
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
            self.changes.append(change)
            self._log.append(change)
            # Watchers first: woken before the runner, they see the change
            # before the runner's end-of-tracking work takes the loop.
            self._tell_watchers()
            if outcome.final:
                self.final = change
                self._keep_details(observation)
                self.wake()
        elif type(outcome) is Conflict and all(
            c.observed is not outcome.observed for c in self.conflicts
        ):
            conflict = ConflictSeen(
                self.order_id,
                outcome.current,
                outcome.observed,
                observation.source,
                observation.at,
            )
            self.conflicts.append(conflict)
            self._log.append(conflict)
            self._tell_watchers()

    def _keep_details(self, observation: Observation) -> None:
        # Details only ever come from Get order: if that module was never loaded,
        # nothing can hold any, and importing it here would stall the loop on the
        # first final status of a WebSocket-only run.
        polling = sys.modules.get("transports.polling.order")
        if polling is not None and isinstance(observation.raw, polling.OrderDetails):
            self.details = observation.raw

    def report(self, report: HealthReport) -> None:
        if self.on_report is not None and not self.finished.is_set():
            try:
                self.on_report(self.order_id, report)
            except Exception:  # an application callback must not break tracking
                logger.exception("on_report callback failed")
        if report.gap:
            self.check_once = True
            self.wake()
        if report.source != WEBSOCKET or self.websocket is None:
            return  # pollers' failures reach the runner as exceptions
        if report.health is not self.websocket:
            self.websocket = report.health
            self.websocket_since = report.at
            if report.health is Health.FAILED:
                self.websocket_error = report.error
            self.wake()

    # --- the runner's view ------------------------------------------------

    def situation(self, can_poll: bool) -> Situation:
        return Situation(
            started_at=self.started_at,
            websocket=self.websocket,
            websocket_since=self.websocket_since,
            can_poll=can_poll and self.polling_error is None,
        )

    def wake(self) -> None:
        self._wake.set()

    async def sleep_until_news(self, deadline: float | None) -> None:
        with anyio.CancelScope(deadline=math.inf if deadline is None else deadline):
            await self._wake.wait()
        self._wake = anyio.Event()

    # --- listeners ------------------------------------------------------------

    @property
    def log(self) -> list[Change]:
        """Changes and conflicts in the order they were applied (read it, do not change it).

        Application order, not ``at`` order: a socket replaying what it saw
        before the order was attached delivers an older ``at`` after newer news.
        """
        return self._log

    async def news_after(self, seen: int) -> None:
        """Return once the log holds more than ``seen`` entries or the order is finished.

        Watchers read the log at their own pace and wait here: no per-watcher
        queue to fill up or to feed on every change.
        """
        if len(self._log) > seen or self.finished.is_set():
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
        self.finished.set()
        self._tell_watchers()


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
