"""The interface for custom transports: one async callable per tracked order.

A custom transport is any ``async def transport(order, sink)``: it learns
about ``order.order_id`` however it likes and calls ``sink.observe(...)``
(and, optionally, ``sink.report(...)``) as news arrives.  The tracker runs it
in a task of its own from the start of tracking and cancels it once the
order is final, so it never needs to know when to stop.  Raising an
``OrderFsmError`` ends that transport (logged as a warning, reported ``FAILED``
under its name); the others carry on.  In a fleet it runs on every instance
tracking the order, not only where the order's lease is: a lease holder whose
transport gave up would otherwise leave the order unfollowed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import attrs

from orderfsm.interface import ObservationSink
from orderfsm.supervisor.records import User

if TYPE_CHECKING:
    from transports.http import HttpClient


@attrs.frozen
class OrderContext:
    """What a custom transport gets to work with for one order."""

    order_id: int
    project_id: int
    user: User
    api_url: str
    http: HttpClient | None = None
    """The tracker's shared HTTP client (aiohttp on asyncio, httpx on trio)."""


CustomTransport = Callable[[OrderContext, ObservationSink], Awaitable[None]]


def transport_name(transport: CustomTransport) -> str:
    """How logs, health reports and errors name a custom transport: its function's name."""
    name = getattr(transport, "__name__", None)
    return name if isinstance(name, str) and name else repr(transport)
