"""The receiver as an ``aiohttp.web`` application (asyncio only)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from transports.webhook.answers import WebhookAnswer
from transports.webhook.endpoints import Endpoint, Endpoints
from transports.webhook.receiver import WebhookReceiver
from transports.webhook.wrong_path import wrong_path

DEFAULT_PATH = "/webhook"


def _response(answer: WebhookAnswer) -> web.Response:
    return web.Response(status=answer.status, body=answer.body or None, headers=answer.headers)


async def _read(request: web.Request, limit: int) -> bytes | None:
    """The body, or None once it passes ``limit`` (read no further).

    By hand rather than with request.read(): the limit is the receiver's, and
    the body must stay exactly the bytes that were sent."""
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def make_handler(
    receiver: WebhookReceiver,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp request handler; mount it on any route of your own app."""

    async def handle(request: web.Request) -> web.StreamResponse:
        refusal = receiver.precheck(request.content_length)
        if refusal is not None:
            return _response(refusal)
        body = await _read(request, receiver.max_body_size)
        if body is None:
            return _response(receiver.too_large())
        answer = await receiver.handle(request.headers.items(), body, request.remote)
        return _response(answer)

    return handle


def _wrong_path(receiver: WebhookReceiver, webhook: web.AbstractResource) -> Middleware:
    """A POST that no route of the application takes: 503 (see
    :mod:`~transports.webhook.wrong_path`), where aiohttp would answer 404 (or 405
    at a ``GET`` endpoint's path)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "POST" or request.match_info.http_exception is None:
            return await handler(request)
        length = request.content_length
        limit = receiver.max_body_size
        body = None if length is not None and length > limit else await _read(request, limit)
        # Read now: a sub-application's mount adds its prefix to the resource.
        expected = webhook.canonical
        headers = request.headers.items()
        return _response(
            wrong_path(receiver, headers, body, request.path, expected, request.remote)
        )

    return middleware


def _get(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def get(request: web.Request) -> web.StreamResponse:
        del request
        return _response(await endpoint())

    return get


def add_webhook_route(
    app: web.Application, receiver: WebhookReceiver, path: str = DEFAULT_PATH
) -> web.AbstractRoute:
    """Serve the receiver at ``POST path`` of an existing application (its other
    paths stay the application's own)."""
    return app.router.add_post(path, make_handler(receiver))


def webhook_app(
    receiver: WebhookReceiver,
    path: str = DEFAULT_PATH,
    *,
    close_receiver: bool = True,
    endpoints: Endpoints | None = None,
) -> web.Application:
    """A standalone application (or a sub-app for ``app.add_subapp``).

    With ``close_receiver`` the receiver's store is closed on cleanup.
    ``endpoints`` are served at ``GET path`` (health, readiness, metrics).  A
    ``POST`` to any other path of it is answered 503, not 404, which Xsolla
    would not retry (:mod:`~transports.webhook.wrong_path`).
    """
    app = web.Application()
    webhook = add_webhook_route(app, receiver, path).resource
    assert webhook is not None  # a route added by path has its resource
    app.middlewares.append(_wrong_path(receiver, webhook))
    for where, endpoint in (endpoints or {}).items():
        app.router.add_get(where, _get(endpoint))
    if close_receiver:

        async def close(_: web.Application) -> None:
            await receiver.aclose()

        app.on_cleanup.append(close)
    return app
