"""The webhook receiver served for real on loopback: aiohttp.web (asyncio) and ASGI (hypercorn)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from support_webhook import KINDS, serve_receiver

from orderfsm.errors import JournalClosed
from orderfsm.testing import RecordingSink
from transports.http import HttpResponse, open_http_client
from transports.webhook import (
    XSOLLA_NETWORKS,
    OrderPaid,
    WebhookReceiver,
    asgi_app,
    authorization_header,
    health_endpoints,
    serve_aiohttp_app,
    serve_asgi_app,
)

SECRET = "s3cret"


def order_paid(order_id: int) -> bytes:
    # Odd but valid formatting: the signature covers these exact bytes.
    head = '{ "notification_type" :"order_paid",\n "order": {"id": '
    tail = ', "comment": "caf\\u00e9 \u00e9"}, "items": [] }'
    return (head + str(order_id) + tail).encode()


async def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> HttpResponse:
    async with open_http_client() as http:
        return await http.request("POST", url, headers or {}, body, timeout=5)


async def post_signed(url: str, body: bytes) -> HttpResponse:
    return await post(url, body, {"Authorization": authorization_header(body, SECRET)})


class Handled:
    def __init__(self) -> None:
        self.orders: list[int] = []

    async def __call__(self, notification: object) -> None:
        assert isinstance(notification, OrderPaid)
        self.orders.append(notification.order_id)


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
async def test_good_duplicate_and_badly_signed_posts(kind: str) -> None:
    handled = Handled()
    sink = RecordingSink()
    receiver = WebhookReceiver(SECRET, handled, sink=sink)
    async with serve_receiver(receiver, kind) as url:
        body = order_paid(501)
        first = await post_signed(url, body)
        again = await post_signed(url, body)
        forged = await post(url, body, {"Authorization": "Signature " + "a" * 40})
        unsigned = await post(url, body)
        junk = b"{not json"
        garbage = await post_signed(url, junk)
    assert (first.status, first.body) == (204, b"")
    assert (again.status, again.body) == (204, b"")
    for refused in (forged, unsigned):
        assert refused.status == 400
        assert refused.headers["content-type"].startswith("application/json")
        assert json.loads(refused.body)["error"]["code"] == "INVALID_SIGNATURE"
    assert garbage.status == 400
    assert json.loads(garbage.body)["error"]["code"] == "INVALID_PARAMETER"
    assert handled.orders == [501]
    assert [(o.order_id, o.status) for o in sink.observations] == [(501, "paid")] * 2


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("made", ["generator", "async_generator"])
async def test_a_handler_that_hands_back_a_generator_answers_500_not_204(
    kind: str, made: str
) -> None:
    """A lambda around a generator function passes the receiver's checks (it is no
    generator function itself), and calling it runs none of the body: 500, so Xsolla
    delivers again, never a stored 204 that granted nothing."""
    granted: list[int] = []

    def grant(notification: object) -> Iterator[None]:
        granted.append(1)
        yield

    async def async_grant(notification: object) -> AsyncIterator[None]:
        granted.append(2)
        yield

    wrapped = grant if made == "generator" else async_grant
    receiver = WebhookReceiver(SECRET, lambda notification: wrapped(notification))
    async with serve_receiver(receiver, kind) as url:
        answers = [(await post_signed(url, order_paid(601))).status for _ in range(2)]
    assert answers == [500, 500] and granted == []


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
async def test_a_body_over_the_limit_is_413(kind: str) -> None:
    handled = Handled()
    receiver = WebhookReceiver(SECRET, handled, max_body_size=64)
    async with serve_receiver(receiver, kind) as url:
        body = order_paid(502) + b" " * 100
        declared = await post_signed(url, body)
        streamed = await post_chunked(url, body)
    assert declared.status == 413
    assert json.loads(declared.body)["error"]["code"] == "INVALID_PARAMETER"
    assert streamed == 413
    assert handled.orders == []


async def post_chunked(url: str, body: bytes) -> int:
    """POST without Content-Length, so only counting the bytes can enforce the limit."""
    host_port, path = url.removeprefix("http://").split("/", 1)
    host, port = host_port.split(":")
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 16]), body[i : i + 16]) for i in range(0, len(body), 16)
    )
    head = (
        f"POST /{path} HTTP/1.1\r\nHost: {host_port}\r\nTransfer-Encoding: chunked\r\n"
        f"Authorization: {authorization_header(body, SECRET)}\r\nConnection: close\r\n\r\n"
    ).encode()
    async with await anyio.connect_tcp(host, int(port)) as stream:
        await stream.send(head + chunks + b"0\r\n\r\n")
        reader = BufferedByteReceiveStream(stream)
        status_line = await reader.receive_until(b"\r\n", 1024)
    return int(status_line.split()[1])


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
async def test_the_allow_list_applies_to_the_real_peer(kind: str) -> None:
    body = order_paid(503)
    xsolla_only = WebhookReceiver(SECRET, Handled(), allowed_networks=XSOLLA_NETWORKS)
    async with serve_receiver(xsolla_only, kind) as url:
        refused = await post_signed(url, body)
    assert refused.status == 503  # never a 4xx: that could refund the player at once
    assert json.loads(refused.body)["error"]["code"] == "INVALID_CLIENT_IP"
    loopback = WebhookReceiver(SECRET, Handled(), allowed_networks=["127.0.0.0/8"])
    async with serve_receiver(loopback, kind) as url:
        assert (await post_signed(url, body)).status == 204


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
async def test_a_post_to_a_wrong_path_is_503_so_xsolla_retries_and_nothing_runs(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A webhook URL mistyped in Publisher Account (a trailing slash, a capital, the
    root) is our misconfiguration: a 404 for it is never retried, and with automatic
    refunds on refunds every ``order_paid`` at once.  A 503 is retried while the URL is
    mended, and the same delivery on the right path is then handled.  A signed one is
    logged as an error naming the path; GET and HEAD stay 404 (browsers, scanners)."""
    handled = Handled()
    receiver = WebhookReceiver(SECRET, handled)
    body = order_paid(507)
    endpoints = health_endpoints(receiver)
    wrong = ["/webhook/", "/Webhook", "/", "/healthz"]  # /healthz: GET only
    async with serve_receiver(receiver, kind, endpoints) as url, open_http_client() as http:
        base = url.removesuffix("/webhook")
        with caplog.at_level(logging.INFO, logger="orderfsm.webhook"):
            answers = [await post_signed(base + path, body) for path in wrong]
            unsigned = await post(base + "/Webhook", body)
        looked = [(await http.request(m, base + "/Webhook")).status for m in ("GET", "HEAD")]
        not_post = (await http.request("GET", url)).status
        assert handled.orders == []
        right = await post_signed(url, body)
    assert [a.status for a in [*answers, unsigned]] == [503] * 5
    for answer in answers:
        error = json.loads(answer.body)["error"]
        assert error["code"] == "WRONG_PATH" and "POST /webhook" in error["message"]
    assert looked == [404, 404] and not_post == 405
    assert right.status == 204 and handled.orders == [507]
    logged = [
        (r.levelname, getattr(r, "path", None), getattr(r, "signed", None))
        for r in caplog.records
        if getattr(r, "event", None) == "webhook.wrong_path"
    ]
    assert logged == [("ERROR", path, True) for path in wrong] + [("INFO", "/Webhook", False)]


