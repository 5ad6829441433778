"""The receiver as a raw ASGI 3 application, for trio-capable servers such as hypercorn.

No framework: one path, ``POST`` only, lifespan handled so the store is
closed on shutdown.  A ``POST`` to any other path is answered 503, not the
404 Xsolla would not retry (:mod:`~transports.webhook.wrong_path`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from transports.webhook.answers import WebhookAnswer, error_answer
from transports.webhook.endpoints import Endpoints
from transports.webhook.receiver import WebhookReceiver
from transports.webhook.wrong_path import wrong_path

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

NOT_FOUND = error_answer(404, "NOT_FOUND", "no webhook endpoint here")
METHOD_NOT_ALLOWED = error_answer(405, "METHOD_NOT_ALLOWED", "use POST")


class WebhookASGIApp:
    def __init__(
        self,
        receiver: WebhookReceiver,
        path: str = "/webhook",
        *,
        close_receiver: bool = True,
        endpoints: Endpoints | None = None,
    ) -> None:
        self.receiver = receiver
        self.path = path
        self.close_receiver = close_receiver
        self.endpoints = dict(endpoints or {})
        """``GET`` paths beside the webhook (health, readiness, metrics)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        # Other scope types (websocket) are not served: returning refuses them.

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.close_receiver:
                    await self.receiver.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = _local_path(scope)
        endpoint = self.endpoints.get(path)
        if endpoint is not None and scope["method"] in ("GET", "HEAD"):
            await reply(send, await endpoint())
            return
        if path != self.path:
            if scope["method"] == "POST":
                await self._wrong_path(scope, receive, send, path)
            else:
                await reply(send, NOT_FOUND)
            return
        if scope["method"] != "POST":
            await reply(send, METHOD_NOT_ALLOWED, (("Allow", "POST"),))
            return
        headers = _headers(scope)
        refusal = self.receiver.precheck(_content_length(headers))
        if refusal is not None:
            await reply(send, refusal)
            return
        body = await _read(receive, self.receiver.max_body_size)
        if body is None:
            return
        if len(body) > self.receiver.max_body_size:
            await reply(send, self.receiver.too_large())
            return
        answer = await self.receiver.handle(headers, body, _peer(scope))
        await reply(send, answer)

    async def _wrong_path(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        """A POST to another path than the webhook's: 503, not the 404 Xsolla would not
        retry (:mod:`~transports.webhook.wrong_path`)."""
        headers = _headers(scope)
        length = _content_length(headers)
        limit = self.receiver.max_body_size
        body = None  # unread when too large: it cannot count as signed
        if length is None or length <= limit:
            body = await _read(receive, limit)
            if body is None:
                return  # the client left
            if len(body) > limit:
                body = None
        root = str(scope.get("root_path") or "")
        answer = wrong_path(
            self.receiver, headers, body, root + path, root + self.path, _peer(scope)
        )
        await reply(send, answer)


def _local_path(scope: Scope) -> str:
    """The path below the app's mount point: servers and frameworks differ on whether
    ``path`` still holds ``root_path`` (Starlette's ``Mount`` keeps it there)."""
    path = str(scope["path"])
    root = str(scope.get("root_path") or "")
    if root and path.startswith(root) and path[len(root) :].startswith("/"):
        return path[len(root) :]
    return path


def _headers(scope: Scope) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", ())]


def _peer(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


async def _read(receive: Receive, limit: int) -> bytes | None:
    """The body, read to its end or just past ``limit`` (the caller checks which);
    None when the client left first."""
    body = bytearray()
    more = True
    while more and len(body) <= limit:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        more = bool(message.get("more_body", False))
    return bytes(body)


def _content_length(headers: list[tuple[str, str]]) -> int | None:
    values = [v for k, v in headers if k.lower() == "content-length"]
    if len(values) == 1 and values[0].strip().isdigit():
        return int(values[0])
    return None


async def reply(send: Send, answer: WebhookAnswer, extra: tuple[tuple[str, str], ...] = ()) -> None:
    """Send ``answer`` (and ``extra`` headers) as the whole ASGI response."""
    headers = [(k.lower().encode(), v.encode()) for k, v in (*answer.headers, *extra)]
    headers.append((b"content-length", str(len(answer.body)).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


def asgi_app(
    receiver: WebhookReceiver,
    path: str = "/webhook",
    *,
    close_receiver: bool = True,
    endpoints: Endpoints | None = None,
) -> WebhookASGIApp:
    return WebhookASGIApp(receiver, path, close_receiver=close_receiver, endpoints=endpoints)
