"""Centrifuge protocol v2 (JSON) for Xsolla's order-status WebSocket, sans-io.

:class:`CentrifugeEngine` is pure: text frames in, events out, commands out as
text, time passed in.  A driver (the I/O shell) runs it like this::

    engine = CentrifugeEngine(EngineConfig(project_id=...))
    while True:
        token = await token_provider()
        first = engine.connect(now(), token)        # starts the connect timeout
        open the socket at engine.config.endpoint (no subprotocol); if that fails,
            events = engine.connection_lost(None, "cannot connect", now())
        else send `first`, then until an end event:
            on a text frame:  events = engine.receive(text, now())
            on close:         events = engine.connection_lost(code, reason, now())
            at next_deadline: events = engine.handle_timer(now())
            after each call:  send every frame of engine.data_to_send()
        for each event: OrderPublication -> sink.observe(event.observation) (if tracked);
            CaughtUp -> healthy; Gap -> check the orders another way;
            Reconnecting -> degraded: close the socket, sleep until event.reconnect_at;
            Failed -> failed: close the socket, stop.

That loop is implemented by :class:`~transports.centrifuge.connection.Connection`
over a small socket adapter (aiohttp on asyncio, httpx-ws on trio), and
:class:`WebSocketPool` shares one connection per user among tracked orders.
"""

from transports.centrifuge.config import DEFAULT_ENDPOINT, EngineConfig
from transports.centrifuge.connection import (
    Attachment,
    ConnectionInfo,
    DriverCrashed,
    TokenUnavailable,
)
from transports.centrifuge.counters import WebSocketStats
from transports.centrifuge.engine import CentrifugeEngine, State
from transports.centrifuge.errors import (
    CentrifugeProtocolError,
    ConfigError,
    Disconnected,
    EngineMisuse,
    InvalidToken,
    ReplyError,
)
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
from transports.centrifuge.pool import DEFAULT_WS_URL, PoolClosed, WebSocketPool
from transports.centrifuge.shells import default_socket_factory, open_socket
from transports.centrifuge.socket import (
    SocketClosed,
    SocketFactory,
    SocketOpenFailed,
    WebSocket,
)

__all__ = [
    "DEFAULT_ENDPOINT",
    "DEFAULT_WS_URL",
    "Attachment",
    "CaughtUp",
    "CentrifugeEngine",
    "CentrifugeProtocolError",
    "ConfigError",
    "Connected",
    "ConnectionInfo",
    "Disconnected",
    "DriverCrashed",
    "EngineConfig",
    "EngineMisuse",
    "Event",
    "Failed",
    "Gap",
    "Ignored",
    "InvalidToken",
    "OrderPublication",
    "PoolClosed",
    "Reconnecting",
    "ReplyError",
    "SocketClosed",
    "SocketFactory",
    "SocketOpenFailed",
    "State",
    "Subscribed",
    "TokenUnavailable",
    "Unsubscribed",
    "WebSocket",
    "WebSocketPool",
    "WebSocketStats",
    "default_socket_factory",
    "open_socket",
]
