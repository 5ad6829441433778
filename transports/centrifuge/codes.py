"""What a close code or an error reply means for the connection: a pure table.

Sources: centrifuge ``disconnect.go`` and the client API docs (reconnect on
3000-3499, 4000-4499 and >= 5000; stop on 3500-3999 and 4500-4999), and
centrifuge-js ``onClose`` for transport codes below 3000 (1009 "message too
big" stops, everything else reconnects).  The v0.23.0 changelog states the rule
the other way round; that is a typo, see centrifuge-v2.md section 14.
"""

from __future__ import annotations

import enum


class CloseAction(enum.Enum):
    RECONNECT = "reconnect"
    STOP = "stop"


class ErrorAction(enum.Enum):
    """What to do after an error reply."""

    RETRY = "retry"
    """Temporary: try again after a backoff delay."""
    REFRESH_TOKEN = "refresh_token"
    """109 token expired: get a fresh token, then reconnect."""
    STOP = "stop"
    """Permanent for this command."""


class ClientCode(enum.IntEnum):
    """Codes below 100 that the engine uses when it ends a connection itself.

    Numbered like centrifuge-js's "connecting" codes where they overlap, so a
    log line reads the same in both clients.
    """

    TRANSPORT_CLOSED = 1
    NO_PING = 2
    TIMEOUT = 3
    BAD_PROTOCOL = 10
    RESTART = 20
    """Asked to reconnect now (the host slept: the socket may be dead without knowing)."""


# Close codes (WebSocket close frame or ``push.disconnect``).
MESSAGE_TOO_BIG = 1009
CONNECTION_EXPIRED = 3005
STATE_INVALIDATED = 3014
INVALID_TOKEN = 3500
RESUBSCRIBE_CODES = 2500
"""A ``push.unsubscribe`` code from here up asks the client to subscribe again."""


def resubscribes(code: int) -> bool:
    """Whether a ``push.unsubscribe`` with ``code`` asks the client to subscribe again."""
    return code >= RESUBSCRIBE_CODES


# Error reply codes.
UNAUTHORIZED = 101
TOKEN_EXPIRED = 109
UNRECOVERABLE_POSITION = 112


def close_action(code: int | None) -> CloseAction:
    """Reconnect or stop after the connection closed with ``code``.

    ``None`` means the socket went away without a close frame (1006 in
    WebSocket terms): reconnect.
    """
    if code is None:
        return CloseAction.RECONNECT
    if code == MESSAGE_TOO_BIG:
        return CloseAction.STOP
    if 3500 <= code <= 3999 or 4500 <= code <= 4999:
        return CloseAction.STOP
    return CloseAction.RECONNECT


def error_action(code: int, temporary: bool) -> ErrorAction:
    """The official SDKs' retry rule for error replies (centrifuge-js ``_connectError``).

    Retry on client-side codes (< 100) and temporary errors; refresh the token
    on 109; everything else is permanent.
    """
    if code == TOKEN_EXPIRED:
        return ErrorAction.REFRESH_TOKEN
    if code < 100 or temporary:
        return ErrorAction.RETRY
    return ErrorAction.STOP
