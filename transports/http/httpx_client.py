"""The :class:`~transports.http.base.HttpClient` for trio (or any anyio loop), on httpx."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType

import anyio
import httpx

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


class HttpxClient:
    """One ``httpx.AsyncClient`` (one connection pool) for every request."""

    def __init__(self, *, max_body: int = DEFAULT_MAX_BODY) -> None:
        self._max_body = max_body
        self._client: httpx.AsyncClient | None = None
        self._closed = False

    def _ensure_client(self) -> httpx.AsyncClient:
        if self._closed:
            raise HttpError("the HTTP client is closed")
        if self._client is None:
            # httpx's timeouts are per phase; the total deadline is ours (below).
            self._client = httpx.AsyncClient(
                headers={"User-Agent": USER_AGENT}, follow_redirects=False, timeout=None
            )
        return self._client

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 (mapped to RequestTimeout)
    ) -> HttpResponse:
        client = self._ensure_client()
        with anyio.move_on_after(timeout) as scope:
            try:
                request = client.build_request(
                    method, url, headers=dict(headers or {}), content=body
                )
                response = await client.send(request, stream=True)
                try:
                    data = await self._read(response)
                finally:
                    with anyio.CancelScope(shield=True):
                        await response.aclose()
                return HttpResponse(response.status_code, dict(response.headers), data)
            except httpx.TimeoutException as exc:
                raise RequestTimeout(f"{method} {url}: timed out") from exc
            except httpx.NetworkError as exc:
                raise ConnectFailed(f"{method} {url}: {exc or type(exc).__name__}") from exc
            except (httpx.RemoteProtocolError, httpx.DecodingError) as exc:
                raise BadResponse(f"{method} {url}: bad response: {exc}") from exc
            except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
                raise HttpError(f"{method} {url}: {exc}") from exc
        assert scope.cancelled_caught
        raise RequestTimeout(f"{method} {url}: no answer within {timeout:g} s")

    async def _read(self, response: httpx.Response) -> bytes:
        length = response.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body:
            raise BadResponse(f"response body of {length} bytes is too large")
        chunks = bytearray()
        async for chunk in response.aiter_bytes():
            chunks += chunk
            if len(chunks) > self._max_body:
                raise BadResponse(f"response body exceeds {self._max_body} bytes")
        return bytes(chunks)

    async def aclose(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            with anyio.CancelScope(shield=True):
                await client.aclose()

    async def __aenter__(self) -> HttpxClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
