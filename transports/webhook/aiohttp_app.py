"""The receiver as an ``aiohttp.web`` application (asyncio only)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from transports.webhook.answers import WebhookAnswer
from transports.webhook.endpoints import Endpoint, Endpoints
from transports.webhook.receiver import WebhookReceiver

DEFAULT_PATH = "/webhook"


def _response(answer: WebhookAnswer) -> web.Response:
    return web.Response(status=answer.status, body=answer.body or None, headers=answer.headers)


def make_handler(
    receiver: WebhookReceiver,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp request handler; mount it on any route of your own app."""

    async def handle(request: web.Request) -> web.StreamResponse:
        refusal = receiver.precheck(request.content_length)
        if refusal is not None:
            return _response(refusal)
        # Read by hand rather than with request.read(): the limit is the
        # receiver's, and the body must stay exactly the bytes that were sent.
        body = bytearray()
        async for chunk in request.content.iter_any():
            body += chunk
            if len(body) > receiver.max_body_size:
                return _response(receiver.too_large())
        answer = await receiver.handle(request.headers.items(), bytes(body), request.remote)
        return _response(answer)

    return handle


def _get(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def get(request: web.Request) -> web.StreamResponse:
        del request
        return _response(await endpoint())

    return get


def add_webhook_route(
    app: web.Application, receiver: WebhookReceiver, path: str = DEFAULT_PATH
) -> None:
    """Serve the receiver at ``POST path`` of an existing application."""
    app.router.add_post(path, make_handler(receiver))


def webhook_app(
    receiver: WebhookReceiver,
    path: str = DEFAULT_PATH,
    *,
    close_receiver: bool = True,
    endpoints: Endpoints | None = None,
) -> web.Application:
    """A standalone application (or a sub-app for ``app.add_subapp``).

    With ``close_receiver`` the receiver's store is closed on cleanup.
    ``endpoints`` are served at ``GET path`` (health, readiness, metrics).
    """
    app = web.Application()
    add_webhook_route(app, receiver, path)
    for where, endpoint in (endpoints or {}).items():
        app.router.add_get(where, _get(endpoint))
    if close_receiver:

        async def close(_: web.Application) -> None:
            await receiver.aclose()

        app.on_cleanup.append(close)
    return app
