"""Time the whole process was not running: a loaded machine, not a blocked loop.

The harness judges "the transport blocked the event loop" by how late the
loop's own timer fires.  On a busy machine the operating system also leaves
the process waiting, and that lateness is nobody's fault.  A watcher thread
that only sleeps and looks at the clock is late exactly then, and not when
the loop blocks in ``time.sleep`` or blocking I/O (the GIL is released) or
in Python code (the interpreter hands the GIL over every few milliseconds).
Its lateness, subtracted from the loop's, leaves what the transport did.
"""

from __future__ import annotations

import threading
import time

TICK = 0.005
"""How often the watcher looks at the clock."""
NOTICED = 0.02
"""Lateness below this is scheduling noise, not a stall."""


class ProcessStalls:
    """``with ProcessStalls() as stalls:``; then ``stalls.during(start, end)`` in seconds.

    Times are ``time.monotonic()``, whatever clock the event loop uses.
    """

    def __init__(self) -> None:
        self._spans: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="orderfsm-stalls", daemon=True)

    def __enter__(self) -> ProcessStalls:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def during(self, start: float, end: float) -> float:
        """How long, between ``start`` and ``end``, the process was seen stalled."""
        total = 0.0
        for begun, ended in list(self._spans):  # a copy: the watcher appends meanwhile
            total += max(0.0, min(ended, end) - max(begun, start))
        return total

    def _watch(self) -> None:
        while not self._stop.is_set():
            before = time.monotonic()
            time.sleep(TICK)
            after = time.monotonic()
            if after - before - TICK > NOTICED:
                self._spans.append((before + TICK, after))


__all__ = ["ProcessStalls"]
