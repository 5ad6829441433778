"""The two WebSocket shells behave the same: frames, close codes, failures to open.

aiohttp runs on asyncio only; httpx-ws runs on both, and is tested on both.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream

from orderfsm.errors import ConnectionLost
from orderfsm.interface import Health
from orderfsm.testing import RecordingSink
from transports.centrifuge import (
    CentrifugeProtocolError,
    EngineConfig,
    SocketClosed,
    SocketOpenFailed,
    WebSocketPool,
    open_socket,
)
from transports.centrifuge.aiohttp_socket import AiohttpSocketFactory
from transports.centrifuge.httpx_socket import READ_CHUNK, HttpxSocket, HttpxSocketFactory
from transports.centrifuge.shells import default_socket_factory
from transports.centrifuge.socket import (
    CLOSE_TIMEOUT,
    MAX_MESSAGE_SIZE,
    MakeSocketFactory,
    WebSocket,
)
from transports.emulator import Emulator, User

pytestmark = pytest.mark.anyio

SHELLS = [
    pytest.param(("asyncio", AiohttpSocketFactory), id="asyncio-aiohttp"),
    pytest.param(("asyncio", HttpxSocketFactory), id="asyncio-httpx"),
    pytest.param(("trio", HttpxSocketFactory), id="trio-httpx"),
]


@pytest.fixture(params=SHELLS)
def backend_and_shell(request: pytest.FixtureRequest) -> tuple[str, MakeSocketFactory]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def anyio_backend(backend_and_shell: tuple[str, MakeSocketFactory]) -> str:
    """Overrides conftest's: asyncio twice (one per shell) and trio."""
    return backend_and_shell[0]


@pytest.fixture
def shell(backend_and_shell: tuple[str, MakeSocketFactory]) -> MakeSocketFactory:
    return backend_and_shell[1]


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(ping_interval=0, seed=2) as emulator:
        yield emulator


async def frame_of(ws: WebSocket) -> str | bytes:
    """The next frame, read as the driver reads it."""
    return ws.data(await ws.receive())


async def connect(ws: WebSocket, user: User, project_id: int) -> dict[str, object]:
    command = {"id": 1, "connect": {"data": {"auth": user.token, "project_id": project_id}}}
    await ws.send(json.dumps(command))
    reply = json.loads(await frame_of(ws))
    assert isinstance(reply, dict) and "connect" in reply, reply
    return reply


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_the_default_shell_follows_the_event_loop(
    anyio_backend: str, shell: MakeSocketFactory
) -> None:
    expected = AiohttpSocketFactory if anyio_backend == "asyncio" else HttpxSocketFactory
    assert type(default_socket_factory()) is expected


async def test_frames_go_both_ways_and_the_close_code_is_read(
    emu: Emulator, shell: MakeSocketFactory
) -> None:
    user = await emu.create_user("alice")
    async with open_socket(emu.ws_url, factory=shell) as ws:
        await connect(ws, user, emu.project_id)
        await emu.publish_raw(user, {"order_id": 7, "status": "paid"})
        push = json.loads(await frame_of(ws))
        assert push["push"]["pub"]["data"] == {"order_id": 7, "status": "paid"}
        await emu.close_connections(user, 3011, "force reconnect")
        with pytest.raises(SocketClosed) as caught:
            await frame_of(ws)
        assert (caught.value.code, caught.value.reason) == (3011, "force reconnect")
        with pytest.raises(SocketClosed):
            await ws.send("{}")


async def test_a_big_frame_arrives_whole(emu: Emulator, shell: MakeSocketFactory) -> None:
    user = await emu.create_user("alice")
    blob = "x" * 600_000  # several reads of the httpx-ws chunk; above aiohttp's 64 KiB buffer
    async with open_socket(emu.ws_url, factory=shell) as ws:
        await connect(ws, user, emu.project_id)
        await emu.publish_raw(user, {"blob": blob})
        push = json.loads(await frame_of(ws))
        assert push["push"]["pub"]["data"]["blob"] == blob


