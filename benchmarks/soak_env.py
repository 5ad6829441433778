"""What the soak shares across schedules, and how it looks for leaks.

* The emulator runs in a child process (``orderfsm emulator``), so its sockets
  are not in this process and every TCP socket of ours towards its port is a
  socket some tracker (or the harness) opened.
* One webhook receiver, served on loopback (aiohttp.web on asyncio, the ASGI
  app under hypercorn on trio), routes each notification to the tracker of the
  schedule that owns the order: an application with one receiver and many
  trackers would do the same.
* Tasks are tagged with the schedule they were started under (a context
  variable, inherited by every task spawned below it), so after a tracker has
  closed, any task of that schedule still alive is a leak, even while other
  schedules run.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import psutil  # type: ignore[import-untyped]  # no stubs installed

from orderfsm.core import Observation
from orderfsm.interface import HealthReport
from orderfsm.supervisor.tracker import Tracker
from transports.backend import on_asyncio

SCHEDULE: contextvars.ContextVar[int | None] = contextvars.ContextVar("soak_schedule", default=None)
"""The seed of the schedule whose code is running; tasks inherit it."""


class WebhookRouter:
    """An ObservationSink that hands each webhook to the tracker owning the order."""

    def __init__(self) -> None:
        self._owners: dict[int, Tracker] = {}
        self.unrouted = 0

    def register(self, order_id: int, tracker: Tracker) -> None:
        self._owners[order_id] = tracker

    def unregister(self, order_id: int) -> None:
        self._owners.pop(order_id, None)

    def observe(self, observation: Observation, /) -> None:
        tracker = self._owners.get(observation.order_id)
        if tracker is None:
            self.unrouted += 1  # a late copy for a schedule that is over
            return
        tracker.observe(observation)

    def report(self, report: HealthReport, /) -> None:
        """The receiver reports nothing that steers an order."""


class TaskProbe:
    """Finds the tasks started under a schedule's tag that are still running.

    On asyncio a task factory records each new task under its creator's tag
    (Python 3.11 tasks do not expose their context); on trio every task's
    context is readable, so the task tree is walked from the root.
    """

    def __init__(self) -> None:
        self._tagged: dict[int, weakref.WeakSet[asyncio.Task[Any]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Any = None

    def __enter__(self) -> TaskProbe:
        if on_asyncio():
            self._loop = asyncio.get_running_loop()
            self._previous = self._loop.get_task_factory()
            self._loop.set_task_factory(self._factory)  # type: ignore[arg-type]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.set_task_factory(self._previous)
            self._loop = None

    def _factory(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any],
        **kwargs: Any,
    ) -> asyncio.Task[Any]:
        if self._previous is not None:
            task: asyncio.Task[Any] = self._previous(loop, coro, **kwargs)
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)
        context = kwargs.get("context")
        tag = SCHEDULE.get() if context is None else context.get(SCHEDULE)
        if tag is not None:
            self._tagged.setdefault(tag, weakref.WeakSet()).add(task)
        return task

    def alive(self, tag: int) -> list[str]:
        """Names of the tag's tasks still running (the caller's own task excluded)."""
        if on_asyncio():
            current = asyncio.current_task()
            tasks = self._tagged.get(tag, weakref.WeakSet())
            return sorted(t.get_name() for t in tasks if not t.done() and t is not current)
        import trio

        current_trio = trio.lowlevel.current_task()
        found: list[str] = []
        stack = [trio.lowlevel.current_root_task()]
        while stack:
            task = stack.pop()
            if task is None:
                continue
            if task is not current_trio and task.context.get(SCHEDULE) == tag:
                found.append(task.name)
            for nursery in task.child_nurseries:
                stack.extend(nursery.child_tasks)
        return sorted(found)

    def forget(self, tag: int) -> None:
        self._tagged.pop(tag, None)


def sockets_towards(port: int) -> list[str]:
    """This process's TCP sockets connected to ``port`` on loopback (any state with an fd)."""
    found = []
    for conn in psutil.Process().net_connections(kind="tcp"):
        if conn.raddr and conn.raddr.port == port and conn.fd != -1:
            found.append(f"fd {conn.fd} {conn.laddr.port}->{conn.raddr.port} {conn.status}")
    return found


async def settle(check: Callable[[], Any], *, within: float, step: float = 0.02) -> Any:
    """Call ``check`` until it returns something falsy or ``within`` s pass; its last value.

    Closing is asynchronous at the edges (a close frame in flight, a transport
    closed on the next loop turn); a leak is what is still there afterwards.
    """
    value = check()
    with contextlib.suppress(TimeoutError), anyio.fail_after(within):
        while value:
            await anyio.sleep(step)
            value = check()
    return value
