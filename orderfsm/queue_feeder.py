"""The blocking tracker's delivery into the application's own queue: in order, never
dropping a change for a full queue, never making the tracker's loop wait."""

from __future__ import annotations

import collections
import logging
import queue as queues
import threading

from orderfsm.supervisor.records import Change, StatusChange

AppQueue = queues.Queue[Change] | queues.SimpleQueue[Change]

logger = logging.getLogger("orderfsm")

FEED_RETRY = 0.05
"""Seconds a put into a full queue waits before the feeder looks whether it must stop:
how much longer ``close()`` takes while the application's queue stays full."""


class QueueFeeder:
    """Puts changes into the application's queue, in order, never dropping one for a
    full queue and never making the tracker's loop wait for the application.

    Blocking the loop until the application drains (backpressure on the loop) would
    stall every order's sockets, polls and journal leases, and deadlock an
    application that drains in the thread that calls the tracker; dropping (or
    raising ``queue.Full`` into the loop, which took the change from ``on_change``
    too) would lose a final status.  So a change that does not fit waits here, and
    a thread of the feeder's own puts it, and those after it, as room appears: the
    queue's bound is how much the application holds at once, not what it is told.
    The thread runs only while changes wait.  What still waits when the tracker
    closes has nobody left to drain it: it is logged, not waited for.
    """

    def __init__(self, queue: AppQueue) -> None:
        self.queue = queue
        self._held: collections.deque[Change] = collections.deque()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def put(self, change: Change) -> None:
        """On the tracker's thread: into the queue now if it fits and nothing waits
        before it, else held for the feeder's thread.  Never blocks."""
        with self._lock:
            if not self._held:
                try:
                    self.queue.put_nowait(change)
                    return
                except queues.Full:
                    pass
            self._held.append(change)
            if self._thread is None and not self._stopping:
                self._thread = threading.Thread(
                    target=self._feed, name="orderfsm-queue-feeder", daemon=True
                )
                self._thread.start()

    def _feed(self) -> None:
        while True:
            with self._lock:
                if not self._held or self._stopping:
                    self._thread = None
                    return
                change = self._held[0]  # only this thread takes from the left
            try:
                self.queue.put(change, timeout=FEED_RETRY)
            except queues.Full:
                continue
            with self._lock:
                self._held.popleft()

    def stop(self) -> None:
        """The tracker closed (no more ``put``): end the thread; log what it held."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        if thread is not None:
            thread.join()
        if self._held:
            logger.warning(
                "the tracker closed with %d changes its queue never had room for: %s",
                len(self._held),
                ", ".join(map(_told, self._held)),
                extra={"event": "queue.undelivered", "count": len(self._held)},
            )


def _told(change: Change) -> str:
    if isinstance(change, StatusChange):
        return f"order {change.order_id}: {change.status}"
    return f"order {change.order_id}: conflict ({change.observed})"
