"""Errors specific to Get order polling, under the shared tree in ``orderfsm.errors``.

Catch the shared classes (``TokenRejected``, ``OrderNotFound``,
``ServiceUnavailable``, ``ProtocolError``) unless the finer reason matters.
"""

from __future__ import annotations

from orderfsm.errors import (
    OrderNotFound,
    ProtocolError,
    ServiceUnavailable,
    TokenRejected,
)


class InvalidOrderAnswer(ProtocolError):
    """A 200 answer whose body is not the order JSON Xsolla documents."""


class UnexpectedAnswer(ProtocolError):
    """An HTTP status the poller has no rule for (400, 405, a redirect...).

    Asking again would get the same answer, so polling stops.
    """

    def __init__(self, message: str, status: int, error_code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


class ServerError(ServiceUnavailable):
    """Get order answered 429 or a server error; ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int, error_code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


class TokenProviderFailed(TokenRejected):
    """The caller's token callable raised, or returned something that is not a token."""


__all__ = [
    "InvalidOrderAnswer",
    "OrderNotFound",
    "ServerError",
    "ServiceUnavailable",
    "TokenProviderFailed",
    "TokenRejected",
    "UnexpectedAnswer",
]
