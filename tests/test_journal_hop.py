"""The batches' own thread: what the function returns or raises comes back on the
loop (asyncio and trio), calls run one after another in that thread, and a
stopped thread ends and is replaced by the next call."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import anyio
import pytest

from transports.journal.hop import BatchThread

T = TypeVar("T")


async def run(hop: BatchThread, function: Callable[[], T]) -> T:
    """``function()`` sent to the thread; what it gave, handed back on the loop."""
    came = anyio.Event()
    outcome: list[T | BaseException] = []

    def then(got: T | BaseException) -> None:
        outcome.append(got)
        came.set()

    hop.send(function, then)
    await came.wait()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


@pytest.mark.anyio
async def test_results_and_errors_come_back_on_the_loop() -> None:
    hop = BatchThread()
    seen: list[str] = []

    def work(n: int) -> int:
        seen.append(threading.current_thread().name)
        return n * 2

    def fails() -> int:
        raise ValueError("refused")

    try:
        assert [await run(hop, partial(work, i)) for i in range(5)] == [0, 2, 4, 6, 8]
        with pytest.raises(ValueError, match="refused"):
            await run(hop, fails)
        async with anyio.create_task_group() as group:  # concurrent callers, one thread
            for i in range(8):
                group.start_soon(run, hop, partial(work, i))
    finally:
        hop.stop()
    assert set(seen) == {"orderfsm-journal-batches"}
    assert threading.current_thread().name not in seen


@pytest.mark.anyio
async def test_a_stopped_thread_ends_and_the_next_call_starts_another() -> None:
    hop = BatchThread()
    assert await run(hop, lambda: 1) == 1
    first = hop.thread
    assert first is not None and first.is_alive()
    hop.stop()
    await anyio.to_thread.run_sync(first.join, 10.0)
    assert not first.is_alive()
    assert await run(hop, lambda: 2) == 2
    second = hop.thread
    assert second is not None and second is not first
    hop.stop()
    await anyio.to_thread.run_sync(second.join, 10.0)
    assert not second.is_alive()
