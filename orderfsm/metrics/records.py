"""What a tracker has been doing, as a plain immutable record.

``Tracker.stats()`` builds one when asked (a metrics scrape, a test, a log
line): the counts are bumped where the events already happen and copied
here, so reading costs nothing while orders are followed.  The labels are
few and fixed (outcomes, sources, status codes, close codes); order ids and
user ids never appear, so the record is safe to export as metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from transports.centrifuge import WebSocketStats

OUTCOMES = ("succeeded", "failed", "expired")
"""How a settled order ended: its goal reached, refunded, expired past its grace."""
UNSETTLED = ("timed_out", "not_found", "token_rejected", "no_source", "closed", "error")
"""Why tracking ended without a settlement."""


@attrs.frozen
class TrackerStats:
    """Counts since the tracker opened (``*_total`` in the exporters) and gauges of now."""

    orders_tracked: int
    """Orders whose tracking started."""
    orders_active: int
    """Orders tracked and not finished yet (settling, or still waiting for news)."""
    settled: Mapping[str, int]
    """Finished orders by outcome (:data:`OUTCOMES`)."""
    unsettled: Mapping[str, int]
    """Orders whose tracking ended without a settlement, by reason (:data:`UNSETTLED`)."""
    changes: Mapping[str, int]
    """Status changes applied, by the source that saw them first (websocket, polling, ...)."""
    conflicts: int
    """Contradictions reported (Xsolla's life cycle has none; a custom source may)."""
    polling: int
    """Orders being polled right now."""
    checks: int
    """One-off Get order calls made because news may have been missed."""
    get_order: Mapping[str, int]
    """Get order answers by HTTP status ("200", "404", "429", ...), and the requests
    that got none: "timeout", "connection_failed", "bad_response"."""
    host_sleeps: int
    """Times the host was noticed waking from a sleep."""
    websocket: WebSocketStats | None
    """The WebSocket connections (one per user), when the WebSocket transport is on."""
    settled_late: Mapping[str, int] = attrs.field(factory=dict)
    """Orders counted in ``unsettled`` (a timeout, say) that settled after all (an
    ``order_paid`` Xsolla retried past the deadline), by outcome; each is in
    ``settled`` too.  Every count here only grows, as the exporters' counters must."""
    early_dropped: int = 0
    """Orders not tracked whose news (from ``observe()``: a webhook receiver) was
    dropped unreplayed, to keep only the ``EARLY_OBSERVATIONS_KEPT`` heard of most
    recently: a receiver given a whole project's webhooks drops news all day."""

    @property
    def timed_out(self) -> int:
        return self.unsettled.get("timed_out", 0)
