"""Get order answers counted at the one place every request passes: the HTTP client.

The tracker hands this wrapper, not its client, to its pollers and one-off
checks, so each answer is counted once by status (and each request that got
none by why) without the polling transport knowing about metrics.  Custom
transports get the bare client: their requests are not Get order's.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType
from typing import TYPE_CHECKING

from orderfsm.errors import ConnectionLost, ServiceUnavailable
from orderfsm.metrics.counters import RequestSpan, TrackerCounters

if TYPE_CHECKING:
    from transports.http import HttpClient, HttpResponse


class _Untold:
    def answered(self, label: str) -> None:
        """Nobody listens."""


_NO_SPAN: AbstractContextManager[RequestSpan] = nullcontext(_Untold())


def failure_label(error: BaseException) -> str:
    if isinstance(error, ServiceUnavailable):
        return "timeout"
    if isinstance(error, ConnectionLost):
        return "connection_failed"
    return "bad_response"


class CountedHttp:
    """An ``HttpClient`` that counts answers into ``counters.get_order``; it does not own
    the client it wraps (entering and closing it do nothing)."""

    __slots__ = ("_counters", "_http")

    def __init__(self, http: HttpClient, counters: TrackerCounters) -> None:
        self._http = http
        self._counters = counters

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout: float = 10.0,
    ) -> HttpResponse:
        counters = self._counters
        listener = counters.listener
        span = _NO_SPAN if listener is None else listener.request("Get order")
        with span as told:
            try:
                response = await self._http.request(method, url, headers, body, timeout)
            except Exception as exc:
                label = failure_label(exc)
                counters.get_order[label] += 1
                told.answered(label)
                raise
            label = str(response.status)
            counters.get_order[label] += 1
            told.answered(label)
            return response

    async def aclose(self) -> None:
        """The wrapped client belongs to someone else."""

    async def __aenter__(self) -> CountedHttp:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None
