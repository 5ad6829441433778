"""A tiny HTTP client interface, with aiohttp under asyncio and httpx under trio.

``async with open_http_client() as http: answer = await http.request("GET", url)``
works the same on both loops; transports take an :class:`HttpClient` so that
tests and applications can share one connection pool or supply their own.
"""

from __future__ import annotations

from transports.backend import on_asyncio
from transports.http.base import (
    DEFAULT_MAX_BODY,
    DEFAULT_TIMEOUT,
    BadResponse,
    ConnectFailed,
    HttpClient,
    HttpError,
    HttpResponse,
    RequestTimeout,
)


def open_http_client(*, max_body: int = DEFAULT_MAX_BODY) -> HttpClient:
    """The client that suits the running event loop; close it with ``aclose``.

    Call it from async code: the choice depends on which loop is running.
    Importing here keeps httpx optional for asyncio-only installs.
    """
    if on_asyncio():
        from transports.http.aiohttp_client import AiohttpClient

        return AiohttpClient(max_body=max_body)
    from transports.http.httpx_client import HttpxClient

    return HttpxClient(max_body=max_body)


__all__ = [
    "DEFAULT_MAX_BODY",
    "DEFAULT_TIMEOUT",
    "BadResponse",
    "ConnectFailed",
    "HttpClient",
    "HttpError",
    "HttpResponse",
    "RequestTimeout",
    "open_http_client",
]
