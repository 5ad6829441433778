"""Errors specific to Get order polling, under the shared tree in ``orderfsm.errors``.

Catch the shared classes (``TokenRejected``, ``OrderNotFound``,
``ServiceUnavailable``, ``ProtocolError``) unless the finer reason matters.
The status errors are shared with the Event API (see
:mod:`transports.http.errors`) and re-exported here under their old names.
"""

from __future__ import annotations

from orderfsm.errors import (
    OrderNotFound,
    ProtocolError,
    ServiceUnavailable,
    TokenRejected,
)
from transports.http.errors import ServerError, TokenProviderFailed, UnexpectedAnswer


class InvalidOrderAnswer(ProtocolError):
    """A 200 answer whose body is not the order JSON Xsolla documents."""


__all__ = [
    "InvalidOrderAnswer",
    "OrderNotFound",
    "ServerError",
    "ServiceUnavailable",
    "TokenProviderFailed",
    "TokenRejected",
    "UnexpectedAnswer",
]
