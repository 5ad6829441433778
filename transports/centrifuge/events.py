"""What the engine tells its driver: frozen records, one per thing that happened.

Every event carries ``at``, the ``now`` the driver passed in when it happened.
Health mapping for the driver: :class:`Connected` -> still connecting;
:class:`CaughtUp` -> healthy; :class:`Reconnecting` -> degraded (close the
socket, wait, connect again); :class:`Failed` -> failed (close, stop).
"""

from __future__ import annotations

from typing import Any

import attrs

from orderfsm.core import Observation, Position, Status
from orderfsm.errors import TransportError
from orderfsm.interface import WEBSOCKET


@attrs.frozen
class Connected:
    """The server accepted ``connect``; publications may follow.  Not yet caught up."""

    at: float
    client: str
    version: str
    ping: int
    """Server ping interval in seconds; 0 when the server does not ping."""
    pong: bool
    channels: tuple[str, ...]


@attrs.frozen
class CaughtUp:
    """Every channel is live: history read or recovery done, nothing left to fetch.

    Emitted after :class:`Connected` once the initial sync is done, and again
    after any later resync.  Anything that could not be fetched was reported
    as a :class:`Gap` before it.
    """

    at: float


@attrs.frozen
class Subscribed:
    """A server-side subscription arrived (connect reply or subscribe push)."""

    at: float
    channel: str
    epoch: str
    offset: int
    recovered: bool


@attrs.frozen
class Unsubscribed:
    """The server dropped a channel (unsubscribe push, or absent from a new connect reply)."""

    at: float
    channel: str
    code: int
    reason: str
    restated: bool = False
    """Absent from a new connect reply, which names every channel the connection has
    (not a ``push.unsubscribe`` on a live connection)."""


@attrs.frozen
class Gap:
    """Publications on ``channel`` may have been missed and cannot be fetched again.

    Causes: failed recovery, an epoch change, error 112, history that no longer
    reaches back to the last delivered offset, history not available, state
    invalidated.  The driver should check the tracked orders another way (one
    Get order poll).
    """

    at: float
    channel: str
    reason: str


@attrs.frozen
class OrderPublication:
    """An order status published on a channel, parsed from ``{order_id, status}``.

    ``via`` is ``"push"``, ``"history"`` or ``"recovery"``.  Not filtered: the
    driver keeps the ones whose ``order_id`` it tracks.
    """

    at: float
    channel: str
    offset: int
    epoch: str
    order_id: int
    status: Status
    via: str
    data: Any = attrs.field(default=None, eq=False, repr=False)

    @property
    def observation(self) -> Observation:
        position = Position(offset=self.offset or None, epoch=self.epoch)
        # Checked when the publication was parsed (order_event): no second time.
        return Observation.trusted(
            self.order_id, self.status, WEBSOCKET, self.at, position, self.data
        )


@attrs.frozen
class Ignored:
    """Something harmless the engine did not use: a publication that is not an
    order status, a ``message``/``join``/``leave`` push, a reply to an unknown id."""

    at: float
    reason: str
    channel: str = ""
    offset: int = 0
    data: Any = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class Reconnecting:
    """The connection is over but may be retried: close the socket, wait until
    ``reconnect_at`` (``delay`` from ``at``), get a token, call ``connect``.

    ``token_expired`` asks the driver to make the token provider refresh.
    """

    at: float
    code: int | None
    reason: str
    delay: float
    reconnect_at: float
    token_expired: bool
    error: TransportError = attrs.field(eq=False)


@attrs.frozen
class Failed:
    """The connection is over for good: close the socket and stop using this engine."""

    at: float
    code: int | None
    reason: str
    error: TransportError = attrs.field(eq=False)


Event = (
    Connected
    | CaughtUp
    | Subscribed
    | Unsubscribed
    | Gap
    | OrderPublication
    | Ignored
    | Reconnecting
    | Failed
)
