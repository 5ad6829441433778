"""When a timeout that is due really fires: on time it does, late it waits once.

A timer noticed much later than it was due usually means the process was
suspended (laptop asleep, app in the background), and frames that arrived
meanwhile may still be queued unread.  Declaring the connection dead at once
would throw a live connection away, so a late timeout gets one grace period
for the queue to drain (centrifuge-js PR #423; centrifuge-python 0.7.0
``_TimeoutTimer``).  Each deadline gets the grace at most once, so a timeout
whose answer never comes still fires.  And a sleep itself ends late by the
kernel's timer slack, so the driver wakes a little early (:func:`wake_at`).
"""

from __future__ import annotations

import math


class SuspensionGrace:
    __slots__ = ("_given", "grace")

    def __init__(self, grace: float) -> None:
        self.grace = grace
        """Both how late counts as suspended and how long the extra wait lasts."""
        self._given: tuple[float, float] | None = None
        """(deadline that was late, end of its grace period)."""

    def reset(self) -> None:
        self._given = None

    def due(self, deadlines: list[float], now: float) -> float | None:
        """The deadline that fires at ``now``, if any (the earliest one due)."""
        late = [t for t in deadlines if t <= now]
        if not late:
            return None
        first = min(late)
        if self._given is not None:
            deadline, until = self._given
            if now < until:
                return None
            if first <= deadline:
                return first  # had its grace
        if now - first >= self.grace:
            self._given = (first, now + self.grace)
            return None
        return first

    def postpone(self, deadline: float) -> float:
        """One deadline as the driver should wait for it (not before a grace ends)."""
        return deadline if self._given is None else max(deadline, self._given[1])


TIMER_SLACK_MARGIN = 0.002
"""Wake this fraction of the remaining time early (see :func:`wake_at`)."""


def wake_at(deadline: float | None, now: float) -> float:
    """When a timer should wake for ``deadline``.

    Linux lets a sleep of T seconds end up to T/1000 late (timer slack), so a
    35 s dead-connection timeout would fire up to 35 ms late.  Waking early by
    twice that and sleeping again for the rest (handling the timer early does
    nothing) keeps the timeout within a fraction of a millisecond.
    """
    if deadline is None:
        return math.inf
    return deadline - max(deadline - now, 0.0) * TIMER_SLACK_MARGIN
