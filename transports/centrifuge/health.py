"""What a connection's events mean to the orders on it: its health, what their sinks hear, the logs.

The driver (:mod:`~transports.centrifuge.connection`) does the I/O and hands
the engine's events here; this decides the health they amount to, delivers
publications to the subscribers and tells them of health changes.  It
performs no I/O, so it reads as the table of events it is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio

from orderfsm.errors import OrderFsmError
from orderfsm.interface import WEBSOCKET, Health, HealthReport
from transports.centrifuge.counters import ConnectionCounters, close_label
from transports.centrifuge.engine import CentrifugeEngine
from transports.centrifuge.events import (
    CaughtUp,
    Connected,
    Event,
    Failed,
    Gap,
    Ignored,
    OrderPublication,
    Reconnecting,
    Subscribed,
    Unsubscribed,
)
from transports.centrifuge.subscribers import Subscribers

logger = logging.getLogger("orderfsm.websocket")

NO_CHANNEL = "the server subscribed this connection to no channel: no status can be pushed"


class ConnectionHealth:
    """One connection's health, as its events make it."""

    def __init__(
        self,
        engine: CentrifugeEngine,
        subscribers: Subscribers,
        counters: ConnectionCounters,
        label: str,
        on_end: Callable[[Reconnecting | Failed], None],
    ) -> None:
        self.engine = engine
        self._subscribers = subscribers
        self._counters = counters
        self.label = label
        """For logs; never the token."""
        self._on_end = on_end
        self.health = Health.CONNECTING
        self.reason = "connecting"
        self.error: OrderFsmError | None = None
        self._dropped: set[str] = set()
        """Channels the server unsubscribed us from: their news no longer comes here."""
        self._channelless = False
        """The connect reply named no channel: nothing can be pushed to this connection
        (Centrifugo publishes only on subscribed channels) until a subscribe push."""
        counters.moved(None, Health.CONNECTING)

    def handle(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, OrderPublication):
                self._subscribers.deliver(event.observation)
            elif isinstance(event, CaughtUp):
                self.healthy_again()
            elif isinstance(event, Gap):
                reason = f"news may be lost on {event.channel}: {event.reason}"
                self.log(logging.INFO, "websocket.gap", reason)
                self.set(Health.DEGRADED, reason, gap=True)
            elif isinstance(event, Reconnecting):
                self._on_end(event)
                self._counters.ended(event.code, retried=True)
                reason = _describe(event.code, event.reason)
                reason = f"{reason}; reconnecting in {event.delay:.2f} s"
                self.log(logging.INFO, "websocket.reconnect", reason, event.code)
                self.set(Health.DEGRADED, reason, event.error)
            elif isinstance(event, Failed):
                self._on_end(event)
                self._counters.ended(event.code, retried=False)
                reason = _describe(event.code, event.reason)
                self.log(logging.INFO, "websocket.failed", reason, event.code)
                self.set(Health.FAILED, reason, event.error)
            elif isinstance(event, Unsubscribed):
                reason = f"the server dropped {event.channel}: {event.reason} ({event.code})"
                self.log(logging.INFO, "websocket.unsubscribed", reason)
                if not event.restated:
                    # Dropped from a live connection (a push.unsubscribe).  A server-side
                    # channel is not subscribed again by the client: orders on it are left
                    # to Get order until a new connection, which the engine makes when
                    # the server says to subscribe again (code 2500 and up).
                    self._dropped.add(event.channel)
                    self.set(Health.DEGRADED, reason, gap=True)
                # else absent from a new connect reply, which names the whole set.
            elif isinstance(event, Subscribed):
                self._dropped.discard(event.channel)
                self._channelless = False
            elif isinstance(event, Ignored):
                self.log(logging.INFO, "websocket.ignored", event.reason)
            elif isinstance(event, Connected):
                self._dropped.clear()  # its reply names every channel the server gives us
                self._channelless = not event.channels
                self.log(logging.DEBUG, "websocket.connected", f"client {event.client}")
        if self.health is not Health.HEALTHY:
            self.healthy_again()

    def healthy_again(self) -> None:
        """Healthy once caught up, unless no news can come: a channel dropped, or none
        given (then the orders are Get order's, not left to the socket's lifespan)."""
        if not self.engine.caught_up:
            return
        if self._channelless:
            if self.reason != NO_CHANNEL:
                self.log(logging.WARNING, "websocket.no_channel", NO_CHANNEL)
            self.set(Health.DEGRADED, NO_CHANNEL)
        elif not self._dropped:  # after a gap while live
            self.set(Health.HEALTHY, "caught up")

    def log(self, level: int, event: str, message: str, code: int | None = None) -> None:
        """A stable ``event`` name and the connection's label (never its token)."""
        if logger.isEnabledFor(level):
            extra: dict[str, object] = {"event": event}
            user = self.engine.config.user_external_id
            if user is not None:
                extra["user"] = user
            if code is not None:
                extra["code"] = close_label(code)
            logger.log(level, "websocket %s: %s", self.label, message, extra=extra)

    def set(
        self,
        health: Health,
        reason: str,
        error: OrderFsmError | None = None,
        *,
        gap: bool = False,
    ) -> None:
        changed = health is not self.health
        if changed:
            self._counters.moved(self.health, health)
        self.health, self.reason, self.error = health, reason, error
        if changed or gap:
            report = HealthReport(WEBSOCKET, health, anyio.current_time(), reason, error, gap)
            self._subscribers.broadcast(report)


def _describe(code: int | None, reason: str) -> str:
    if code is None:
        return f"connection lost ({reason})" if reason else "connection lost"
    if code < 100:
        return reason  # the engine's own verdict: "no ping", "connect timeout", ...
    return f"closed {code} {reason}".rstrip()
