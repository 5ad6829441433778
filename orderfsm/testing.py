"""Helpers for testing code built on orderfsm, shipped for users' tests too."""

from __future__ import annotations

from collections.abc import Callable

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
