"""The errors both of Xsolla's HTTP services raise, whichever one answered.

Get order and the Event API share status codes and error bodies, so they
share error classes too: one ``except ServerError`` covers both.  They live
beside the HTTP client rather than in either transport so that neither
transport imports the other.  ``transports.polling`` and
``transports.events`` re-export them under the names they always had.
"""

from __future__ import annotations

from orderfsm.errors import ProtocolError, ServiceUnavailable, TokenRejected, WrongEndpoint


class UnexpectedAnswer(ProtocolError):
    """An HTTP status the transport has no rule for (400, 405, a redirect...).

    Asking again would get the same answer, so the transport stops.
    """

    def __init__(self, message: str, status: int, error_code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


class NotXsolla(UnexpectedAnswer, WrongEndpoint):
    """An error answer whose body is not the Store API's error shape (an HTML page,
    another JSON shape): not Xsolla's service, so the URL is wrong."""


class ServerError(ServiceUnavailable):
    """The service answered 429 or a server error; ``status`` is the HTTP status."""

    def __init__(
        self,
        message: str,
        status: int,
        error_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.retry_after = retry_after
        """Seconds the service asked us to wait before asking again (``Retry-After``)."""


class TokenProviderFailed(TokenRejected):
    """The caller's token callable raised, or returned something that is not a token."""


__all__ = ["NotXsolla", "ServerError", "TokenProviderFailed", "UnexpectedAnswer"]
