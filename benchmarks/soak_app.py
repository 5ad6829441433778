"""What the application side of a soak schedule does for each order: track it, then
``watch`` and ``wait``, follow it past its settlement; and, with ``--fleet``, the
same on another instance that hears only the journal."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, cast

import anyio
import attrs
from anyio.abc import TaskGroup
from soak_schedule import Schedule

from orderfsm.core import Observation
from orderfsm.supervisor.records import Change, FinalResult
from orderfsm.supervisor.tracker import Tracker
from transports.emulator import User

if TYPE_CHECKING:
    from soak_run import Harness


@attrs.define
class AppOrder:
    index: int
    order_id: int
    user: User
    path: list[str]
    watched: list[Change] = attrs.Factory(list)
    watch_error: str | None = None
    late: list[Change] = attrs.Factory(list)
    late_error: str | None = None
    followed: list[Change] = attrs.Factory(list)
    follow_error: str | None = None
    result: FinalResult | None = None
    wait_error: str | None = None
    wait_exception: BaseException | None = None
    reports: list[str] = attrs.Factory(list)
    peer_watched: list[Change] = attrs.Factory(list)
    """The other instance's ``watch`` (``--fleet``)."""
    peer_watch_error: str | None = None
    peer_result: FinalResult | None = None
    peer_wait_error: str | None = None


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


async def follow(
    h: Harness,
    schedule: Schedule,
    tracker: Tracker,
    order: AppOrder,
    start: float,
    following: TaskGroup,
) -> None:
    """What the application does for one order: track it, then watch and wait, and
    follow it past its settlement (a refund after delivery) until the tracker closes."""
    plan = schedule.orders[order.index]
    await anyio.sleep_until(start + plan.track_at)
    tracker.track(order.order_id, token=order.user.token, user_id=order.user.external_id)
    if h.sabotage == "wrong" and order.index == 0:
        # The latest status the order never has: an earlier one would be stale
        # (dropped, and rightly) if a later true one is already known.
        lie = next(s for s in ("canceled", "done", "paid", "expired") if s not in plan.path)
        tracker.observe(
            Observation(order.order_id, lie, source="sabotage", at=anyio.current_time())
        )
    if h.sabotage == "leak" and order.index == 0:
        h.background.start_soon(_leak, h.emu.base_url)

    async def first_watch() -> None:
        order.watch_error = await _watch(tracker, order.order_id, order.watched)

    async def late_watch() -> None:
        await anyio.sleep_until(start + plan.late_watch_at)
        order.late_error = await _watch(tracker, order.order_id, order.late)

    async def wait() -> None:
        order.result, order.wait_exception = await _wait(tracker, order.order_id)
        if order.wait_exception is not None:
            order.wait_error = describe(order.wait_exception)

    async def follow() -> None:
        order.follow_error = await _watch(tracker, order.order_id, order.followed, follow=True)

    following.start_soon(follow)
    async with anyio.create_task_group() as tg:
        tg.start_soon(first_watch)
        tg.start_soon(wait)
        tg.start_soon(late_watch)


async def follow_peer(schedule: Schedule, peer: Tracker, order: AppOrder, start: float) -> None:
    """The same order on another instance, which hears only the journal."""
    await anyio.sleep_until(start + schedule.orders[order.index].track_at)
    peer.track(order.order_id)

    async def watch() -> None:
        order.peer_watch_error = await _watch(peer, order.order_id, order.peer_watched)

    async def wait() -> None:
        order.peer_result, error = await _wait(peer, order.order_id)
        if error is not None:
            order.peer_wait_error = describe(error)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        tg.start_soon(wait)


async def _wait(tracker: Tracker, order_id: int) -> tuple[FinalResult | None, Exception | None]:
    try:
        return await tracker.wait(order_id), None
    except Exception as exc:
        return None, exc


async def _watch(
    tracker: Tracker, order_id: int, into: list[Change], *, follow: bool = False
) -> str | None:
    try:
        watch = cast("AsyncGenerator[Change, None]", tracker.watch(order_id, follow=follow))
        async with contextlib.aclosing(watch) as changes:
            async for change in changes:
                into.append(change)
    except Exception as exc:
        return describe(exc)
    return None


async def _leak(base_url: str) -> None:
    """The ``leak`` sabotage: a task and a socket that outlive their tracker."""
    port = int(base_url.rsplit(":", 1)[1])
    async with await anyio.connect_tcp("127.0.0.1", port):
        await anyio.sleep_forever()
