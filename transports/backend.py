"""Which event loop is running, so each I/O shell can pick its library.

aiohttp only runs on asyncio; under trio the anyio-native httpx / httpx-ws
clients do the same job.  Everything above the shells is plain anyio code,
except for the two hot-path helpers here, which skip anyio's per-call backend
lookup on asyncio and behave the same on trio.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import anyio
import anyio.lowlevel
import sniffio


def on_asyncio() -> bool:
    """True when called from asyncio; False from trio (or another anyio backend)."""
    return sniffio.current_async_library() == "asyncio"


def loop_clock() -> Callable[[], float]:
    """``anyio.current_time`` without its per-call backend lookup (for hot paths);
    call it inside the running loop."""
    if on_asyncio():
        loop = asyncio.get_running_loop()
        if getattr(loop.time, "__func__", None) is asyncio.BaseEventLoop.time:
            # The stock loop's time() is a Python method around time.monotonic:
            # the same clock without a frame per frame received.  Asked of the
            # loop itself, not its class: a test may patch one loop's clock.
            return time.monotonic
        return loop.time  # what anyio reads on asyncio (uvloop's, a test loop's)
    return anyio.current_time


class Wakeup:
    """A flag one task waits on and synchronous code raises, reusable.

    For a task woken thousands of times a second (the tracker's scheduler, once
    per settled order): an ``anyio.Event`` per wait, and its asyncio event and
    future, cost several microseconds each time; on asyncio this waits on one
    bare future instead.  Make it inside the running loop.
    """

    __slots__ = ("_asyncio", "_pending", "_waiter")

    def __init__(self) -> None:
        self._asyncio = on_asyncio()
        self._pending = False
        self._waiter: asyncio.Future[None] | anyio.Event | None = None

    def set(self) -> None:
        """Make the current or next :meth:`wait` return (idempotent until it does)."""
        if self._pending:
            return
        self._pending = True
        waiter, self._waiter = self._waiter, None
        if waiter is None:
            return
        if isinstance(waiter, anyio.Event):
            waiter.set()
        elif not waiter.done():  # done: cancelled with its waiting task
            waiter.set_result(None)

    async def wait(self) -> None:
        """Return once :meth:`set` was called since the last return; a checkpoint
        even when it already was.  Cancelling it loses nothing: the flag stays."""
        if self._pending:
            await anyio.lowlevel.checkpoint()
        elif self._asyncio:
            future = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await future
            finally:
                self._waiter = None
        else:
            event = self._waiter = anyio.Event()
            try:
                await event.wait()
            finally:
                self._waiter = None
        self._pending = False
