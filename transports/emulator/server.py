"""Assemble the aiohttp application and serve it until told to stop.

Used by :class:`~transports.emulator.emulator.Emulator` (on its own thread)
and by ``orderfsm emulator`` (in the main thread); both run it on asyncio,
the only loop aiohttp supports.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from aiohttp import web

from transports.emulator import control, event_api, rest
from transports.emulator.services import Config, Services

SHUTDOWN_GRACE = 3.0


async def serve(config: Config, *, ready: Callable[[str], None], stop: anyio.Event) -> None:
    """Serve until ``stop`` is set (or ``POST /control/shutdown``); call ``ready(base_url)``."""
    app = web.Application(middlewares=[control.errors_as_json])
    runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
    services: Services | None = None
    try:
        async with anyio.create_task_group() as background:
            services = Services(config, background)

            def request_shutdown() -> None:
                async def later() -> None:
                    await anyio.sleep(0.05)  # let the control answer go out first
                    stop.set()

                services.spawn(later)

            app.add_routes(rest.routes(services))
            app.add_routes(event_api.routes(services))
            app.add_routes(control.routes(services, request_shutdown))
            app.add_routes([web.get("/connection/websocket", services.hub.handle)])
            try:
                await runner.setup()
                site = web.TCPSite(runner, config.host, config.port)
                await site.start()
                host, port = runner.addresses[0][:2]
                services.base_url = f"http://{_url_host(str(host))}:{port}"
                ready(services.base_url)
                await stop.wait()
            finally:
                with anyio.CancelScope(shield=True):
                    await services.hub.shutdown(SHUTDOWN_GRACE)
                background.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            if services is not None:
                await services.webhooks.aclose()
            await runner.cleanup()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
