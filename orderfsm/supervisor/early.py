"""Observations for orders not tracked yet: kept, then replayed when tracking starts.

Kept apart from the tracking calls (:mod:`orderfsm.supervisor.tracker`)
because it is the tracker's face to process-wide sources (a webhook
receiver, the blocking facade's callers): a webhook can beat the
application's call to ``track``, so what arrives first waits here, bounded.

Bounded by orders, the ones heard of least recently dropped first.  A
receiver given every webhook of a project while the tracker follows a few of
its orders drops news all day, harmlessly: so a drop is counted
(``stats().early_dropped``) and logged at info at most once a minute, with
the count since the last line, not once per order; what the last minute
dropped is logged when the tracker closes, so the lines add up to the total.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict

from orderfsm.core import Observation
from orderfsm.interface import HealthReport
from orderfsm.metrics.counters import TrackerCounters
from orderfsm.supervisor.order import TrackedOrder

EARLY_OBSERVATIONS_KEPT = 10_000
"""Orders not tracked whose news is kept, the ones heard of most recently."""
DROPS_LOGGED_EVERY = 60.0
"""Seconds between two log lines about dropped news (the first drop is logged at once)."""

logger = logging.getLogger("orderfsm")


class DropLog:
    """When news was last said to be dropped, and how much since: one line a minute at
    most, however many orders' news goes."""

    __slots__ = ("logged_at", "unlogged")

    def __init__(self) -> None:
        self.logged_at = -math.inf
        self.unlogged = 0

    def dropped(self) -> None:
        self.unlogged += 1
        now = time.monotonic()
        if now - self.logged_at >= DROPS_LOGGED_EVERY:
            self.logged_at = now
            self.flush()

    def flush(self) -> None:
        """Log the drops not logged yet, if any: called as the tracker closes too, or
        the ones after the last line would never be told."""
        if not self.unlogged:
            return
        logger.info(
            "dropped the news kept for %d orders not tracked: only the %d such orders "
            "heard of most recently are kept for a later track() (a webhook's news is in "
            "the journal too, when the receiver's store is the tracker's journal)",
            self.unlogged,
            EARLY_OBSERVATIONS_KEPT,
            extra={"event": "tracker.early_dropped", "count": self.unlogged},
        )
        self.unlogged = 0


class KeepsEarlyNews:
    """The tracker as a sink for process-wide sources (mixed into ``Tracker``).

    A mixin rather than an object of its own: an observation for a tracked
    order goes straight to it, so it reads the tracker's orders; what it uses
    of the tracker is declared here.
    """

    _orders: dict[int, TrackedOrder]
    _early: OrderedDict[int, list[Observation]]
    _early_drops: DropLog
    _counters: TrackerCounters

    def observe(self, observation: Observation, /) -> None:
        """Accept an observation from outside (e.g. a webhook receiver).

        One for an order not tracked yet is kept (the first of each status, for
        the ``EARLY_OBSERVATIONS_KEPT`` such orders heard of most recently; an
        older one's is dropped, counted and logged) and replayed when tracking
        starts: a webhook can beat the application's call to ``track``.
        """
        order = self._orders.get(observation.order_id)
        if order is not None and not order.released:
            order.observe(observation)
            return
        # Not tracked (yet, or again after being untracked): kept for when it is,
        # one sighting per status (the first), since a source may repeat itself
        # for hours and the core would drop the repeats anyway.
        kept = self._early.setdefault(observation.order_id, [])
        if all(seen.status is not observation.status for seen in kept):
            kept.append(observation)
        self._early.move_to_end(observation.order_id)
        if len(self._early) > EARLY_OBSERVATIONS_KEPT:  # one order too many: the oldest goes
            self._early.popitem(last=False)
            self._counters.early_dropped += 1
            self._early_drops.dropped()

    def report(self, report: HealthReport, /) -> None:
        """Health of process-wide sources does not steer any one order."""
