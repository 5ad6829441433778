"""What a pool's connections did, counted where it already happens, read as a record.

Every count is bumped on an event the driver handles anyway (a socket opened,
a health change, a connection that ended) and never per publication, so
counting costs nothing on the hot path.  :meth:`ConnectionCounters.snapshot`
copies the counts into an immutable :class:`WebSocketStats` when someone asks
(a metrics scrape); copying a dict of strings is one C call under the GIL, so
it may be asked from another thread.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import attrs

from orderfsm.interface import Health
from transports.centrifuge.codes import ClientCode


@attrs.frozen
class WebSocketStats:
    """A pool's WebSocket connections: now, and counted since it started."""

    connections: Mapping[str, int]
    """Open connections (one per user) by health: connecting, healthy, degraded, ..."""
    sockets_opened: int
    """Sockets that got through the handshake (first connections and reconnects)."""
    reconnects: int
    """Connections that ended and were retried."""
    failures: int
    """Connections that ended for good (a refused token, a terminal close code)."""
    closes: Mapping[str, int]
    """Why connections ended, by :func:`close_label`."""


def close_label(code: int | None) -> str:
    """A low-cardinality name for why a connection ended.

    A WebSocket close code or Centrifuge error code as its number ("3500",
    "1006", "109"); the client's own verdicts by name ("no_ping", "timeout",
    "restart", ...); "lost" when the socket went away without a code.
    """
    if code is None:
        return "lost"
    if code < 100:
        try:
            return ClientCode(code).name.lower()
        except ValueError:
            return str(code)
    return str(code)


class ConnectionCounters:
    """Shared by the connections of one pool; each bumps it as things happen."""

    __slots__ = ("closes", "failures", "health", "reconnects", "sockets_opened")

    def __init__(self) -> None:
        self.health: Counter[str] = Counter()
        self.sockets_opened = 0
        self.reconnects = 0
        self.failures = 0
        self.closes: Counter[str] = Counter()

    def moved(self, before: Health | None, after: Health | None) -> None:
        """A connection's health changed (``None``: it did not exist / is gone)."""
        if before is not None:
            self.health[before.value] -= 1
        if after is not None:
            self.health[after.value] += 1

    def ended(self, code: int | None, *, retried: bool) -> None:
        """A connection ended with ``code`` and will be retried, or not."""
        if retried:
            self.reconnects += 1
        else:
            self.failures += 1
        self.closes[close_label(code)] += 1

    def gave_up(self) -> None:
        """A connection stopped for good without a close (its token provider kept failing)."""
        self.failures += 1

    def snapshot(self) -> WebSocketStats:
        return WebSocketStats(
            connections={k: v for k, v in dict(self.health).items() if v},
            sockets_opened=self.sockets_opened,
            reconnects=self.reconnects,
            failures=self.failures,
            closes=dict(self.closes),
        )
