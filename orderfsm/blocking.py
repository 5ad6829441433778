"""The tracker for synchronous code: scripts, chat bots, desktop launchers (Qt, Tk).

:class:`Tracker` runs the async :class:`orderfsm.Tracker` on a thread of its
own with its own event loop (an anyio blocking portal), so the caller never
writes thread-and-loop glue and nothing of the loop leaks into its thread.
News reaches the caller on the caller's side, never on the loop's thread:

* ``wait(order_id, timeout=...)`` blocks for the settled result;
* ``for change in tracker.changes(order_id):`` iterates one order's changes;
* ``Tracker(on_change=callback)`` runs ``callback(change)`` in the caller's
  thread: the one that calls :meth:`Tracker.dispatch` (a GUI loop's timer), or
  one blocked in ``wait`` / ``changes`` meanwhile;
* ``Tracker(queue=q)`` puts every change into ``q`` for the app to drain; a
  bounded ``q`` that is full holds nothing back (see :class:`~orderfsm.queue_feeder.QueueFeeder`).

``close()`` (or leaving ``with``) stops every task, socket and thread it started.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
import attrs

from orderfsm.callables import is_async, require_plain
from orderfsm.core import Observation, Status
from orderfsm.errors import OrderFsmError, TrackerClosed
from orderfsm.queue_feeder import AppQueue, QueueFeeder
from orderfsm.supervisor.records import Change, FinalResult
from orderfsm.supervisor.tracker import Tracker as AsyncTracker

T = TypeVar("T")

ChangeCallback = Callable[[Change], None]


class WaitTimeout(OrderFsmError, TimeoutError):
    """A blocking call's own ``timeout`` passed; the order stays tracked."""


