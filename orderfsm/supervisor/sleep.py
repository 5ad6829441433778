"""Noticing that the host slept, from two clocks that disagree.

Laptops and consoles suspend.  The event loop's clock (monotonic) stops while
the host sleeps; a clock that counts the time asleep (``CLOCK_BOOTTIME`` on
Linux, else the wall clock) does not.  Sampled every second, the two advance
together, unless the host slept in between.  After a sleep, sockets may be
dead without knowing it (a missed ping shows it only 35 s later) and
publications may have been missed, so the tracker reconnects and asks Get
order at once.  A wall clock set forward by hand looks the same: that costs
one reconnect and one Get order per order, nothing more.

The detector is pure (both readings are passed in), so it is tested with numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs

SLEEP_CHECK_INTERVAL = 0.5
"""Seconds between samples; a host that slept is noticed within this long of waking."""


def default_sleep_clock() -> Callable[[], float]:
    """A clock that keeps counting while the host sleeps."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is not None:
        return lambda: time.clock_gettime(boottime)
    return time.time


@attrs.define
class SleepDetector:
    threshold: float = 3.0
    """Seconds the clocks must drift apart between two samples to count as a sleep;
    well above what clock adjustments cause (a late sample moves both alike)."""
    _last: tuple[float, float] | None = None

    def sample(self, loop_now: float, sleep_clock_now: float) -> float | None:
        """Seconds the host slept since the previous sample, or ``None`` if it did not."""
        last, self._last = self._last, (loop_now, sleep_clock_now)
        if last is None:
            return None
        slept = (sleep_clock_now - last[1]) - (loop_now - last[0])
        return slept if slept >= self.threshold else None
