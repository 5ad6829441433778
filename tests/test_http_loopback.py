"""The HTTP clients (aiohttp on asyncio, httpx on trio) against a scriptable loopback server."""

from __future__ import annotations

import json

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream
from support_http import Handler, Request, free_port_url, http_response, loopback_server

from orderfsm.errors import ConnectionLost, ProtocolError, ServiceUnavailable, TransportError
from transports.http import (
    BadResponse,
    ConnectFailed,
    HttpClient,
    HttpError,
    RequestTimeout,
    open_http_client,
)
from transports.http.aiohttp_client import AiohttpClient
from transports.http.httpx_client import HttpxClient

# --- the clients ------------------------------------------------------------


def answer_with(data: bytes | None, delay: float = 0.0) -> Handler:
    async def handler(request: Request) -> bytes | None:
        del request
        await anyio.sleep(delay)
        return data

    return handler


@pytest.mark.anyio
async def test_open_http_client_picks_the_library_of_the_running_loop(anyio_backend: str) -> None:
    async with open_http_client() as http:
        expected = AiohttpClient if anyio_backend == "asyncio" else HttpxClient
        assert type(http) is expected


@pytest.mark.anyio
async def test_request_returns_any_status_with_headers_and_body() -> None:
    async def echo(request: Request) -> bytes:
        payload = {
            "method": request.method,
            "target": request.target,
            "body": request.body.decode(),
        }
        payload["auth"] = request.headers.get("authorization", "")
        return http_response(418, payload, {"X-Thing": "yes", "Retry-After": "3"})

    async with loopback_server(echo) as server, open_http_client() as http:
        answer = await http.request(
            "POST", server.url + "/a/b?c=1", {"Authorization": "Bearer t"}, b"hello"
        )
    assert answer.status == 418
    assert answer.headers["x-thing"] == "yes"
    assert answer.headers["retry-after"] == "3"
    assert json.loads(answer.body) == {
        "method": "POST",
        "target": "/a/b?c=1",
        "body": "hello",
        "auth": "Bearer t",
    }


@pytest.mark.anyio
async def test_one_client_serves_many_concurrent_requests() -> None:
    statuses: list[int] = []
    slow_ok = answer_with(http_response(200, "ok"), 0.05)
    async with loopback_server(slow_ok) as server, open_http_client() as http:

        async def one() -> None:
            statuses.append((await http.request("GET", server.url)).status)

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one)
    assert statuses == [200] * 10
    assert len(server.requests) == 10


@pytest.mark.anyio
async def test_no_answer_in_time_is_a_request_timeout() -> None:
    never = answer_with(http_response(200), delay=5)
    async with loopback_server(never) as server, open_http_client() as http:
        start = anyio.current_time()
        with pytest.raises(RequestTimeout) as caught:
            await http.request("GET", server.url, timeout=0.2)
        assert anyio.current_time() - start < 4  # the timeout, not the 5 s answer
    assert isinstance(caught.value, ServiceUnavailable)


@pytest.mark.anyio
async def test_a_body_that_stops_midway_times_out_too() -> None:
    # The headers arrive in time, the rest of the body never does.
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(SocketAttribute.local_port)

    async def serve(stream: SocketStream) -> None:
        async with stream:
            await stream.receive()
            await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-some")
            await anyio.sleep(5)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        async with open_http_client() as http:
            with pytest.raises(RequestTimeout):
                await http.request("GET", f"http://127.0.0.1:{port}/", timeout=0.3)
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_connection_refused_is_connect_failed() -> None:
    url = await free_port_url()
    async with open_http_client() as http:
        with pytest.raises(ConnectFailed) as caught:
            await http.request("GET", url, timeout=2)
    assert isinstance(caught.value, ConnectionLost)


@pytest.mark.anyio
async def test_hanging_up_without_an_answer_is_a_typed_error() -> None:
    async with loopback_server(answer_with(None)) as server, open_http_client() as http:
        with pytest.raises((ConnectFailed, BadResponse)):
            await http.request("GET", server.url, timeout=2)


@pytest.mark.anyio
async def test_hanging_up_mid_body_is_a_typed_error() -> None:
    truncated = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\nonly-some"
    async with loopback_server(answer_with(truncated)) as server, open_http_client() as http:
        with pytest.raises((ConnectFailed, BadResponse)):
            await http.request("GET", server.url, timeout=2)


@pytest.mark.anyio
async def test_garbage_instead_of_http_is_a_typed_error() -> None:
    garbage = answer_with(b"SSH-2.0-OpenSSH\r\n\r\n")
    async with loopback_server(garbage) as server, open_http_client() as http:
        with pytest.raises(HttpError) as caught:
            await http.request("GET", server.url, timeout=2)
    assert isinstance(caught.value, (ProtocolError, ConnectionLost))


@pytest.mark.anyio
async def test_a_body_over_the_limit_is_refused(anyio_backend: str) -> None:
    big = http_response(200, b"x" * 5000)
    async with loopback_server(answer_with(big)) as server:
        http: HttpClient = (
            AiohttpClient(max_body=1000)
            if anyio_backend == "asyncio"
            else HttpxClient(max_body=1000)
        )
        async with http:
            with pytest.raises(BadResponse):
                await http.request("GET", server.url)


@pytest.mark.anyio
async def test_redirects_are_returned_not_followed() -> None:
    redirect = http_response(302, b"", {"Location": "/elsewhere"})
    async with loopback_server(answer_with(redirect)) as server, open_http_client() as http:
        answer = await http.request("GET", server.url)
    assert answer.status == 302
    assert len(server.requests) == 1


@pytest.mark.anyio
async def test_a_bad_url_is_a_typed_error() -> None:
    async with open_http_client() as http:
        with pytest.raises(TransportError):
            await http.request("GET", "not a url at all", timeout=1)


@pytest.mark.anyio
async def test_a_closed_client_refuses_requests() -> None:
    async with loopback_server(answer_with(http_response(200))) as server:
        http = open_http_client()
        assert (await http.request("GET", server.url)).status == 200
        await http.aclose()
        await http.aclose()  # closing twice is harmless
        with pytest.raises(HttpError):
            await http.request("GET", server.url)


@pytest.mark.anyio
async def test_cancelling_a_request_leaves_the_client_usable() -> None:
    calls = 0
    arrived = anyio.Event()

    async def slow_first(request: Request) -> bytes:
        nonlocal calls
        del request
        calls += 1
        if calls == 1:
            arrived.set()
            await anyio.sleep(5)
        return http_response(200, "second")

    async with loopback_server(slow_first) as server, open_http_client() as http:
        async with anyio.create_task_group() as tg:
            tg.start_soon(http.request, "GET", server.url)
            with anyio.fail_after(10):
                await arrived.wait()  # in flight at the server: now cancel it
            tg.cancel_scope.cancel()
        answer = await http.request("GET", server.url, timeout=10)
    assert answer.body == b"second" and calls == 2
