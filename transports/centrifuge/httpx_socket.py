"""The anyio-native shell: WebSockets from one shared ``httpx.AsyncClient`` via httpx-ws.

It runs on any anyio backend, so it is what trio uses (and asyncio can use it
too, which is how the tests prove both shells behave the same).

Choices that matter for Centrifuge:

* no subprotocol is offered (``subprotocols=None``, so no empty header either);
* httpx-ws's keepalive ping is off.  Centrifuge's application-level pings and
  the engine's dead-connection timer (``ping + max_server_ping_delay``)
  already detect a dead network, with a bound the configuration controls; a
  second detector would only add traffic and a second, differently reported
  way to fail.  Protocol-level pings from the server are still answered by
  httpx-ws's reader;
* message size: ``max_message_size_bytes`` is
  :data:`~transports.centrifuge.socket.MAX_MESSAGE_SIZE`, as on aiohttp.  Up to
  httpx-ws 0.9 it is only the read size (messages of any size are
  reassembled); from 0.10 it is also the largest message (a bigger one closes
  the socket, 1009), and a fresh install took 0.10, so a 600 KB frame needs it.
  Each read asks for at most :data:`READ_CHUNK` (:class:`ChunkedSession`):
  ``socket.recv(n)`` allocates ``n`` bytes before it reads, and 16 MiB per
  frame cost 15 us against 1 (measured, loopback, 200-byte frames);
* the client has no connection limit: each WebSocket holds a connection of
  the pool for its whole life, and httpx's default limit of 100 would stall
  user 101.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType

import anyio
import httpcore
import httpx
import wsproto.events
import wsproto.utilities
from httpx_ws import (
    AsyncWebSocketSession,
    HTTPXWSException,
    WebSocketDisconnect,
    WebSocketNetworkError,
    WebSocketUpgradeError,
    aconnect_ws,
)

from transports.centrifuge.socket import (
    CLOSE_TIMEOUT,
    MAX_MESSAGE_SIZE,
    SocketClosed,
    SocketOpenFailed,
    WebSocket,
    leaf_exceptions,
)

READ_CHUNK = 2**16


class ChunkedSession(AsyncWebSocketSession):
    """httpx-ws's session, reading at most :data:`READ_CHUNK` bytes at a time
    whatever the message limit.  ``_read_stream`` is httpx-ws's own (0.9 and
    0.10); should a release drop it, this override is never called and reads
    are as large as the limit: slower, never wrong."""

    async def _read_stream(self, max_bytes: int) -> bytes:
        return await super()._read_stream(min(max_bytes, READ_CHUNK))


_LIBRARY_FAILURES = (
    HTTPXWSException,
    httpx.HTTPError,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    wsproto.utilities.ProtocolError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    OSError,
    SocketClosed,
)
"""What httpx-ws's background reader may die of; it surfaces inside an
exception group from the session, and means the socket is gone."""


class HttpxSocket:
    __slots__ = ("_session",)

    def __init__(self, session: AsyncWebSocketSession) -> None:
        self._session = session

    async def send(self, text: str) -> None:
        try:
            await self._session.send_text(text)
        except (HTTPXWSException, wsproto.utilities.LocalProtocolError, OSError) as exc:
            # LocalProtocolError: wsproto refuses to send once the connection is closing
            raise SocketClosed(None, f"send failed: {exc!r}") from exc

    @staticmethod
    def data(message: object) -> str | bytes:
        return message  # type: ignore[return-value]  # receive gives the frame itself

    async def receive(self) -> str | bytes:
        session = self._session
        try:
            while True:
                event = await session.receive()
                if isinstance(event, wsproto.events.TextMessage):
                    return event.data
                if isinstance(event, wsproto.events.BytesMessage):
                    return bytes(event.data)
        except WebSocketDisconnect as exc:
            raise SocketClosed(exc.code, exc.reason or "") from None
        except WebSocketNetworkError:
            raise SocketClosed(None, "connection lost without a close frame") from None


class HttpxSocketFactory:
    """Enter it inside the running loop (any anyio backend); it owns one ``httpx.AsyncClient``."""

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> HttpxSocketFactory:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
        self._client = httpx.AsyncClient(limits=limits)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        if client is not None:
            with anyio.CancelScope(shield=True):
                await client.aclose()

    @asynccontextmanager
    async def connect(self, url: str, *, open_timeout: float) -> AsyncIterator[WebSocket]:
        if self._client is None:
            raise RuntimeError("enter the HttpxSocketFactory before connecting")
        opened = False
        try:
            opening: AbstractAsyncContextManager[AsyncWebSocketSession] = aconnect_ws(
                url,
                self._client,
                subprotocols=None,
                keepalive_ping_interval_seconds=None,
                max_message_size_bytes=MAX_MESSAGE_SIZE,
                session_class=ChunkedSession,
                timeout=httpx.Timeout(open_timeout, pool=None),
            )
            async with opening as session:
                opened = True
                try:
                    yield HttpxSocket(session)
                finally:
                    # httpx-ws closes again on exit, shielded and unbounded; ours
                    # goes first and is bounded, so a stalled peer cannot hold us.
                    with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                        await session.close()
        except WebSocketUpgradeError as exc:
            status = exc.response.status_code
            raise SocketOpenFailed(f"handshake refused: {status}", status) from exc
        except Exception as exc:
            leaves = leaf_exceptions(exc)
            if not all(isinstance(leaf, _LIBRARY_FAILURES) for leaf in leaves):
                raise
            if not opened:
                raise SocketOpenFailed(f"cannot connect: {leaves[0]!r}") from exc
            closed = [leaf for leaf in leaves if isinstance(leaf, SocketClosed)]
            if closed:
                raise closed[0] from None
            raise SocketClosed(None, f"websocket failed: {leaves[0]!r}") from exc