@pytest.mark.anyio
async def test_the_asgi_app_closes_the_journal_on_shutdown(tmp_path: Path) -> None:
    receiver = WebhookReceiver(SECRET, Handled(), store=tmp_path / "journal.sqlite3")
    async with serve_asgi_app(asgi_app(receiver)) as base:
        assert (await post_signed(base + "/webhook", order_paid(504))).status == 204
    with pytest.raises(JournalClosed):
        await receiver.journal.deliveries()


@pytest.mark.anyio
async def test_the_aiohttp_receiver_mounts_in_an_existing_app(anyio_backend: str) -> None:
    if anyio_backend != "asyncio":
        pytest.skip("aiohttp.web serves on asyncio only")
    from aiohttp import web

    from transports.webhook import add_webhook_route, webhook_app

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    handled = Handled()
    app = web.Application()
    app.router.add_get("/", hello)
    add_webhook_route(app, WebhookReceiver(SECRET, handled), "/hooks/xsolla")
    app.add_subapp("/sub", webhook_app(WebhookReceiver(SECRET, handled)))
    async with serve_aiohttp_app(app) as base, open_http_client() as http:
        assert (await http.request("GET", base + "/")).body == b"hello"
        assert (await post_signed(base + "/hooks/xsolla", order_paid(505))).status == 204
        assert (await post_signed(base + "/sub/webhook", order_paid(506))).status == 204
        # Below the sub-app's prefix a wrong path is the receiver's (503, naming the
        # mounted path); the rest of the application answers as it always did.
        mistyped = await post_signed(base + "/sub/webhook/", order_paid(508))
        elsewhere = await post_signed(base + "/hooks/other", order_paid(509))
    assert mistyped.status == 503 and b"POST /sub/webhook" in mistyped.body
    assert elsewhere.status == 404
    assert handled.orders == [505, 506]
