"""Helpers for testing code built on orderfsm, shipped for users' tests too."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable

import anyio

from orderfsm.core.records import Observation
from orderfsm.interface import HealthReport


class RecordingSink:
    """An :class:`~orderfsm.interface.ObservationSink` that keeps everything.

    ``await sink.wait_for(predicate)`` lets a test wait for news without
    sleeping for a guessed duration.
    """

    def __init__(self) -> None:
        self.observations: list[Observation] = []
        self.reports: list[HealthReport] = []
        self._changed = anyio.Event()

    def observe(self, observation: Observation, /) -> None:
        self.observations.append(observation)
        self._wake()

    def report(self, report: HealthReport, /) -> None:
        self.reports.append(report)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(
        self,
        predicate: Callable[[RecordingSink], bool],
        timeout: float = 10.0,  # noqa: ASYNC109 - a default bound keeps a broken test from hanging
    ) -> None:
        """Return once ``predicate(self)`` holds; raise ``TimeoutError`` after ``timeout`` s."""
        with anyio.fail_after(timeout):
            while not predicate(self):
                await self._changed.wait()


async def eventually(
    condition: Callable[[], object | Awaitable[object]],
    timeout: float = 10.0,  # noqa: ASYNC109 - a default bound keeps a broken test from hanging
    interval: float = 0.01,
) -> None:
    """Return once ``condition()`` (sync or async) is true, asking every ``interval`` s.

    For state no event announces (what an emulator has recorded, say): a test
    waits for the fact itself, with a generous bound, instead of sleeping for
    a guessed duration that a loaded machine overruns.
    """
    with anyio.fail_after(timeout):
        while True:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await anyio.sleep(interval)


class SteppedClock:
    """A clock that counts time asleep, for ``Tracker(sleep_clock=...)`` in tests.

    It runs with the monotonic clock; ``step(seconds)`` makes it look as if the
    host had just slept that long, which the tracker notices within a second.
    """

    def __init__(self) -> None:
        self._slept = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self._slept

    def step(self, seconds: float) -> None:
        self._slept += seconds
