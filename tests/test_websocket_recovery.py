"""The WebSocket pool when things go wrong: closes, drops, stalls, bad tokens, gaps.

Runs like ``test_websocket_pool.py``: asyncio with aiohttp, asyncio with
httpx-ws, and trio.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from orderfsm.errors import ConnectionLost, TokenRejected
from orderfsm.interface import Health, HealthReport
from orderfsm.testing import RecordingSink
from transports.centrifuge import EngineConfig, TokenUnavailable, WebSocketPool
from transports.centrifuge.connection import TOKEN_ATTEMPTS
from transports.centrifuge.httpx_socket import HttpxSocketFactory
from transports.centrifuge.socket import MakeSocketFactory
from transports.emulator import Emulator

pytestmark = pytest.mark.anyio

SHELLS = [
    pytest.param(("asyncio", None), id="asyncio-aiohttp"),
    pytest.param(("asyncio", HttpxSocketFactory), id="asyncio-httpx"),
    pytest.param(("trio", None), id="trio-httpx"),
]
FAST = {
    "min_reconnect_delay": 0.05,
    "max_reconnect_delay": 0.2,
    "connect_timeout": 2.0,
    "request_timeout": 2.0,
}
PING = 1.0
PING_SLACK = 1.0
"""The client's ``max_server_ping_delay`` in the stall test: one late ping from
the emulator's thread on a loaded machine must not pass for a stall."""


@pytest.fixture(params=SHELLS)
def backend_and_shell(request: pytest.FixtureRequest) -> tuple[str, MakeSocketFactory | None]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def anyio_backend(backend_and_shell: tuple[str, MakeSocketFactory | None]) -> str:
    """Overrides conftest's: asyncio twice (one per shell) and trio."""
    return backend_and_shell[0]


@pytest.fixture
def shell(backend_and_shell: tuple[str, MakeSocketFactory | None]) -> MakeSocketFactory | None:
    return backend_and_shell[1]


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(ping_interval=PING, pong_timeout=10.0, seed=4) as emulator:
        yield emulator


@asynccontextmanager
async def open_pool(
    url: str, project_id: int, shell: MakeSocketFactory | None, **config: Any
) -> AsyncIterator[WebSocketPool]:
    settings = EngineConfig(project_id=project_id, **{**FAST, **config})
    async with WebSocketPool(
        project_id=project_id, url=url, config=settings, socket_factory=shell
    ) as pool:
        yield pool


