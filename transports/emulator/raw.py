"""A frame-level WebSocket client for poking the emulator in tests.

It does no protocol work on its own (no automatic pong, no reconnect), so a
test can send exactly the frames it wants, malformed ones included, and see
exactly what the server answers.  Built on httpx-ws, which is anyio-native and
therefore runs on asyncio and trio alike (install ``orderfsm[trio]``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import attrs
import httpx
from httpx_ws import (
    AsyncWebSocketSession,
    WebSocketDisconnect,
    WebSocketNetworkError,
    aconnect_ws,
)

from orderfsm.errors import ConnectionLost


@attrs.frozen
class Closed:
    """How the server ended the connection: close ``code`` and ``reason``, or a TCP drop."""

    code: int | None
    reason: str
    dropped: bool = False


class RawSocket:
    def __init__(self, ws: AsyncWebSocketSession) -> None:
        self._ws = ws

    async def send_text(self, text: str) -> None:
        await self._ws.send_text(text)

    async def send_bytes(self, data: bytes) -> None:
        await self._ws.send_bytes(data)

    async def send(self, *commands: Mapping[str, Any]) -> None:
        """Send commands batched in one frame, newline separated."""
        await self.send_text("\n".join(json.dumps(c, separators=(",", ":")) for c in commands))

    async def receive(self) -> list[dict[str, Any]]:
        """The objects of the next text frame (raises ``Disconnected`` on close)."""
        try:
            text = await self._ws.receive_text()
        except WebSocketDisconnect as exc:
            # answer the close frame at once, as a well-behaved client does
            await self._ws.close(exc.code, exc.reason)
            raise Disconnected(Closed(exc.code, exc.reason or "")) from None
        except WebSocketNetworkError:
            raise Disconnected(Closed(None, "", dropped=True)) from None
        return [json.loads(line) for line in text.split("\n") if line]

    async def receive_one(self) -> dict[str, Any]:
        objects = await self.receive()
        if len(objects) != 1:
            raise AssertionError(f"expected one object in the frame, got {objects!r}")
        return objects[0]

    async def closed(self) -> Closed:
        """Read (and discard) frames until the server closes; return how it closed."""
        while True:
            try:
                await self.receive()
            except Disconnected as exc:
                return exc.closed

    async def connect(
        self,
        token: str,
        project_id: int,
        *,
        subs: Mapping[str, Any] | None = None,
        command_id: int = 1,
        **data: Any,
    ) -> dict[str, Any]:
        """Send Xsolla's connect command and return the server's reply object."""
        body: dict[str, Any] = {"data": {"auth": token, "project_id": project_id, **data}}
        if subs is not None:
            body["subs"] = dict(subs)
        await self.send({"id": command_id, "connect": body})
        return await self.receive_one()


class Disconnected(ConnectionLost):
    def __init__(self, closed: Closed) -> None:
        super().__init__(closed)
        self.closed = closed


@asynccontextmanager
async def raw_socket(url: str, subprotocols: list[str] | None = None) -> AsyncIterator[RawSocket]:
    async with httpx.AsyncClient() as client:
        session: AbstractAsyncContextManager[AsyncWebSocketSession] = aconnect_ws(
            url,
            client,
            keepalive_ping_interval_seconds=None,
            max_message_size_bytes=2**22,
            subprotocols=subprotocols,
        )
        async with session as ws:
            yield RawSocket(ws)
