"""A scriptable HTTP/1.1 server on loopback, for the HTTP clients' and pollers' tests.

The server is plain anyio sockets, so it runs on asyncio and trio alike and
can misbehave in ways a real framework will not (stall, hang up mid-body,
send broken HTTP): the cases the emulator cannot produce.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress

import anyio
import attrs
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream


@attrs.frozen
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


Handler = Callable[[Request], Awaitable[bytes | None]]
"""Returns the raw bytes to send back (then the connection closes), or None to hang up."""


def http_response(
    status: int,
    body: bytes | str | Mapping[str, object] = b"",
    headers: dict[str, str] | None = None,
) -> bytes:
    if isinstance(body, Mapping):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class LoopbackServer:
    def __init__(self, handler: Handler, url: str) -> None:
        self.handler = handler
        self.url = url
        self.requests: list[Request] = []

    async def _serve(self, stream: SocketStream) -> None:
        async with stream:
            reader = BufferedByteReceiveStream(stream)
            try:
                head = await reader.receive_until(b"\r\n\r\n", 65536)
            except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError):
                return
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            body = await reader.receive_exactly(length) if length else b""
            request = Request(method, target, headers, body)
            self.requests.append(request)
            answer = await self.handler(request)
            if answer is not None:
                with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await stream.send(answer)


@asynccontextmanager
async def loopback_server(handler: Handler) -> AsyncIterator[LoopbackServer]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(SocketAttribute.local_port)
    server = LoopbackServer(handler, f"http://127.0.0.1:{port}")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server._serve)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


async def free_port_url() -> str:
    """A loopback URL nobody listens on (the port was just released)."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(SocketAttribute.local_port)
    await listener.aclose()
    return f"http://127.0.0.1:{port}"
