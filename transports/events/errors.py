"""Errors specific to the Event API, under the shared tree in ``orderfsm.errors``.

HTTP statuses map to the same classes as Get order's (``ServerError`` for
429/5xx, ``UnexpectedAnswer`` for a status with no rule, ``TokenRejected``),
so one handler covers both of Xsolla's HTTP services.
"""

from __future__ import annotations

from orderfsm.errors import ProtocolError, ServiceUnavailable, TokenRejected
from transports.http.errors import ServerError, TokenProviderFailed, UnexpectedAnswer


class InvalidEventsAnswer(ProtocolError):
    """A 200 answer whose body is not ``{"events": [...]}``."""


__all__ = [
    "InvalidEventsAnswer",
    "ServerError",
    "ServiceUnavailable",
    "TokenProviderFailed",
    "TokenRejected",
    "UnexpectedAnswer",
]
