"""Serve the webhook receiver on the running event loop, and say where.

aiohttp.web serves it on asyncio; under trio, where aiohttp cannot run,
hypercorn serves the ASGI app (``pip install 'orderfsm[trio]'``).  The
command line, the soak and the tests all serve it through here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Literal

import anyio

from transports.backend import on_asyncio
from transports.webhook.asgi import asgi_app
from transports.webhook.endpoints import Endpoints
from transports.webhook.receiver import WebhookReceiver

Server = Literal["auto", "aiohttp", "asgi"]
LISTEN_TIMEOUT = 5.0


@asynccontextmanager
async def serve_receiver(
    receiver: WebhookReceiver,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    path: str = "/webhook",
    server: Server = "auto",
    endpoints: Endpoints | None = None,
) -> AsyncIterator[str]:
    """Serve ``receiver`` at ``path`` until the block ends; yields the URL to give Xsolla.

    ``port=0`` picks a free port.  ``server="auto"`` is aiohttp.web on asyncio
    and the ASGI app under hypercorn otherwise.  ``endpoints`` are served at
    ``GET`` beside it (:func:`~transports.webhook.endpoints.health_endpoints`,
    a metrics endpoint).
    """
    if server == "aiohttp" or (server == "auto" and on_asyncio()):
        from transports.webhook.aiohttp_app import webhook_app

        app = webhook_app(receiver, path, endpoints=endpoints)
        async with serve_aiohttp_app(app, host, port) as base:
            yield base + path
    else:
        asgi = asgi_app(receiver, path, endpoints=endpoints)
        async with serve_asgi_app(asgi, host, port) as base:
            yield base + path


@asynccontextmanager
async def serve_aiohttp_app(app: Any, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve an aiohttp.web application (asyncio only); yields ``http://host:port``."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        yield _base_url(bound_host, bound_port)
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()


@asynccontextmanager
async def serve_asgi_app(app: Any, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve an ASGI application with hypercorn, on asyncio or trio; yields ``http://host:port``."""
    try:
        from hypercorn.config import Config
    except ImportError as exc:
        raise RuntimeError("serving ASGI needs hypercorn: pip install 'orderfsm[trio]'") from exc
    if on_asyncio():
        from hypercorn.asyncio import serve
    else:
        from hypercorn.trio import serve

    # Bound here, so the port is known before hypercorn starts; it adopts a duplicate.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, port))
        bound_port = sock.getsockname()[1]
        config = Config()
        config.bind = [f"fd://{os.dup(sock.fileno())}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(serve, app, config, shutdown_trigger=stop.wait))
        await _wait_listening(host, bound_port)
        try:
            yield _base_url(host, bound_port)
        finally:
            stop.set()


async def _wait_listening(host: str, port: int) -> None:
    with anyio.fail_after(LISTEN_TIMEOUT):
        while True:
            try:
                stream = await anyio.connect_tcp(host, port)
            except OSError:
                await anyio.sleep(0.01)
            else:
                await stream.aclose()
                return


def _base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
