"""The HTTP client contract the polling and Event API transports are written against.

One verb plus close, as in httpx's transport interface: the transports above
never see aiohttp or httpx, so the same code runs on asyncio and on trio, and
library exceptions are mapped to our own at this one boundary.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Protocol

import attrs

from orderfsm.errors import ConnectionLost, ProtocolError, ServiceUnavailable, TransportError

DEFAULT_TIMEOUT = 10.0
"""Seconds for a whole request (connect, send, headers and body)."""

DEFAULT_MAX_BODY = 4 * 1024 * 1024
"""Largest response body read into memory; a larger one is a protocol error."""


def _lower_keys(headers: Mapping[str, str]) -> Mapping[str, str]:
    return {k.lower(): v for k, v in headers.items()}


@attrs.frozen
class HttpResponse:
    """A complete answer; header names are lower-cased so look-ups need no care."""

    status: int
    headers: Mapping[str, str] = attrs.field(converter=_lower_keys, factory=dict)
    body: bytes = b""


class HttpError(TransportError):
    """An HTTP exchange failed without producing an answer."""


class RequestTimeout(HttpError, ServiceUnavailable):
    """No complete answer arrived within the request's timeout."""


class ConnectFailed(HttpError, ConnectionLost):
    """The connection could not be made, or dropped before the answer was complete."""


class BadResponse(HttpError, ProtocolError):
    """The server's answer broke HTTP (or exceeded the body size limit)."""


class HttpClient(Protocol):
    """What a transport needs from HTTP; a shared connection pool per object.

    ``request`` returns any answer the server gives, whatever its status;
    only the failure to get one raises (a subclass of :class:`HttpError`).
    """

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> HttpResponse: ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> HttpClient: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
