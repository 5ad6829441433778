"""A thread of one's own for an event loop's journal batches: a cheaper hop than
``anyio.to_thread``.

A receiver at full load sends a batch to a worker thread for every few
deliveries, and each hop through ``anyio.to_thread.run_sync`` (two capacity
limiters, a ``queue.Queue`` whose ``put`` notifies a ``threading.Condition`` in
Python, a cancel scope, a future) cost about 47 us of CPU on this machine
against 16 us for a ``queue.SimpleQueue`` (C) and the loop's own thread-safe
callback (``call_soon_threadsafe`` on asyncio, ``TrioToken.run_sync_soon`` on
trio): the same wake-ups, less Python.  One batch runs at a time on a loop
(:data:`~transports.journal.batching.LANES`), so one thread serves it; it
ends after :data:`IDLE` seconds without work (an event loop that ended leaves
no thread behind) and a new one starts with the next batch.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from contextlib import suppress
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel

T = TypeVar("T")

IDLE = 5.0
"""Seconds a batch thread waits for work before it ends."""


class _Call(Generic[T]):
    __slots__ = ("function", "schedule", "then")

    def __init__(
        self,
        function: Callable[[], T],
        then: Callable[[T | BaseException], None],
        schedule: Callable[..., Any],
    ) -> None:
        self.function = function
        self.then = then
        self.schedule = schedule
        """The loop's thread-safe ``call soon``: how the thread hands ``then`` its outcome."""


class BatchThread:
    """``hop.send(function, then)``: ``function()`` in this object's thread, then
    ``then(its result, or what it raised)`` on the loop (a callback, not a task).
    Nothing on the loop waits for the thread: a call blocked in it (a database that
    stopped answering) holds up only what waits for its ``then``."""

    def __init__(self, name: str = "orderfsm-journal-batches") -> None:
        self._name = name
        self._queue: queue.SimpleQueue[_Call[Any] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running = False
        self.thread: threading.Thread | None = None
        """The thread serving now, or the last one (for tests: it can be joined)."""
        self._schedule: Callable[..., Any] | None = None

    def send(self, function: Callable[[], T], then: Callable[[T | BaseException], None]) -> None:
        """On the loop (its thread-safe ``call soon`` is found from there)."""
        schedule = self._schedule
        if schedule is None:
            native: Any = anyio.lowlevel.current_token().native_token
            # asyncio's loop, or trio's token: each has a thread-safe "call this soon".
            schedule = getattr(native, "call_soon_threadsafe", None) or native.run_sync_soon
            self._schedule = schedule
        with self._lock:
            self._queue.put(_Call(function, then, schedule))
            if not self._running:
                self._running = True
                self.thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self.thread.start()

    def stop(self) -> None:
        """End the thread once the calls sent before are done (a new call starts another)."""
        with self._lock:
            if self._running:
                self._queue.put(None)

    def _serve(self) -> None:
        while True:
            try:
                call = self._queue.get(timeout=IDLE)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():  # nothing sent meanwhile: end
                        self._running = False
                        return
                continue
            if call is None:
                with self._lock:
                    if self._queue.empty():
                        self._running = False
                        return
                continue
            outcome: Any
            try:
                outcome = call.function()
            except BaseException as exc:  # handed to `then`, raised by whoever waits for it
                outcome = exc
            with suppress(Exception):  # the loop ended meanwhile: nobody to tell
                call.schedule(call.then, outcome)