class _End:
    """The end of a ``changes`` stream (or its error)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


def _sync_token(token: Callable[[], str]) -> Callable[[], Any]:
    """A plain function giving the token, asked in a worker thread (it may do I/O)."""

    async def provider() -> str:
        return await anyio.to_thread.run_sync(token)

    return provider


class Tracker:
    """``with orderfsm.blocking.Tracker(project_id=P, token=jwt) as tracker:`` and block.

    Takes the async tracker's arguments (``token`` may also be a plain function
    returning the JWT), plus ``on_change`` (run in the caller's thread, see the
    module), ``queue`` (every change is put there, in order; when a bounded
    queue is full, the changes wait in the tracker until it has room, and
    ``on_change``, ``wait`` and the tracking itself go on meanwhile) and
    ``backend`` (``asyncio`` or ``trio``, for the tracker's own thread).  Started
    at once; errors from starting (a bad argument) raise here.
    """

    def __init__(
        self,
        *,
        on_change: ChangeCallback | None = None,
        queue: AppQueue | None = None,
        backend: str = "asyncio",
        token: str | Callable[[], Any] | None = None,
        **options: Any,
    ) -> None:
        if "on_report" in options and options["on_report"] is not None:
            raise ValueError("on_report runs on the tracker's thread: not offered here")
        if on_change is not None:
            require_plain(on_change, "on_change")
        if queue is not None and not all(
            callable(getattr(queue, name, None)) for name in ("put", "put_nowait")
        ):
            raise TypeError(f"queue must be a queue.Queue (put and put_nowait), got {queue!r}")
        if type(queue).__module__.startswith("asyncio"):
            raise TypeError("an asyncio.Queue is not thread-safe: give a queue.Queue")
        self.on_change = on_change
        self.queue = queue
        self._feeder = None if queue is None else QueueFeeder(queue)
        self._news = threading.Condition()
        self._pending: collections.deque[Change] = collections.deque()
        self._dispatching = threading.local()
        self._dispatch_lock = threading.Lock()
        """Held by the thread running callbacks: one at a time, so they run in order."""
        self._closed = False
        self._closing = threading.RLock()  # a signal handler closing mid-close returns
        if callable(token) and not is_async(token):
            token = _sync_token(token)
        portal_cm = anyio.from_thread.start_blocking_portal(backend, name="orderfsm-tracker")
        self._portal_cm: AbstractContextManager[anyio.from_thread.BlockingPortal] = portal_cm
        self._portal = portal_cm.__enter__()
        try:
            self._tracker = AsyncTracker(token=token, on_change=self._changed, **options)
            self._tracker_cm = self._portal.wrap_async_context_manager(self._tracker)
            self._tracker_cm.__enter__()
        except BaseException as exc:
            self._portal_cm.__exit__(type(exc), exc, exc.__traceback__)
            raise

    # --- life ---------------------------------------------------------------------

    def close(self) -> None:
        """Stop tracking: waiters get ``TrackerClosed``; every thread and socket ends, by
        the time any caller's ``close`` returns (a second caller waits for the first)."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
            try:
                self._tracker_cm.__exit__(None, None, None)
            finally:
                self._portal.call(self._portal.stop, True)  # what is left is cancelled
                self._portal_cm.__exit__(None, None, None)
                if self._feeder is not None:
                    self._feeder.stop()
                with self._news:
                    self._news.notify_all()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- on the tracker's thread ---------------------------------------------------

    def _changed(self, change: Change) -> None:
        """The async tracker's hook: hand the change over, never block the loop."""
        if self.on_change is not None:
            with self._news:
                self._pending.append(change)
                self._news.notify_all()
        if self._feeder is not None:
            self._feeder.put(change)

    def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._closed:
            raise RuntimeError("this Tracker is closed")
        return self._portal.call(lambda: function(*args, **kwargs))

    # --- the caller's side ------------------------------------------------------------

    def dispatch(self) -> int:
        """Run the ``on_change`` callbacks due, in this thread, in order; how many ran.

        Never blocks: call it from a GUI loop's timer (``root.after``, a
        ``QTimer``).  A callback that calls ``dispatch`` again runs nothing more, nor
        does a thread calling it while another thread runs callbacks (one blocked in
        ``wait``): they never run two at once, nor out of order.
        """
        callback = self.on_change
        if callback is None or not self._can_dispatch():
            return 0
        if not self._dispatch_lock.acquire(blocking=False):
            return 0  # another thread runs them (a waiter, the GUI's timer)
        ran = 0
        try:  # from right after the acquire: a Ctrl-C anywhere still releases it
            self._dispatching.active = True
            while True:
                with self._news:
                    if not self._pending:
                        return ran
                    change = self._pending.popleft()
                callback(change)
                ran += 1
        finally:
            self._dispatch_lock.release()
            self._dispatching.active = False
            with self._news:  # a waiter may take over what a failed callback left
                self._news.notify_all()

    def _can_dispatch(self) -> bool:
        """Callbacks may run here: there are some, this thread is not inside one, and no
        other thread is running them."""
        return (
            self.on_change is not None
            and not getattr(self._dispatching, "active", False)
            and not self._dispatch_lock.locked()
        )

    def _block(self, ready: Callable[[], bool], timeout: float | None, what: str) -> None:
        """Until ``ready()`` (checked under the lock its producers notify), running the
        callbacks due meanwhile; ``WaitTimeout`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.dispatch()
            with self._news:
                if ready() or self._closed:
                    return
                if self._pending and self._can_dispatch():
                    continue
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise WaitTimeout(f"{what}: nothing within {timeout} s")
                self._news.wait(remaining)

    def _notify(self, *_: object) -> None:
        with self._news:
            self._news.notify_all()

    def track(self, order_id: int, **options: Any) -> None:
        """Start following an order (see :meth:`orderfsm.Tracker.track`)."""
        self._call(self._tracker.track, order_id, **options)

    def wait(self, order_id: int, *, timeout: float | None = None, **options: Any) -> FinalResult:
        """Track the order if needed and block until it settles.

        Raises what :meth:`orderfsm.Tracker.wait` raises (``TrackerClosed`` when
        the tracker is closed before, or while, it waits), or :class:`WaitTimeout`
        after ``timeout`` seconds (the order stays tracked: wait again, or
        ``untrack`` it).
        """
        try:
            self.track(order_id, **options)
            future = self._portal.start_task_soon(self._tracker.wait, order_id)
        except RuntimeError:
            if self._closed:  # closed before the wait began
                raise self._closed_error(order_id) from None
            raise
        future.add_done_callback(self._notify)
        try:
            self._block(future.done, timeout, f"order {order_id}")
        except BaseException:
            future.cancel()
            raise
        if not future.done():  # closed meanwhile
            future.cancel()
            raise self._closed_error(order_id)
        try:
            result: FinalResult = future.result()
        except (RuntimeError, CancelledError):
            if self._closed:  # the async tracker closed as the wait began
                raise self._closed_error(order_id) from None
            raise
        return result

    @staticmethod
    def _closed_error(order_id: int) -> TrackerClosed:
        return TrackerClosed(f"the tracker closed before order {order_id} settled")

    def changes(
        self,
        order_id: int,
        *,
        follow: bool = False,
        timeout: float | None = None,
        **options: Any,
    ) -> Iterator[Change]:
        """Each change of the order, as :meth:`orderfsm.Tracker.watch` yields them.

        ``timeout`` bounds the wait for each next change (:class:`WaitTimeout`).
        Leaving the loop early stops the watch, not the tracking.
        """
        self.track(order_id, **options)
        inbox: collections.deque[Change | _End] = collections.deque()

        def put(item: Change | _End) -> None:
            with self._news:
                inbox.append(item)
                self._news.notify_all()

        async def pump() -> None:
            try:
                async for change in self._tracker.watch(order_id, follow=follow):
                    put(change)
            except anyio.get_cancelled_exc_class():
                put(_End())
                raise
            except BaseException as exc:
                put(_End(exc))
            else:
                put(_End())

        future = self._portal.start_task_soon(pump)
        try:
            while True:
                self._block(lambda: bool(inbox), timeout, f"order {order_id}'s next change")
                with self._news:
                    if not inbox:  # closed meanwhile
                        return
                    item = inbox.popleft()
                if isinstance(item, _End):
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            future.cancel()

    def untrack(self, order_id: int) -> None:
        self._call(self._tracker.untrack, order_id)

    def forget(self, order_id: int) -> None:
        self._call(self._tracker.forget, order_id)

    def status(self, order_id: int) -> Status | None:
        return self._call(self._tracker.status, order_id)

    def host_resumed(self) -> None:
        self._call(self._tracker.host_resumed)

    def observe(self, observation: Observation, /) -> None:
        """News from outside (a :class:`~transports.webhook.sync.SyncWebhookReceiver`), from
        any thread; its time is taken again on the tracker's own clock."""

        def observe() -> None:
            self._tracker.observe(attrs.evolve(observation, at=anyio.current_time()))

        self._call(observe)

    def report(self, report: Any, /) -> None:
        """Health of process-wide sources does not steer any one order."""


__all__ = ["ChangeCallback", "Tracker", "WaitTimeout"]
