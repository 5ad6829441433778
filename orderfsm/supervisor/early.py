"""Observations for orders not tracked yet: kept, then replayed when tracking starts.

Kept apart from the tracking calls (:mod:`orderfsm.supervisor.tracker`)
because it is the tracker's face to process-wide sources (a webhook
receiver, the blocking facade's callers): a webhook can beat the
application's call to ``track``, so what arrives first waits here, bounded.
"""

from __future__ import annotations

from collections import OrderedDict

from orderfsm.core import Observation
from orderfsm.interface import HealthReport
from orderfsm.supervisor.order import TrackedOrder

EARLY_OBSERVATIONS_KEPT = 10_000


class KeepsEarlyNews:
    """The tracker as a sink for process-wide sources (mixed into ``Tracker``).

    A mixin rather than an object of its own: an observation for a tracked
    order goes straight to it, so it reads the tracker's orders; what it uses
    of the tracker is declared here.
    """

    _orders: dict[int, TrackedOrder]
    _early: OrderedDict[int, list[Observation]]

    def observe(self, observation: Observation, /) -> None:
        """Accept an observation from outside (e.g. a webhook receiver).

        One for an order not tracked yet is kept (the first of each status, for
        the last ``EARLY_OBSERVATIONS_KEPT`` orders) and replayed when tracking
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
        while len(self._early) > EARLY_OBSERVATIONS_KEPT:
            self._early.popitem(last=False)

    def report(self, report: HealthReport, /) -> None:
        """Health of process-wide sources does not steer any one order."""
