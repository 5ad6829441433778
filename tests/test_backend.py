"""The scheduler's reusable wake-up flag, on both event loops.

The tracker's scheduler waits on one :class:`~transports.backend.Wakeup` for its
whole life, woken once per settled order: a wake-up lost (set while nobody
waits, or while the wait is being cancelled by its review timer) would leave an
order unlooked-at until its next review.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import anyio
import pytest

from transports.backend import Wakeup, loop_clock

pytestmark = pytest.mark.anyio

DEADLINE = 10.0


async def test_a_set_before_the_wait_is_kept_and_consumed_once() -> None:
    wakeup = Wakeup()
    wakeup.set()
    wakeup.set()  # idempotent until a wait returns
    with anyio.fail_after(DEADLINE):
        await wakeup.wait()
    with anyio.move_on_after(0.05) as second:
        await wakeup.wait()
    assert second.cancelled_caught, "one set() released two waits"


async def test_a_set_while_waiting_wakes_the_waiter_each_time() -> None:
    wakeup = Wakeup()
    send, receive = anyio.create_memory_object_stream[int](10)

    async def waiter() -> None:
        woken = 0
        while True:
            await wakeup.wait()
            woken += 1
            send.send_nowait(woken)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        for expected in range(1, 4):
            await anyio.wait_all_tasks_blocked()  # the waiter waits: set() wakes it
            wakeup.set()
            with anyio.fail_after(DEADLINE):
                assert await receive.receive() == expected
        await anyio.wait_all_tasks_blocked()
        assert receive.statistics().current_buffer_used == 0, "woken without a set()"
        tg.cancel_scope.cancel()
    send.close()
    receive.close()


async def test_a_set_during_a_cancelled_wait_is_not_lost() -> None:
    wakeup = Wakeup()
    with anyio.CancelScope() as scope:
        scope.cancel()
        wakeup.set()
        await wakeup.wait()  # cancelled at its checkpoint: the flag stays
    assert scope.cancelled_caught
    with anyio.fail_after(DEADLINE):
        await wakeup.wait()


async def test_the_loop_clock_reads_what_anyio_reads() -> None:
    clock = loop_clock()
    before = anyio.current_time()
    now = clock()
    assert before <= now <= anyio.current_time()


class _ShiftedLoop(asyncio.SelectorEventLoop):
    def time(self) -> float:
        return super().time() + 1000.0


def _patched_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    real = loop.time
    loop.time = lambda: real() + 1000.0  # type: ignore[method-assign]
    return loop


@pytest.mark.parametrize(
    "make_loop", [_ShiftedLoop, _patched_loop], ids=["its-own-class", "patched-instance"]
)
def test_a_loop_with_its_own_clock_is_read_through_it(
    make_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """The stock loop's clock is read without its Python wrapper; a loop that keeps
    its own time (uvloop, a test's virtual clock, one loop patched) must still be
    read through it, or deadlines and timestamps would disagree with anyio's."""
    loop = make_loop()
    try:

        async def read() -> float:
            return loop_clock()()

        assert loop.run_until_complete(read()) >= time.monotonic() + 999.0
    finally:
        loop.close()
