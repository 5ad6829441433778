"""The contract between transports and whatever consumes their output.

A transport (built in, or written by a user) learns about orders somehow and
hands two kinds of news to an :class:`ObservationSink`: observations of an
order's status, and reports on its own health, which the supervisor uses to
decide when to fail over.  Both calls are synchronous and must not block: a
sink only records or forwards, so a transport's read loop is never held up by
the application.

This module is pure: it defines types only.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Protocol

import attrs

from orderfsm.core.records import Observation
from orderfsm.errors import OrderFsmError

TokenProvider = Callable[[], Awaitable[str]]
"""Returns the user's current JWT; called again whenever the server rejects it
or a connection is re-established, so it may refresh the token."""


def not_a_token(value: object) -> str:
    """Why ``value`` (not a non-empty str) is no token, naming its type only: a token
    handed over in the wrong type (bytes, the auth service's JSON) is still the
    player's token, and the reason goes into errors, health reports and logs."""
    given = "an empty str" if isinstance(value, str) else f"a {type(value).__name__}"
    return f"token provider returned {given}, not a non-empty str"


def token_provider(token: TokenProvider | str) -> TokenProvider:
    """A fixed token as a provider (one that can never refresh); a provider as it is."""
    if not isinstance(token, str):
        return token
    value = token

    async def fixed() -> str:
        return value

    return fixed


WEBSOCKET = "websocket"
POLLING = "polling"
WEBHOOK = "webhook"
JOURNAL = "journal"
EVENTS = "events"
BUILT_IN = frozenset({WEBSOCKET, POLLING, WEBHOOK, JOURNAL})
"""The tracker's own transports (``Tracker(transports=...)``).  A custom transport
names its news and its health otherwise: an application's ``on_report``, a
result's ``source`` and the stats tell them apart by the name."""


class Health(str, enum.Enum):
    CONNECTING = "connecting"
    """Starting up; nothing delivered yet."""
    HEALTHY = "healthy"
    """Delivering, and caught up: nothing published so far has been missed."""
    DEGRADED = "degraded"
    """Trying to recover (reconnecting, backing off); news may be delayed."""
    FAILED = "failed"
    """Gave up for good; ``error`` says why.  Nothing more will be delivered."""
    STOPPED = "stopped"
    """Closed because it was asked to (or had nothing left to track)."""


@attrs.frozen
class HealthReport:
    source: str
    health: Health
    at: float
    reason: str = ""
    error: OrderFsmError | None = attrs.field(default=None, eq=False)
    gap: bool = False
    """News may have been lost (e.g. history no longer reaches back far enough):
    the consumer should check the orders once by other means (a Get order)."""


class ObservationSink(Protocol):
    def observe(self, observation: Observation, /) -> None: ...

    def report(self, report: HealthReport, /) -> None: ...
