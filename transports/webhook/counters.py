"""What a webhook receiver did, counted as it answers, read as an immutable record.

One count per delivery (its outcome and its HTTP status), the handler's and
the journal's time per delivery, and the journal's outages: all bumped where
the receiver already decides, copied out by :meth:`ReceiverCounters.snapshot`
when asked (a scrape).  No order id and no user ever labels a count.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Protocol

import attrs

DELIVERY_OUTCOMES = (
    "handled",
    "refused",
    "failed",
    "duplicate",
    "journal_failed",
    "forged",
    "invalid",
    "ignored",
    "forbidden",
    "too_large",
)
"""What became of a delivery: the handler ran and succeeded, refused (4xx) or
raised (5xx); it was answered from the journal (a repeat); the journal could not
be used (5xx); the signature was missing or wrong; a signed body that is not a
notification; an unknown notification type (204); a peer not allowed; a body
too large."""


class DeliverySpan(Protocol):
    def answered(self, outcome: str, status: int) -> None: ...


class DeliveryListener(Protocol):
    """Told of each delivery answered (the OpenTelemetry exporter's spans): from the loop,
    or from a synchronous receiver's worker threads."""

    def delivery(self) -> AbstractContextManager[DeliverySpan]: ...


@attrs.frozen
class ReceiverStats:
    """Counts since the receiver was made; seconds as sums (with their counts)."""

    deliveries: Mapping[str, int]
    """Deliveries by outcome: every one of :data:`DELIVERY_OUTCOMES`, zeros included."""
    answers: Mapping[str, int]
    """Deliveries by the HTTP status answered ("204", "400", "500", ...)."""
    handler_runs: int
    handler_seconds: float
    """Time spent in the application's handler, over ``handler_runs`` runs."""
    journal_calls: int
    journal_seconds: float
    """Time deliveries spent in the journal (claiming, waiting for a first delivery's
    answer, recording), over ``journal_calls`` deliveries: the journal's lag."""
    journal_failures: int
    """Journal calls that failed (each answered 5xx, so Xsolla retries)."""
    journal_outage_seconds: float
    """Time from a journal failure until the next call that worked, summed (an
    outage still going on counts up to now)."""
    journal: str | None
    """The journal's URL without its password (``memory:``, ``sqlite:///...``)."""


class ReceiverCounters:
    """Counted from the loop, or from every worker thread of a synchronous receiver:
    a lock keeps each update whole (an outage's start read as it is cleared)."""

    __slots__ = (
        "_failing_since",
        "_lock",
        "answers",
        "deliveries",
        "handler_runs",
        "handler_seconds",
        "journal_calls",
        "journal_failures",
        "journal_outage",
        "journal_seconds",
    )

    def __init__(self) -> None:
        self.deliveries: Counter[str] = Counter()
        self.answers: Counter[str] = Counter()
        self.handler_runs = 0
        self.handler_seconds = 0.0
        self.journal_calls = 0
        self.journal_seconds = 0.0
        self.journal_failures = 0
        self.journal_outage = 0.0
        self._failing_since: float | None = None
        self._lock = threading.Lock()

    def answered(self, outcome: str, status: int) -> None:
        with self._lock:
            self.deliveries[outcome] += 1
            self.answers[str(status)] += 1

    def handler_ran(self, seconds: float) -> None:
        with self._lock:
            self.handler_runs += 1
            self.handler_seconds += seconds

    def journal_used(self, seconds: float, *, failed: bool) -> None:
        """A delivery's journal work took ``seconds``; it failed, or it worked."""
        with self._lock:
            now = time.monotonic()  # read in the lock: the outage's sum never goes back
            self.journal_calls += 1
            self.journal_seconds += seconds
            if failed:
                self.journal_failures += 1
                if self._failing_since is None:
                    self._failing_since = now
            elif self._failing_since is not None:
                self.journal_outage += now - self._failing_since
                self._failing_since = None

    def snapshot(self, journal: str | None) -> ReceiverStats:
        with self._lock:
            return self._snapshot(journal)

    def _snapshot(self, journal: str | None) -> ReceiverStats:
        since = self._failing_since
        ongoing = 0.0 if since is None else time.monotonic() - since
        return ReceiverStats(
            deliveries={**dict.fromkeys(DELIVERY_OUTCOMES, 0), **dict(self.deliveries)},
            answers=dict(self.answers),
            handler_runs=self.handler_runs,
            handler_seconds=self.handler_seconds,
            journal_calls=self.journal_calls,
            journal_seconds=self.journal_seconds,
            journal_failures=self.journal_failures,
            journal_outage_seconds=self.journal_outage + ongoing,
            journal=journal,
        )
