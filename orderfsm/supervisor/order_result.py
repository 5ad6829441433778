"""How a tracked order's tracking ends: its result, its outcome, its log line.

Kept apart from :mod:`orderfsm.supervisor.order`, which applies what the
transports see and wakes whoever waits, because this is the order's last
moment only: the :class:`FinalResult` (made when first read, not as the order
finishes), the outcome counted and the line logged, and a result that comes
after an unsettled end (a webhook retried for hours).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from orderfsm.core import Status
from orderfsm.core.settle import VERDICTS
from orderfsm.errors import OrderFsmError, TrackerClosed
from orderfsm.metrics.counters import TrackerCounters, outcome, unsettled_reason
from orderfsm.supervisor.records import Change, ConflictSeen, FinalResult, StatusChange

if TYPE_CHECKING:
    import anyio

    from transports.polling import OrderDetails

logger = logging.getLogger("orderfsm")


class EndsTracking:
    """A tracked order's end (mixed into ``TrackedOrder``).

    A mixin rather than an object of its own: an object more per order would
    cost ten thousand orders their share of the garbage collector's time.  The
    slots it sets are its own; what else it uses of the order is declared here.
    """

    # What the end sets (``TrackedOrder.__init__`` says what each means).
    __slots__ = (
        "_done",
        "_result",
        "_result_details",
        "_result_logged",
        "ended",
        "error",
        "is_finished",
    )
    _done: anyio.Event | None
    _result: FinalResult | None
    _result_details: OrderDetails | None
    _result_logged: int
    ended: bool
    error: OrderFsmError | None
    is_finished: bool

    order_id: int
    until: Status
    log: list[Change]
    conflicted: bool
    settled: StatusChange | None
    settled_count: int | None
    details: OrderDetails | None
    counters: TrackerCounters
    _news: anyio.Event | None

    if TYPE_CHECKING:

        def changes(self, count: int | None = None) -> list[StatusChange]: ...

        def _tell_watchers(self) -> None: ...

    @property
    def result(self) -> FinalResult | None:
        """How the order settled; ``None`` before, or when it ended unsettled."""
        result = self._result
        if result is None and self._result_logged >= 0:
            details, logged = self._result_details, self._result_logged
            result = self._result = self._make_result(None, details, logged)
            self._result_details, self._result_logged = None, -1
        return result

    @property
    def has_result(self) -> bool:
        """It finished settled (without making the result, as reading it would)."""
        return self._result is not None or self._result_logged >= 0

    def make_result(self, details_error: OrderFsmError | None) -> FinalResult:
        """The settled order's result as it stands now."""
        return self._make_result(details_error, self.details, len(self.log))

    def _make_result(
        self, details_error: OrderFsmError | None, details: OrderDetails | None, logged: int
    ) -> FinalResult:
        settled = self.settled
        assert settled is not None
        unread = details is not None and details.content_error
        if details_error is None and unread:
            from transports.polling import InvalidOrderAnswer

            details_error = InvalidOrderAnswer(f"order {self.order_id}: details unread: {unread}")
        log = self.log
        if self.conflicted:
            changes = tuple(self.changes(self.settled_count))
            conflicts = tuple(c for c in log[:logged] if type(c) is ConflictSeen)
        else:  # only changes in the log: no filtering
            changes, conflicts = tuple(log[: self.settled_count]), ()  # type: ignore[arg-type]
        return FinalResult(
            order_id=self.order_id,
            status=settled.status,
            source=settled.source,
            at=settled.at,
            changes=changes,
            conflicts=conflicts,
            details=details,
            details_error=details_error,
            until=self.until,
        )

    def finish_settled(self) -> None:
        """Finish a settled order that waits for nothing more (no details to fetch).

        Its :class:`FinalResult` is made when first read, from what is known
        now: an application hearing through ``on_change`` never reads it, and a
        record and a tuple kept per order made the garbage collector run a third
        more often while statuses streamed in (``bench_scale.py``)."""
        self._result, self._result_details, self._result_logged = None, self.details, len(self.log)
        self._finish(True, None)

    def finish(self, result: FinalResult | None, error: OrderFsmError | None) -> None:
        self._result, self._result_details, self._result_logged = result, None, -1
        self._finish(result is not None, error)

    def _finish(self, settled: bool, error: OrderFsmError | None) -> None:
        if settled:
            assert self.settled is not None
            label = _LABELS[self.until][self.settled.status]
        else:
            label = "error" if error is None else unsettled_reason(error)
        self.counters.order_finished(self.order_id, label, settled=settled)
        if logger.isEnabledFor(logging.INFO):  # its records cost as much as the rest here
            self._log_end(self.settled if settled else None, error, label)
        self.error = error
        self.is_finished = self.ended = True
        if self._done is not None:
            self._done.set()
        if self._news is not None:
            self._tell_watchers()

    def _log_end(
        self, settled: StatusChange | None, error: OrderFsmError | None, label: str
    ) -> None:
        if settled is not None:
            logger.info(
                "order %s settled: %s (first seen by %s)",
                self.order_id,
                settled.status,
                settled.source,
                extra={
                    "event": "order.settled",
                    "order_id": self.order_id,
                    "status": settled.status.value,
                    "source": settled.source,
                    "outcome": label,
                },
            )
        else:
            logger.info(
                "order %s: tracking ended unsettled: %s",
                self.order_id,
                error,
                extra={"event": "order.ended", "order_id": self.order_id, "outcome": label},
            )

    def reopen(self) -> None:
        """Tracking ended unsettled (timed out, no source left), and a settling status
        came after all: Xsolla retries a webhook for 12 hours, so an ``order_paid``
        can outlive the deadline by hours.  Until :meth:`settle_late` hands over its
        result, a ``wait()`` waits for it instead of raising the old error."""
        assert self.settled is not None
        self.counters.order_settled_late(_LABELS[self.until][self.settled.status])
        self.is_finished, self.error, self._done = False, None, None

    def settle_late(self, result: FinalResult) -> None:
        """The result of a :meth:`reopen`-ed order, so a later ``wait()`` hands over
        what was paid instead of the old timeout."""
        if logger.isEnabledFor(logging.INFO):
            self._log_end(self.settled, None, outcome(result.status, result.until))
        self._result, self._result_details, self._result_logged = result, None, -1
        self.error, self.is_finished = None, True
        if self._done is not None:
            self._done.set()
        self._tell_watchers()


def closed_error(order_id: int) -> TrackerClosed:
    """Why an order finished when the tracker closed (its result's ``details_error``,
    or the error of one not settled)."""
    return TrackerClosed(f"order {order_id}: the tracker closed")


_LABELS = {until: {status: outcome(status, until) for status in Status} for until in VERDICTS}
"""An order's outcome label by its goal and settling status: looked up as it ends,
not worked out (two calls per order)."""
