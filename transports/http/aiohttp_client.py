"""The :class:`~transports.http.base.HttpClient` for asyncio, on aiohttp."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType

import aiohttp
import anyio

from transports.http.base import (
    DEFAULT_MAX_BODY,
    DEFAULT_TIMEOUT,
    BadResponse,
    ConnectFailed,
    HttpError,
    HttpResponse,
    RequestTimeout,
)

USER_AGENT = "orderfsm"


class AiohttpClient:
    """One ``aiohttp.ClientSession`` (one connection pool) for every request.

    The session is created on first use because aiohttp binds it to the
    running loop; building the client object needs no loop.
    """

    def __init__(self, *, max_body: int = DEFAULT_MAX_BODY) -> None:
        self._max_body = max_body
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise HttpError("the HTTP client is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 (mapped to RequestTimeout)
    ) -> HttpResponse:
        session = self._ensure_session()
        # One deadline for the whole exchange, body included; aiohttp's own
        # timeout is left off so that both clients time out the same way.
        with anyio.move_on_after(timeout) as scope:
            try:
                async with session.request(
                    method,
                    url,
                    headers=dict(headers or {}),
                    data=body,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=None),
                ) as response:
                    data = await self._read(response)
                    return HttpResponse(response.status, dict(response.headers), data)
            except (TimeoutError, asyncio.TimeoutError) as exc:  # distinct before 3.11
                raise RequestTimeout(f"{method} {url}: timed out") from exc
            except aiohttp.ClientPayloadError as exc:
                raise BadResponse(f"{method} {url}: bad response body: {exc}") from exc
            except aiohttp.ClientResponseError as exc:
                raise BadResponse(f"{method} {url}: bad response: {exc}") from exc
            except (aiohttp.ClientConnectionError, OSError) as exc:
                raise ConnectFailed(f"{method} {url}: {exc or type(exc).__name__}") from exc
            except (aiohttp.ClientError, ValueError) as exc:
                raise HttpError(f"{method} {url}: {exc}") from exc
        assert scope.cancelled_caught
        raise RequestTimeout(f"{method} {url}: no answer within {timeout:g} s")

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        if response.content_length is not None and response.content_length > self._max_body:
            raise BadResponse(f"response body of {response.content_length} bytes is too large")
        chunks = bytearray()
        while chunk := await response.content.read(65536):
            chunks += chunk
            if len(chunks) > self._max_body:
                raise BadResponse(f"response body exceeds {self._max_body} bytes")
        return bytes(chunks)

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            with anyio.CancelScope(shield=True):
                await session.close()

    async def __aenter__(self) -> AiohttpClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