class GatedTokens:
    """Answers the first call at once; later calls wait for ``gate`` (when set up)."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.calls = 0
        self.gate: anyio.Event | None = None

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls > 1 and self.gate is not None:
            await self.gate.wait()
        return self.token


def statuses(sink: RecordingSink) -> list[str]:
    return [o.status.value for o in sink.observations]


def reports_of(sink: RecordingSink, health: Health) -> list[HealthReport]:
    return [r for r in sink.reports if r.health is health]


async def until_closed(pool: WebSocketPool) -> None:
    """Until the only connection's driver task has returned (its engine is closed).

    A failed connection stays in the pool to tell newcomers; once its engine is
    closed, nothing can open another socket for it, so what the emulator saw
    by then is all it will ever see.
    """
    with anyio.fail_after(10):
        while pool.connections()[0].state != "closed":  # noqa: ASYNC110 (a snapshot)
            await anyio.sleep(0.01)


def healthy_again(sink: RecordingSink) -> bool:
    """Healthy after having been degraded."""
    health = [r.health for r in sink.reports]
    return Health.DEGRADED in health and health[-1] is Health.HEALTHY


async def test_a_close_mid_order_reconnects_and_recovers_the_missed_status(
    emu: Emulator, shell: MakeSocketFactory | None
) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    tokens = GatedTokens(user.token)
    async with open_pool(emu.ws_url, emu.project_id, shell) as pool:
        sink = RecordingSink()
        pool.attach(order, sink, token=tokens, user_id="alice")
        await sink.wait_for(
            lambda s: statuses(s) == ["new"] and s.reports[-1].health.value == "healthy"
        )
        tokens.gate = anyio.Event()
        assert await emu.close_connections(user, 3011, "force reconnect") == 1
        await sink.wait_for(lambda s: bool(reports_of(s, Health.DEGRADED)))
        await emu.set_status(order, "paid")  # while the client cannot reconnect
        assert statuses(sink) == ["new"]
        tokens.gate.set()
        await sink.wait_for(lambda s: statuses(s) == ["new", "paid"] and healthy_again(s))
        [degraded] = reports_of(sink, Health.DEGRADED)
        assert degraded.reason.startswith("closed 3011 force reconnect")
        assert isinstance(degraded.error, ConnectionLost)
        assert tokens.calls == 2  # a fresh token for the new connection
        old, new = await emu.connections(user)
        assert old.close_code == 3011 and old.closed_at is not None
        assert new.opened_at >= old.closed_at  # never two sockets at once
        info = pool.connections()[0]
        assert (info.sockets_opened, info.generation) == (2, 2)


async def test_a_dropped_socket_reconnects_and_recovers(
    emu: Emulator, shell: MakeSocketFactory | None
) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    tokens = GatedTokens(user.token)
    async with open_pool(emu.ws_url, emu.project_id, shell) as pool:
        sink = RecordingSink()
        pool.attach(order, sink, token=tokens, user_id="alice")
        await sink.wait_for(lambda s: bool(reports_of(s, Health.HEALTHY)))
        tokens.gate = anyio.Event()
        assert await emu.drop_connections(user) == 1
        await sink.wait_for(lambda s: bool(reports_of(s, Health.DEGRADED)))
        await emu.set_status(order, "paid")
        tokens.gate.set()
        await sink.wait_for(lambda s: statuses(s) == ["new", "paid"] and healthy_again(s))
        [degraded] = reports_of(sink, Health.DEGRADED)
        assert degraded.reason.startswith("connection lost")
        assert len(await emu.connections(user)) == 2


async def test_a_silent_stall_is_detected_within_ping_plus_slack_and_recovered(
    emu: Emulator, shell: MakeSocketFactory | None
) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    async with open_pool(
        emu.ws_url, emu.project_id, shell, max_server_ping_delay=PING_SLACK
    ) as pool:
        sink = RecordingSink()
        pool.attach(order, sink, token=user.token, user_id="alice")
        await sink.wait_for(lambda s: bool(reports_of(s, Health.HEALTHY)))
        stalled_at = anyio.current_time()
        assert await emu.stall_connections(user) == 1
        await emu.set_status(order, "paid")  # goes nowhere: the network is "dead"
        await sink.wait_for(lambda s: bool(reports_of(s, Health.DEGRADED)), timeout=PING + 10)
        [degraded] = reports_of(sink, Health.DEGRADED)
        assert degraded.reason.startswith("no ping")
        # the engine re-arms on every frame, so detection takes at most ping + slack
        # after the last frame, plus scheduling noise (up to 3 s allowed, for a loaded
        # machine); the default slack (10 s) or no detection would take far longer
        assert degraded.at - stalled_at <= PING + PING_SLACK + 3.0
        await sink.wait_for(lambda s: statuses(s) == ["new", "paid"] and healthy_again(s))
        assert len(await emu.connections(user)) == 2


async def test_invalid_token_fails_for_good_without_a_reconnect_loop(
    emu: Emulator, shell: MakeSocketFactory | None
) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    tokens = GatedTokens(user.token)
    async with open_pool(emu.ws_url, emu.project_id, shell) as pool:
        sink = RecordingSink()
        pool.attach(order, sink, token=tokens, user_id="alice")
        await sink.wait_for(lambda s: bool(reports_of(s, Health.HEALTHY)))
        await emu.revoke_token(user.token)
        await emu.close_connections(user, 3000)  # the reconnect meets 3500
        await sink.wait_for(lambda s: bool(reports_of(s, Health.FAILED)))
        [failed] = reports_of(sink, Health.FAILED)
        assert isinstance(failed.error, TokenRejected)
        assert "3500" in failed.reason
        await until_closed(pool)  # the driver has ended: no reconnect can follow
        rejected = await emu.connections()  # the refused one never became alice's
        assert [c.close_code for c in rejected] == [3000, 3500]
        assert tokens.calls == 2 and pool.connections()[0].sockets_opened == 2
        # a FAILED connection tells newcomers at once
        late = RecordingSink()
        pool.attach(order, late, token=tokens, user_id="alice")
        assert [r.health for r in late.reports] == [Health.FAILED]
        assert isinstance(late.reports[0].error, TokenRejected)


async def test_a_terminal_close_code_stops_without_reconnecting(
    emu: Emulator, shell: MakeSocketFactory | None
) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    async with open_pool(emu.ws_url, emu.project_id, shell) as pool:
        sink = RecordingSink()
        pool.attach(order, sink, token=user.token, user_id="alice")
        await sink.wait_for(lambda s: bool(reports_of(s, Health.HEALTHY)))
        await emu.close_connections(user, 3503, "force disconnect")
        await sink.wait_for(lambda s: bool(reports_of(s, Health.FAILED)))
        [failed] = reports_of(sink, Health.FAILED)
        assert failed.reason == "closed 3503 force disconnect"
        assert isinstance(failed.error, ConnectionLost)
        await until_closed(pool)  # the driver has ended: no reconnect can follow
        assert pool.connections()[0].sockets_opened == 1
        assert len(await emu.connections(user)) == 1


async def test_a_lost_stream_is_reported_as_a_gap_then_healthy(
    emu: Emulator, shell: MakeSocketFactory | None
) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    async with open_pool(emu.ws_url, emu.project_id, shell) as pool:
        sink = RecordingSink()
        pool.attach(order, sink, token=user.token, user_id="alice")
        await sink.wait_for(lambda s: bool(reports_of(s, Health.HEALTHY)))
        await emu.new_epoch(user)  # history gone, offsets restart
        await emu.close_connections(user, 3010, "insufficient state")
        await sink.wait_for(lambda s: any(r.gap for r in s.reports) and healthy_again(s))
        [gap] = [r for r in sink.reports if r.gap]
        assert gap.health is Health.DEGRADED and "epoch" in gap.reason
        await emu.set_status(order, "paid")  # offset 1 of the new epoch still gets through
        await sink.wait_for(lambda s: statuses(s) == ["new", "paid"])


async def test_a_flaky_token_provider_is_retried(
    emu: Emulator, shell: MakeSocketFactory | None
) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise OSError("token service down")
        return user.token

    async with open_pool(emu.ws_url, emu.project_id, shell) as pool:
        sink = RecordingSink()
        pool.attach(order, sink, token=flaky, user_id="alice")
        await sink.wait_for(lambda s: bool(reports_of(s, Health.HEALTHY)))
        [degraded] = reports_of(sink, Health.DEGRADED)  # one report: health changed once
        assert "token provider failed" in degraded.reason
        assert isinstance(degraded.error, TokenUnavailable)
        assert calls == 3
        assert statuses(sink) == ["new"]


async def test_a_token_provider_that_keeps_failing_ends_in_failed(
    emu: Emulator, shell: MakeSocketFactory | None
) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    calls = 0

    async def broken() -> str:
        nonlocal calls
        calls += 1
        return None  # type: ignore[return-value]  # a provider with a bug

    async with open_pool(emu.ws_url, emu.project_id, shell) as pool:
        sink = RecordingSink()
        pool.attach(order, sink, token=broken, user_id="alice")
        await sink.wait_for(lambda s: bool(reports_of(s, Health.FAILED)))
        [failed] = reports_of(sink, Health.FAILED)
        assert isinstance(failed.error, TokenUnavailable)
        assert calls == TOKEN_ATTEMPTS
        assert await emu.connections(user) == []


async def test_a_token_handed_over_as_bytes_stays_out_of_health_reports_and_logs(
    emu: Emulator, shell: MakeSocketFactory | None, caplog: pytest.LogCaptureFixture
) -> None:
    """The player's token returned in the wrong type (bytes here) is refused, and what
    is said about it (health reports, logs, error trackers) never contains it."""
    user = await emu.create_user("alice")
    order = await emu.create_order(user)

    async def as_bytes() -> str:
        return user.token.encode()  # type: ignore[return-value]  # the mistake under test

    caplog.set_level(logging.DEBUG)
    async with open_pool(emu.ws_url, emu.project_id, shell) as pool:
        sink = RecordingSink()
        pool.attach(order, sink, token=as_bytes, user_id="alice")
        await sink.wait_for(lambda s: bool(reports_of(s, Health.FAILED)))
    errors = [r.error for r in sink.reports if r.error is not None]
    said = [caplog.text] + [r.reason for r in sink.reports]
    said += [f"{e!r} {e.__cause__!r}" for e in errors]
    assert "bytes" in said[-1]
    assert [text for text in said if user.token in text] == []


async def test_an_unreachable_server_is_degraded_and_retried_until_stopped(
    shell: MakeSocketFactory | None,
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"ws://127.0.0.1:{port}/connection/websocket"
    async with open_pool(url, 1, shell) as pool:
        sink = RecordingSink()
        pool.attach(1, sink, token="t", user_id="nobody")
        await sink.wait_for(lambda s: bool(reports_of(s, Health.DEGRADED)))
        assert "cannot connect" in reports_of(sink, Health.DEGRADED)[0].reason
        with anyio.fail_after(5):
            while pool.connections()[0].generation < 3:  # noqa: ASYNC110 (a snapshot)
                await anyio.sleep(0.02)
        assert pool.connections()[0].sockets_opened == 0
    assert sink.reports[-1].health is Health.STOPPED