class _ReadSizes:
    """The network stream under an httpx-ws session, noting each read's size."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.sizes: list[int] = []

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109 (httpcore's signature)
        self.sizes.append(max_bytes)
        return await self._stream.read(max_bytes, timeout)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_httpx_reads_small_chunks_of_a_big_message(emu: Emulator) -> None:
    """httpx-ws 0.10 reads as much as its message limit (16 MiB here) at a time,
    and ``recv(n)`` allocates ``n`` bytes first: 15 us a frame against 1."""
    user = await emu.create_user("alice")
    blob = "y" * 300_000
    async with open_socket(emu.ws_url, factory=HttpxSocketFactory) as ws:
        assert isinstance(ws, HttpxSocket)
        session = ws._session
        await connect(ws, user, emu.project_id)
        reads = _ReadSizes(session.stream)
        session.stream = reads  # type: ignore[assignment]  # from the next read on
        await emu.publish_raw(user, {"first": 1})
        await frame_of(ws)
        await emu.publish_raw(user, {"blob": blob})
        assert json.loads(await frame_of(ws))["push"]["pub"]["data"]["blob"] == blob
    assert reads.sizes and max(reads.sizes) <= READ_CHUNK < MAX_MESSAGE_SIZE


async def test_a_dropped_connection_has_no_close_code(
    emu: Emulator, shell: MakeSocketFactory
) -> None:
    user = await emu.create_user("alice")
    async with open_socket(emu.ws_url, factory=shell) as ws:
        await connect(ws, user, emu.project_id)
        await emu.drop_connections(user)
        with pytest.raises(SocketClosed) as caught:
            await frame_of(ws)
        assert caught.value.code is None


async def test_leaving_the_context_closes_normally(emu: Emulator, shell: MakeSocketFactory) -> None:
    user = await emu.create_user("alice")
    async with open_socket(emu.ws_url, factory=shell) as ws:
        await connect(ws, user, emu.project_id)
    with anyio.fail_after(5):
        while (conns := await emu.connections(user))[0].state != "closed":  # noqa: ASYNC110 (remote)
            await anyio.sleep(0.02)
    assert conns[0].close_code == 1000


async def test_closing_a_stalled_peer_is_bounded(emu: Emulator, shell: MakeSocketFactory) -> None:
    user = await emu.create_user("alice")
    async with open_socket(emu.ws_url, factory=shell) as ws:
        await connect(ws, user, emu.project_id)
        await emu.stall_connections(user)
        started = anyio.current_time()
    # bounded by the close timeout (a hang would not be), plus room for a loaded machine
    assert anyio.current_time() - started <= CLOSE_TIMEOUT + 3.0


async def test_a_refused_handshake_is_an_open_failure_with_the_status(
    emu: Emulator, shell: MakeSocketFactory
) -> None:
    url = emu.ws_url.replace("/connection/websocket", "/no/such/path")
    with pytest.raises(SocketOpenFailed) as caught:
        async with open_socket(url, factory=shell):
            pass
    assert caught.value.status == 404 and caught.value.code is None


async def test_nothing_listening_is_an_open_failure(shell: MakeSocketFactory) -> None:
    with pytest.raises(SocketOpenFailed) as caught:
        async with open_socket(f"ws://127.0.0.1:{free_port()}/ws", factory=shell):
            pass
    assert caught.value.status is None


GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455


@asynccontextmanager
async def fake_server(after_handshake: bytes | None) -> AsyncIterator[str]:
    """A TCP server that completes the opening handshake, then writes
    ``after_handshake`` verbatim (``None``: never answers the handshake)."""

    async def handle(stream: SocketStream) -> None:
        # a client may hang up at any point (the pool closing mid-reconnect): not a test failure
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
            await _handshake_then_send(stream)

    async def _handshake_then_send(stream: SocketStream) -> None:
        async with stream:
            request = b""
            while b"\r\n\r\n" not in request:
                request += await stream.receive()
            if after_handshake is None:
                await anyio.sleep_forever()
                return
            found = re.search(rb"(?i)sec-websocket-key:\s*(\S+)", request)
            assert found is not None
            accept = base64.b64encode(hashlib.sha1(found.group(1) + GUID).digest())
            await stream.send(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            await stream.send(after_handshake)
            with (
                anyio.move_on_after(5),
                contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError),
            ):
                while True:  # read until the client hangs up
                    await stream.receive()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield f"ws://127.0.0.1:{listener.extra(SocketAttribute.local_port)}/ws"
        tg.cancel_scope.cancel()


async def test_a_handshake_that_never_completes_times_out(shell: MakeSocketFactory) -> None:
    async with fake_server(None) as url:
        with anyio.fail_after(3), pytest.raises(SocketOpenFailed):
            async with open_socket(url, open_timeout=0.3, factory=shell):
                pass


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(b"\x83\x00", id="reserved-opcode"),
        pytest.param(b"\x81\x02\xff\xfe", id="text-not-utf8"),
        pytest.param(b"\x01\x01a\x01\x01b", id="fragment-after-fragment"),
    ],
)
async def test_a_malformed_frame_ends_the_socket_cleanly(
    shell: MakeSocketFactory, frame: bytes
) -> None:
    async with fake_server(frame) as url, open_socket(url, factory=shell) as ws:
        with anyio.fail_after(3), pytest.raises(SocketClosed) as caught:
            await frame_of(ws)
    assert caught.value.code in (None, 1002, 1007)


def text_frame(text: str) -> bytes:
    payload = text.encode()
    assert len(payload) < 126
    return bytes([0x81, len(payload)]) + payload


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        pytest.param(text_frame('{"id":1,"connect":'), CentrifugeProtocolError, id="bad-json"),
        pytest.param(text_frame('{"id":1,"connect":[]}'), CentrifugeProtocolError, id="bad-shape"),
        pytest.param(b"\x83\x00", ConnectionLost, id="bad-frame"),
    ],
)
async def test_the_pool_turns_bad_input_into_a_typed_degraded_report(
    shell: MakeSocketFactory, frame: bytes, error: type[Exception]
) -> None:
    config = EngineConfig(project_id=1, min_reconnect_delay=0.05, max_reconnect_delay=0.1)
    async with fake_server(frame) as url:
        async with WebSocketPool(
            project_id=1, url=url, config=config, socket_factory=shell
        ) as pool:
            sink = RecordingSink()
            pool.attach(1, sink, token="t", user_id="u")
            with anyio.fail_after(10):  # a hang guard, generous for a loaded machine
                # it keeps trying, and nothing crashes
                while pool.connections()[0].generation < 2:  # noqa: ASYNC110 (a snapshot)
                    await anyio.sleep(0.01)
        degraded = [r for r in sink.reports if r.health is Health.DEGRADED]
        assert len(degraded) == 1 and isinstance(degraded[0].error, error)
        assert sink.reports[-1].health is Health.STOPPED
