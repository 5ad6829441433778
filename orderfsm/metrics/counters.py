"""The tracker's counters: bumped where an event is handled anyway, read as a record.

Nothing here runs per WebSocket publication except one dict increment per
status change (a change already costs a log entry and a callback).  Orders
tracked, settled and ended are counted once per order; Get order answers
once per request; the rest is copied out by :meth:`TrackerCounters.snapshot`.
Copying a dict of strings is one C call under the GIL, so a scrape from
another thread sees consistent numbers.
"""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

from orderfsm.core import Status
from orderfsm.core.settle import Verdict, verdict
from orderfsm.errors import (
    NoSourceLeft,
    OrderFsmError,
    OrderNotFound,
    TokenRejected,
    TrackerClosed,
    TrackingTimeout,
    TransportError,
)
from orderfsm.metrics.records import TrackerStats

if TYPE_CHECKING:
    from transports.centrifuge import WebSocketStats

logger = logging.getLogger("orderfsm")

_OUTCOME = {Verdict.SUCCEEDED: "succeeded", Verdict.FAILED: "failed", Verdict.LAPSED: "expired"}


def outcome(status: Status, until: Status) -> str:
    """The outcome label of an order settled at ``status`` for the goal ``until``."""
    return _OUTCOME.get(verdict(status, until), "succeeded")


def unsettled_reason(error: OrderFsmError) -> str:
    """The reason label of tracking that ended with ``error``."""
    if isinstance(error, TrackingTimeout):
        return "timed_out"
    if isinstance(error, OrderNotFound):
        return "not_found"
    if isinstance(error, TokenRejected):
        return "token_rejected"
    if isinstance(error, TrackerClosed):
        return "closed"
    if isinstance(error, (NoSourceLeft, TransportError)):
        return "no_source"
    return "error"


class Listener(Protocol):
    """Told of each order's tracking and each Get order request (the OpenTelemetry
    exporter's spans); all calls come from the event loop and must not block."""

    def tracked(self, order_id: int) -> None: ...

    def finished(self, order_id: int, label: str) -> None: ...

    def request(self, what: str) -> AbstractContextManager[RequestSpan]: ...


class RequestSpan(Protocol):
    def answered(self, label: str) -> None: ...


class TrackerCounters:
    __slots__ = (
        "changes",
        "checks",
        "conflicts",
        "early_dropped",
        "finished",
        "get_order",
        "host_sleeps",
        "listener",
        "polling",
        "settled",
        "settled_late",
        "tracked",
        "unsettled",
    )

    def __init__(self) -> None:
        self.tracked = 0
        self.finished = 0
        self.settled: Counter[str] = Counter()
        self.settled_late: Counter[str] = Counter()
        self.unsettled: Counter[str] = Counter()
        self.changes: Counter[str] = Counter()
        self.conflicts = 0
        self.polling = 0
        self.checks = 0
        self.get_order: Counter[str] = Counter()
        self.host_sleeps = 0
        self.early_dropped = 0
        self.listener: Listener | None = None

    def order_tracked(self, order_id: int) -> None:
        self.tracked += 1
        if self.listener is not None:
            try:
                self.listener.tracked(order_id)
            except Exception:
                _listener_failed(order_id)

    def order_finished(self, order_id: int, label: str, *, settled: bool) -> None:
        self.finished += 1
        (self.settled if settled else self.unsettled)[label] += 1
        if self.listener is not None:
            # Called while an order finishes, from whichever transport settled it: a
            # listener's bug must not keep the result from its waiters.
            try:
                self.listener.finished(order_id, label)
            except Exception:
                _listener_failed(order_id)

    def order_settled_late(self, label: str) -> None:
        """An order already counted as ended unsettled (timed out, say) settled after
        all (an ``order_paid`` Xsolla retried for hours): counted as settled too, and as
        settled late.  Its unsettled count stays: the exporters publish these as
        counters, which must never go down.  Its span, ended already, is left as is."""
        self.settled[label] += 1
        self.settled_late[label] += 1

    def snapshot(self, websocket: WebSocketStats | None) -> TrackerStats:
        return TrackerStats(
            orders_tracked=self.tracked,
            orders_active=self.tracked - self.finished,
            settled=dict(self.settled),
            unsettled=dict(self.unsettled),
            changes=dict(self.changes),
            conflicts=self.conflicts,
            polling=self.polling,
            checks=self.checks,
            get_order=dict(self.get_order),
            host_sleeps=self.host_sleeps,
            websocket=websocket,
            settled_late=dict(self.settled_late),
            early_dropped=self.early_dropped,
        )


def _listener_failed(order_id: int) -> None:
    logger.exception(
        "the tracker's instrument() listener failed",
        extra={"event": "callback.failed", "order_id": order_id},
    )


NO_COUNTERS = TrackerCounters()
"""Where an order that belongs to no tracker (a test's) counts."""
