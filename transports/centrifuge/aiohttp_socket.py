"""The asyncio shell: WebSockets from one shared ``aiohttp.ClientSession``.

Choices that matter for Centrifuge:

* no subprotocol is offered (JSON is the server default only then);
* aiohttp's own heartbeat is off: Centrifuge pings at the application level
  and the engine's dead-connection timer watches them; protocol-level pings
  from the server are still answered (``autoping``);
* frames up to :data:`~transports.centrifuge.socket.MAX_MESSAGE_SIZE`
  (recovery replies can be large);
* aiohttp's own waits for a closing handshake are bounded by
  :data:`~transports.centrifuge.socket.CLOSE_TIMEOUT` (needs aiohttp >= 3.11
  for ``ClientWSTimeout``);
* the connector has no connection limit: an open WebSocket holds its
  connection, and aiohttp's default limit of 100 would stall user 101.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import TracebackType

import aiohttp
import anyio

from transports.centrifuge.socket import (
    CLOSE_TIMEOUT,
    MAX_MESSAGE_SIZE,
    SocketClosed,
    SocketOpenFailed,
    WebSocket,
)

_DATA = (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY)
_WS_TIMEOUT = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT)
"""aiohttp also closes by itself (after a close frame or a bad frame) and then waits
for the peer's answer; bound that wait like ours."""


class AiohttpSocket:
    __slots__ = ("_ws", "receive")

    def __init__(self, ws: aiohttp.ClientWebSocketResponse[bool]) -> None:
        self._ws = ws
        self.receive: Callable[[], Awaitable[object]] = ws.receive
        """aiohttp's own: the driver awaits it with no coroutine of ours around it."""

    async def send(self, text: str) -> None:
        try:
            await self._ws.send_str(text)
        except (aiohttp.ClientError, OSError, RuntimeError) as exc:
            # RuntimeError: older aiohttp versions say "closing transport" with it
            raise SocketClosed(None, f"send failed: {exc!r}") from exc

    @staticmethod
    def data(message: object) -> str | bytes:
        msg: aiohttp.WSMessage = message  # type: ignore[assignment]  # what receive gave
        if msg.type in _DATA:
            data: str | bytes = msg.data
            return data
        if msg.type is aiohttp.WSMsgType.CLOSE:
            raise SocketClosed(msg.data, msg.extra or "")
        if msg.type is aiohttp.WSMsgType.ERROR:
            # A frame aiohttp refused (too big, malformed) carries the close code it sent.
            code = getattr(msg.data, "code", None)
            raise SocketClosed(code if isinstance(code, int) else None, f"error: {msg.data!r}")
        # CLOSED / CLOSING without a close frame from the peer: the TCP connection went away.
        raise SocketClosed(None, "connection lost without a close frame")


class AiohttpSocketFactory:
    """Enter it inside the asyncio loop; it owns one ``ClientSession``."""

    def __init__(self, *, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self._max_message_size = max_message_size
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AiohttpSocketFactory:
        connector = aiohttp.TCPConnector(limit=0)
        self._session = aiohttp.ClientSession(connector=connector)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session, self._session = self._session, None
        if session is not None:
            with anyio.CancelScope(shield=True):
                await session.close()

    @asynccontextmanager
    async def connect(self, url: str, *, open_timeout: float) -> AsyncIterator[WebSocket]:
        if self._session is None:
            raise RuntimeError("enter the AiohttpSocketFactory before connecting")
        try:
            with anyio.fail_after(open_timeout):
                ws = await self._session.ws_connect(
                    url,
                    autoping=True,
                    autoclose=True,
                    heartbeat=None,
                    max_msg_size=self._max_message_size,
                    timeout=_WS_TIMEOUT,
                )
        except aiohttp.WSServerHandshakeError as exc:
            raise SocketOpenFailed(
                f"handshake refused: {exc.status} {exc.message}", exc.status
            ) from exc
        except TimeoutError as exc:
            raise SocketOpenFailed(f"no connection within {open_timeout} s") from exc
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            # ValueError: a URL aiohttp cannot use
            raise SocketOpenFailed(f"cannot connect: {exc!r}") from exc
        try:
            yield AiohttpSocket(ws)
        finally:
            # Cancelling close() makes aiohttp abort the connection, which is
            # what a peer that does not answer the close frame deserves.
            with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await ws.close()
