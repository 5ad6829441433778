"""Time the event loop could not run for reasons of the machine, not of the code.

The harness judges "the transport blocked the event loop" by how late the
loop's own timer fires.  On a busy machine the operating system also leaves
the process waiting, and that lateness is nobody's fault.  Two measures of it:

* :class:`ProcessStalls`: a watcher thread that only sleeps and looks at the
  clock is late when the whole process is not run (stopped, or starved), and
  not when the loop blocks in ``time.sleep`` or blocking I/O (the GIL is
  released) or in Python code (the GIL is handed over every few milliseconds);
* :func:`run_queue_wait`: how long the calling thread was ready to run but
  waiting for a CPU (Linux ``schedstat``), which stretches CPU work on a
  loaded machine: 0.3 s of work takes 1 s with a third of a core.

Subtracted from the loop's lateness, the larger of the two leaves what the
transport did.
"""

from __future__ import annotations

import threading
import time

TICK = 0.005
"""How often the watcher looks at the clock."""
NOTICED = 0.02
"""Lateness below this is scheduling noise, not a stall."""


_SCHEDSTAT = "/proc/thread-self/schedstat"


def run_queue_wait() -> float:
    """Seconds the calling thread has spent runnable but not running, so far.

    0.0 where the kernel does not say (not Linux, or no scheduler statistics):
    then only :class:`ProcessStalls` corrects for load.
    """
    try:
        with open(_SCHEDSTAT) as stats:
            return int(stats.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


class ProcessStalls:
    """``with ProcessStalls() as stalls:``; then ``stalls.during(start, end)`` in seconds.

    Times are ``time.monotonic()``, whatever clock the event loop uses.
    """

    def __init__(self) -> None:
        self._spans: list[tuple[float, float]] = []
        self._awake_at = time.monotonic()
        """When the watcher last woke; long ago means a stall it has not woken from yet."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="orderfsm-stalls", daemon=True)

    def __enter__(self) -> ProcessStalls:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def during(self, start: float, end: float) -> float:
        """How long, between ``start`` and ``end``, the process was seen stalled.

        A stall the watcher has not woken from yet counts too: after a stop the
        loop's thread may well run before the watcher's.
        """
        spans = list(self._spans)  # a copy: the watcher appends meanwhile
        awake_at = self._awake_at
        if end - awake_at > TICK + NOTICED:
            spans.append((awake_at + TICK, end))
        return sum(max(0.0, min(ended, end) - max(begun, start)) for begun, ended in spans)

    def _watch(self) -> None:
        while not self._stop.is_set():
            before = self._awake_at = time.monotonic()
            time.sleep(TICK)
            after = time.monotonic()
            if after - before - TICK > NOTICED:
                self._spans.append((before + TICK, after))
            self._awake_at = after


__all__ = ["ProcessStalls", "run_queue_wait"]
