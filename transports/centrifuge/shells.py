"""Which WebSocket shell runs: aiohttp on asyncio, httpx-ws elsewhere (trio).

Kept above both shells and the protocol they implement (``socket.py``), so
that the choice imports the shells and nothing imports back: no cycle.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from transports.backend import on_asyncio
from transports.centrifuge.socket import MakeSocketFactory, SocketFactory, WebSocket


def default_socket_factory() -> SocketFactory:
    """aiohttp on asyncio, httpx-ws elsewhere (trio): decided by the running loop."""
    if on_asyncio():
        from transports.centrifuge.aiohttp_socket import AiohttpSocketFactory

        return AiohttpSocketFactory()
    from transports.centrifuge.httpx_socket import HttpxSocketFactory

    return HttpxSocketFactory()


@asynccontextmanager
async def open_socket(
    url: str, *, open_timeout: float = 10.0, factory: MakeSocketFactory | None = None
) -> AsyncIterator[WebSocket]:
    """One socket with a private client, for one-off use and tests.

    Long-lived code should enter a :class:`SocketFactory` once and open many
    sockets from it (a pool does), so connections share one client.
    """
    async with (factory or default_socket_factory)() as sockets:  # noqa: SIM117 - two lifetimes
        async with sockets.connect(url, open_timeout=open_timeout) as ws:
            yield ws
