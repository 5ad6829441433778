"""Serve the webhook receiver on the running event loop, and say where.

aiohttp.web serves it on asyncio; under trio, where aiohttp cannot run,
hypercorn serves the ASGI app (``pip install 'orderfsm[trio]'``).  The
command line, the soak and the tests all serve it through here.

Either stops cleanly: the deliveries in flight finish and record their
answers, for up to the journal's lease (how long a claim's owner may work
before another instance may take the notification over), while new ones are
refused in a way Xsolla retries (a closed port, or 503).  A delivery cut
after its handler's effect and before its answer is recorded would run the
plain handler again on Xsolla's retry.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio

from orderfsm.journal import JournalSettings
from transports.backend import on_asyncio
from transports.webhook.asgi import asgi_app
from transports.webhook.draining import Draining
from transports.webhook.endpoints import Endpoints
from transports.webhook.receiver import WebhookReceiver

Server = Literal["auto", "aiohttp", "asgi"]
LISTEN_TIMEOUT = 5.0
DEFAULT_DRAIN = JournalSettings().lease
"""How long a stop waits for the requests in flight when not told: a default lease
(aiohttp's own default too).  ``serve_receiver`` waits its journal's lease."""
AFTER_DRAIN = 1.0
"""hypercorn's grace once the drain is over: only refusals are left to write, and
requests past the drain's limit, which it cancels."""
STOP_MARGIN = 1.0
"""Beyond hypercorn's grace, how long its stop may take before its task is cancelled."""


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
    a metrics endpoint).  Leaving the block waits for the deliveries in flight,
    up to the journal's lease, and refuses new ones meanwhile.
    """
    drain = receiver.journal.settings.lease
    if server == "aiohttp" or (server == "auto" and on_asyncio()):
        from transports.webhook.aiohttp_app import webhook_app

        app = webhook_app(receiver, path, endpoints=endpoints)
        async with serve_aiohttp_app(app, host, port, drain=drain) as base:
            yield base + path
    else:
        asgi = asgi_app(receiver, path, endpoints=endpoints)
        async with serve_asgi_app(asgi, host, port, drain=drain) as base:
            yield base + path


@asynccontextmanager
async def serve_aiohttp_app(
    app: Any, host: str = "127.0.0.1", port: int = 0, *, drain: float = DEFAULT_DRAIN
) -> AsyncIterator[str]:
    """Serve an aiohttp.web application (asyncio only); yields ``http://host:port``.

    Leaving the block closes the port and waits up to ``drain`` seconds for the
    requests in flight."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None, shutdown_timeout=drain)
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
async def serve_asgi_app(
    app: Any, host: str = "127.0.0.1", port: int = 0, *, drain: float = DEFAULT_DRAIN
) -> AsyncIterator[str]:
    """Serve an ASGI application with hypercorn, on asyncio or trio; yields ``http://host:port``.

    Leaving the block answers new requests 503 and waits up to ``drain`` seconds
    for those in flight, before hypercorn stops (its own grace is short)."""
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
    config.graceful_timeout = AFTER_DRAIN
    draining = Draining(app)
    stop = anyio.Event()
    # The server runs shielded: a block left by cancellation (anyio's usual stop) must
    # not cut the requests in flight before the drain; it ends the server after it.
    server = anyio.CancelScope(shield=True)
    stopped = anyio.Event()

    async def run_server() -> None:
        try:
            with server:
                app_for_hypercorn: Any = draining  # hypercorn's types name its own scopes
                await serve(app_for_hypercorn, config, shutdown_trigger=stop.wait)
        finally:
            stopped.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_server)
        try:
            await _wait_listening(host, bound_port)
            yield _base_url(host, bound_port)
        finally:
            try:
                with anyio.CancelScope(shield=True):  # as aiohttp's clean-up, even cancelled
                    await draining.drain(drain)
                    stop.set()
                    with anyio.move_on_after(AFTER_DRAIN + STOP_MARGIN):
                        await stopped.wait()
            finally:
                # Past its grace, or the drain itself interrupted (trio delivers a second
                # Ctrl-C there): what is left is cut, else the shielded server runs on and
                # the task group waits for it forever.
                server.cancel()


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
