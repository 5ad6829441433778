"""The batches' own thread: what the function returns or raises comes back on the
loop (asyncio and trio), calls run one after another in that thread, and a
stopped thread ends and is replaced by the next call."""

from __future__ import annotations

import threading
from functools import partial

import anyio
import pytest

from transports.journal.hop import BatchThread


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
        assert [await hop.run(partial(work, i)) for i in range(5)] == [0, 2, 4, 6, 8]
        with pytest.raises(ValueError, match="refused"):
            await hop.run(fails)
        async with anyio.create_task_group() as group:  # concurrent callers, one thread
            for i in range(8):
                group.start_soon(hop.run, partial(work, i))
    finally:
        hop.stop()
    assert set(seen) == {"orderfsm-journal-batches"}
    assert threading.current_thread().name not in seen


@pytest.mark.anyio
async def test_a_stopped_thread_ends_and_the_next_call_starts_another() -> None:
    hop = BatchThread()
    assert await hop.run(lambda: 1) == 1
    first = hop.thread
    assert first is not None and first.is_alive()
    hop.stop()
    await anyio.to_thread.run_sync(first.join, 10.0)
    assert not first.is_alive()
    assert await hop.run(lambda: 2) == 2
    second = hop.thread
    assert second is not None and second is not first
    hop.stop()
    await anyio.to_thread.run_sync(second.join, 10.0)
    assert not second.is_alive()
