"""The typed errors of the Centrifuge transport, each under the project's tree.

The engine never raises these at the driver for peer misbehaviour: it puts
them into :class:`~transports.centrifuge.events.Reconnecting` or
:class:`~transports.centrifuge.events.Failed` events, so a health report can
carry the reason.  Only caller misuse (:class:`EngineMisuse`,
:class:`ConfigError`) is raised.
"""

from __future__ import annotations

from orderfsm.errors import (
    ConnectionLost,
    OrderFsmError,
    ProtocolError,
    TokenRejected,
    TransportError,
)


class CentrifugeProtocolError(ProtocolError):
    """The server sent a frame that is not Centrifuge protocol v2 JSON.

    ``line`` keeps (a prefix of) the offending line for logs.
    """

    def __init__(self, message: str, line: str = "") -> None:
        super().__init__(message)
        self.line = line[:200]


class Disconnected(ConnectionLost):
    """The connection ended: a close code, a disconnect push, or a client-side timeout.

    ``code`` is the WebSocket/Centrifuge close code, or one of the client codes
    in :class:`~transports.centrifuge.codes.ClientCode` when the engine itself
    gave up on the connection.  ``reconnect`` says whether the code allows
    another attempt.
    """

    def __init__(self, code: int | None, reason: str, *, reconnect: bool) -> None:
        super().__init__(f"disconnected: code {code} ({reason or 'no reason'})")
        self.code = code
        self.reason = reason
        self.reconnect = reconnect


class ReplyError(TransportError):
    """The server answered a command with an error reply (``{"error": {...}}``)."""

    def __init__(self, code: int, message: str, *, temporary: bool) -> None:
        super().__init__(f"server error {code}: {message or 'no message'}")
        self.code = code
        self.message = message
        self.temporary = temporary


class InvalidToken(TokenRejected):
    """The server rejected the user token for good: close 3500, error 101, or a 109 to
    connect after ``token_refreshes`` of them (to connect or to a history read) since
    the connection last caught up."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"token rejected: code {code} ({reason or 'no reason'})")
        self.code = code
        self.reason = reason


class EngineMisuse(OrderFsmError, RuntimeError):
    """The driver called the engine in a state where that call makes no sense."""


class ConfigError(OrderFsmError, ValueError):
    """An :class:`~transports.centrifuge.engine.EngineConfig` value is out of range."""
