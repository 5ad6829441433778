"""The WebSocket pool against the emulator: delivery, sharing, lifetimes.

Each scenario runs three ways: asyncio with the default shell (aiohttp),
asyncio with the httpx-ws shell, and trio (httpx-ws), so both shells provably
pass the same tests.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from orderfsm.core import Advanced, Observation, OrderBook, Status
from orderfsm.interface import WEBSOCKET, Health, HealthReport
from orderfsm.testing import RecordingSink, eventually
from transports.centrifuge import EngineConfig, PoolClosed, WebSocketPool
from transports.centrifuge.events import OrderPublication
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
    # Pings every second keep ping/pong in play; a pong may take 10 s (the
    # emulator's default), so a late one on a loaded machine is not a 3012 close.
    with Emulator(ping_interval=1.0, pong_timeout=10.0, seed=3) as emulator:
        yield emulator


@asynccontextmanager
async def open_pool(
    emu: Emulator, shell: MakeSocketFactory | None, linger: float = 0.0, **config: Any
) -> AsyncIterator[WebSocketPool]:
    """``linger=0`` unless a test is about lingering: a socket closes with its last order."""
    settings = EngineConfig(project_id=emu.project_id, **{**FAST, **config})
    async with WebSocketPool(
        project_id=emu.project_id,
        url=emu.ws_url,
        config=settings,
        socket_factory=shell,
        linger=linger,
    ) as pool:
        yield pool


class Tokens:
    """A token provider that counts its calls."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        return self.token


def statuses(sink: RecordingSink) -> list[Status]:
    return [o.status for o in sink.observations]


def healths(sink: RecordingSink) -> list[Health]:
    return [r.health for r in sink.reports]


def has(*wanted: str) -> Any:
    return lambda sink: statuses(sink)[: len(wanted)] == list(wanted)


async def wait_closed(emu: Emulator, user: str, count: int) -> None:
    """Until the emulator has seen ``count`` connections of ``user``, all closed."""
    with anyio.fail_after(5):
        while True:
            conns = await emu.connections(user)
            if len(conns) == count and all(c.state == "closed" for c in conns):
                return
            await anyio.sleep(0.02)


async def test_statuses_arrive_with_positions_and_health(
    emu: Emulator, shell: MakeSocketFactory | None
) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    async with open_pool(emu, shell) as pool:
        sink = RecordingSink()
        pool.attach(order, sink, token=Tokens(user.token), user_id="alice")
        assert healths(sink) == [Health.CONNECTING]  # reported at once, synchronously
        await sink.wait_for(lambda s: Health.HEALTHY in healths(s))
        await emu.set_status(order, "paid")
        await emu.set_status(order, "done")
        await emu.set_status(order, "canceled")  # a refund after delivery
        await sink.wait_for(has("new", "paid", "done", "canceled"))
        pubs = await emu.publications(user)
        assert [(o.position.offset, o.position.epoch) for o in sink.observations if o.position] == [
            (p.offset, p.epoch) for p in pubs
        ]
        assert all(o.source == WEBSOCKET and o.order_id == order for o in sink.observations)
        assert sink.observations[-1].raw == {"order_id": order, "status": "canceled"}
        assert healths(sink) == [Health.CONNECTING, Health.HEALTHY]
        # the final status (only a refund is) ended the only attachment: the socket closes
        await wait_closed(emu, "alice", 1)
        assert pool.connections() == []
    assert statuses(sink) == ["new", "paid", "done", "canceled"]


async def test_history_delivers_statuses_published_before_connect(
    emu: Emulator, shell: MakeSocketFactory | None
) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    await emu.set_status(order, "paid")
    async with open_pool(emu, shell) as pool:
        sink = RecordingSink()
        pool.attach(order, sink, token=Tokens(user.token), user_id="alice")
        await sink.wait_for(lambda s: Health.HEALTHY in healths(s))
        # caught up means history was read: both statuses are already here
        assert statuses(sink) == ["new", "paid"]
        assert [r.health for r in sink.reports] == [Health.CONNECTING, Health.HEALTHY]


async def test_statuses_read_from_history_are_not_kept_by_the_waiting_socket(
    emu: Emulator, shell: MakeSocketFactory | None
) -> None:
    """A socket waits for its next frame with the last one's locals alive: the
    publications a connect reply recovered (a record and a payload each, for
    every order of the player) must not stay pinned there while it waits."""
    user = await emu.create_user("alice")
    orders = [await emu.create_order(user) for _ in range(3)]
    for order in orders:
        await emu.set_status(order, "paid")
    async with open_pool(emu, shell) as pool:
        sink = RecordingSink()
        tokens = Tokens(user.token)
        for order in orders:
            pool.attach(order, sink, token=tokens, user_id="alice")
        await sink.wait_for(lambda s: len(s.observations) == 6)
        gc.collect()
        pinned = [
            o for o in gc.get_objects() if type(o) is OrderPublication and o.order_id in orders
        ]
        assert pinned == []
        assert len(await emu.connections(user)) == 1  # the socket is still up, waiting


class StatusesOnly:
    """A sink that keeps the statuses it is told, not the observations."""

    def __init__(self) -> None:
        self.statuses: list[Status] = []
        self.healthy = False

    def observe(self, observation: Observation, /) -> None:
        self.statuses.append(observation.status)

    def report(self, report: HealthReport, /) -> None:
        self.healthy = report.health is Health.HEALTHY


async def test_a_live_status_is_not_kept_by_the_waiting_socket(
    emu: Emulator, shell: MakeSocketFactory | None
) -> None:
    """Once delivered, a live status's observation (its position and payload with it)
    is not held by the socket while it waits for the next frame, which for a player
    may be minutes: with a thousand sockets the collector walked all of them."""
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    async with open_pool(emu, shell) as pool:
        sink = StatusesOnly()
        pool.attach(order, sink, token=Tokens(user.token), user_id="alice")
        await eventually(lambda: sink.healthy)
        await emu.set_status(order, "paid")
        await eventually(lambda: Status.PAID in sink.statuses)
        gc.collect()
        # The socket's own only: another test's webhook app may be alive still (aiohttp
        # caches the handler chains of apps with middlewares, the last 1,024), its
        # receiver's sink with an observation of an order with the same id.
        kept = [
            o
            for o in gc.get_objects()
            if type(o) is Observation and o.order_id == order and o.source == WEBSOCKET
        ]
        assert kept == []
        assert len(await emu.connections(user)) == 1  # the socket is still up, waiting


async def test_duplicates_and_reordering_advance_each_status_once(
    emu: Emulator, shell: MakeSocketFactory | None
) -> None:
    user = await emu.create_user("alice")
    first, second = await emu.create_order(user), await emu.create_order(user)
    async with open_pool(emu, shell) as pool:
        sinks = {first: RecordingSink(), second: RecordingSink()}
        tokens = Tokens(user.token)
        for order, sink in sinks.items():
            pool.attach(order, sink, token=tokens, user_id="alice")
            await sink.wait_for(lambda s: Health.HEALTHY in healths(s))
        await emu.duplicate_publications(user, count=2)
        await emu.set_status(first, "paid")
        await emu.set_status(second, "paid")
        await emu.reorder_publications(user, count=3)
        await emu.set_status(first, "done")
        await emu.set_status(second, "canceled")
        await emu.set_status(first, "paid")  # releases the held three (the third is this one)
        await sinks[first].wait_for(has("new", "paid", "done"))
        await sinks[second].wait_for(has("new", "paid", "canceled"))
        book = OrderBook()
        advanced: list[tuple[int, Status]] = []
        for order, sink in sinks.items():
            book.track(order)
            for observation in sink.observations:
                if isinstance(book.apply(observation), Advanced):
                    advanced.append((order, observation.status))
            offsets = [o.position.offset or 0 for o in sink.observations if o.position]
            assert 0 not in offsets and len(offsets) == len(sink.observations)
            assert offsets == sorted(set(offsets)), "an offset was forwarded twice or out of order"
        expected = [(first, s) for s in ("new", "paid", "done")]
        expected += [(second, s) for s in ("new", "paid", "canceled")]
        assert sorted(advanced) == sorted(expected)
        assert len(await emu.connections(user)) == 1


async def test_many_orders_of_one_user_share_one_socket(
    emu: Emulator, shell: MakeSocketFactory | None
) -> None:
    alice, bob = await emu.create_user("alice"), await emu.create_user("bob")
    orders = [await emu.create_order(alice) for _ in range(10)]
    bobs = await emu.create_order(bob)
    async with open_pool(emu, shell) as pool:
        alice_tokens = Tokens(alice.token)
        sinks = {order: RecordingSink() for order in orders}
        for order, sink in sinks.items():
            pool.attach(order, sink, token=alice_tokens)  # keyed by the provider object
        bob_sink = RecordingSink()
        pool.attach(bobs, bob_sink, token=Tokens(bob.token), user_id="bob")
        for order in orders:
            await emu.set_status(order, "paid")
        await emu.set_status(bobs, "paid")
        for sink in sinks.values():
            await sink.wait_for(has("new", "paid"))
        await bob_sink.wait_for(has("new", "paid"))
        assert all(statuses(s) == ["new", "paid"] for s in sinks.values())
        assert len(await emu.connections(alice)) == 1
        assert len(await emu.connections(bob)) == 1
        assert alice_tokens.calls == 1
        infos = sorted(pool.connections(), key=lambda i: i.orders)
        assert [(i.orders, i.sockets_opened, i.health) for i in infos] == [
            (1, 1, Health.HEALTHY),
            (10, 1, Health.HEALTHY),
        ]


async def test_user_key_wins_over_user_id_and_token(
    emu: Emulator, shell: MakeSocketFactory | None
) -> None:
    user = await emu.create_user("alice")
    first, second = await emu.create_order(user), await emu.create_order(user)
    async with open_pool(emu, shell) as pool:
        one, two = RecordingSink(), RecordingSink()
        pool.attach(first, one, token=Tokens(user.token), user_id="alice", user_key="k")
        pool.attach(second, two, token=user.token, user_key="k")  # a plain string works too
        await one.wait_for(has("new"))
        await two.wait_for(has("new"))
        assert len(pool.connections()) == 1
        assert len(await emu.connections(user)) == 1


async def test_order_attached_later_gets_what_the_connection_already_saw(
    emu: Emulator, shell: MakeSocketFactory | None
) -> None:
    user = await emu.create_user("alice")
    first = await emu.create_order(user)
    async with open_pool(emu, shell) as pool:
        sink = RecordingSink()
        tokens = Tokens(user.token)
        pool.attach(first, sink, token=tokens, user_id="alice")
        await sink.wait_for(lambda s: Health.HEALTHY in healths(s))
        later = await emu.create_order(user)
        await emu.set_status(later, "paid")
        await emu.set_status(first, "paid")  # published after: once it is here, so are those
        await sink.wait_for(has("new", "paid"))
        late_sink = RecordingSink()
        pool.attach(later, late_sink, token=tokens, user_id="alice")
        # replayed synchronously inside attach, after the health report
        assert statuses(late_sink) == ["new", "paid"]
        assert healths(late_sink) == [Health.HEALTHY]
        assert len(await emu.connections(user)) == 1


async def test_a_late_attach_is_replayed_the_very_observations_a_live_sink_got(
    emu: Emulator, shell: MakeSocketFactory | None
) -> None:
    """The connection remembers statuses compactly (tuples the collector can drop);
    what it replays must still equal what a sink attached all along was given:
    status, position, and the raw payload, extra fields included."""
    user = await emu.create_user("alice")
    first = await emu.create_order(user)
    async with open_pool(emu, shell) as pool:
        tokens = Tokens(user.token)
        watching = RecordingSink()
        pool.attach(first, watching, token=tokens, user_id="alice")
        await watching.wait_for(lambda s: Health.HEALTHY in healths(s))
        later = await emu.create_order(user)
        live = RecordingSink()
        pool.attach(later, live, token=tokens, user_id="alice")
        await emu.set_status(later, "paid")
        await emu.publish_raw(user, {"order_id": later, "status": "done", "note": "extra"})
        await live.wait_for(has("new", "paid", "done"))
        replayed = RecordingSink()
        pool.attach(later, replayed, token=tokens, user_id="alice")
    assert replayed.observations == live.observations
    assert [o.raw for o in replayed.observations] == [o.raw for o in live.observations]
    assert replayed.observations[-1].raw == {"order_id": later, "status": "done", "note": "extra"}
    assert all(o.position is not None and o.position.offset for o in replayed.observations)


async def test_unknown_statuses_and_malformed_publications_are_skipped(
    emu: Emulator, shell: MakeSocketFactory | None, caplog: pytest.LogCaptureFixture
) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    async with open_pool(emu, shell) as pool:
        sink = RecordingSink()
        pool.attach(order, sink, token=Tokens(user.token), user_id="alice")
        await sink.wait_for(lambda s: Health.HEALTHY in healths(s))
        with caplog.at_level(logging.INFO, logger="orderfsm.websocket"):
            await emu.set_status(order, "refunded")
            await emu.publish_raw(user, "not an object")
            await emu.publish_raw(user, {"order_id": "12", "status": "paid"})
            await emu.publish_raw(user, {"order_id": order, "status": "paid", "extra": [1]})
            await sink.wait_for(has("new", "paid"))
        assert statuses(sink) == ["new", "paid"]
        assert sink.observations[-1].raw == {"order_id": order, "status": "paid", "extra": [1]}
        assert any("refunded" in r.getMessage() for r in caplog.records)
        assert healths(sink) == [Health.CONNECTING, Health.HEALTHY]
        assert len(await emu.connections(user)) == 1


class RaisingSink(RecordingSink):
    def observe(self, observation: Observation, /) -> None:
        super().observe(observation)
        raise RuntimeError("application bug")

    def report(self, report: HealthReport, /) -> None:
        super().report(report)
        raise RuntimeError("application bug")


async def test_a_raising_sink_does_not_break_the_connection(
    emu: Emulator, shell: MakeSocketFactory | None, caplog: pytest.LogCaptureFixture
) -> None:
    user = await emu.create_user("alice")
    bad, good = await emu.create_order(user), await emu.create_order(user)
    async with open_pool(emu, shell) as pool:
        bad_sink, good_sink = RaisingSink(), RecordingSink()
        tokens = Tokens(user.token)
        pool.attach(bad, bad_sink, token=tokens, user_id="alice")
        pool.attach(good, good_sink, token=tokens, user_id="alice")
        await emu.set_status(bad, "paid")
        await emu.set_status(good, "paid")
        await good_sink.wait_for(has("new", "paid"))
        await bad_sink.wait_for(has("new", "paid"))
        assert len(await emu.connections(user)) == 1
        assert pool.connections()[0].health is Health.HEALTHY
    assert any("raised on observe" in r.getMessage() for r in caplog.records)


async def test_last_detach_closes_the_socket_and_a_new_attach_reopens(
    emu: Emulator, shell: MakeSocketFactory | None
) -> None:
    user = await emu.create_user("alice")
    first, second = await emu.create_order(user), await emu.create_order(user)
    async with open_pool(emu, shell) as pool:
        tokens = Tokens(user.token)
        one, two = RecordingSink(), RecordingSink()
        a = pool.attach(first, one, token=tokens, user_id="alice")
        b = pool.attach(second, two, token=tokens, user_id="alice")
        await one.wait_for(has("new"))
        a.detach()
        a.detach()
        assert pool.connections()[0].attachments == 1
        b.detach()
        assert pool.connections() == []
        again = RecordingSink()
        pool.attach(first, again, token=tokens, user_id="alice")  # while the old one closes
        await again.wait_for(has("new"))
        await emu.set_status(first, "canceled")
        await again.wait_for(has("new", "canceled"))
        await wait_closed(emu, "alice", 2)
        old, new = await emu.connections(user)
        assert old.closed_at is not None and new.opened_at >= old.closed_at
        assert old.close_code == 1000
    assert len(one.observations) == 1 and len(two.observations) == 1  # nothing after detach


async def test_an_idle_socket_lingers_and_the_same_players_next_order_reuses_it(
    emu: Emulator, shell: MakeSocketFactory | None
) -> None:
    """The player buys again soon: no second socket, no reconnect, no history read."""
    user = await emu.create_user("alice")
    first = await emu.create_order(user)
    async with open_pool(emu, shell, linger=60.0) as pool:
        tokens = Tokens(user.token)
        one = RecordingSink()
        pool.attach(first, one, token=tokens, user_id="alice")
        await one.wait_for(has("new"))
        await emu.set_status(first, "canceled")
        await one.wait_for(has("new", "canceled"))  # a final status: the order let go
        [idle] = pool.connections()
        assert (idle.orders, idle.attachments, idle.health) == (0, 0, Health.HEALTHY)
        second = await emu.create_order(user)  # published on the idle socket
        two = RecordingSink()
        pool.attach(second, two, token=tokens, user_id="alice")
        await two.wait_for(has("new"))
        await emu.set_status(second, "paid")
        await two.wait_for(has("new", "paid"))
        [conn] = await emu.connections(user)
        assert conn.state != "closed"
        assert [(i.orders, i.sockets_opened) for i in pool.connections()] == [(1, 1)]
        assert tokens.calls == 1


async def test_a_lingering_socket_closes_after_linger_unless_an_order_came_back(
    emu: Emulator, shell: MakeSocketFactory | None
) -> None:
    user = await emu.create_user("alice")
    first, second = await emu.create_order(user), await emu.create_order(user)
    async with open_pool(emu, shell, linger=0.3) as pool:
        a = pool.attach(first, RecordingSink(), token=user.token, user_id="alice")
        a.detach()  # idle: closes in 0.3 s unless an order comes back
        two = RecordingSink()
        b = pool.attach(second, two, token=user.token, user_id="alice")
        await anyio.sleep(0.6)  # past the first idle spell, with an order attached
        [conn] = await emu.connections(user)
        assert conn.state != "closed" and pool.connections()[0].attachments == 1
        await emu.set_status(second, "paid")
        await two.wait_for(has("new", "paid"))
        b.detach()
        await wait_closed(emu, "alice", 1)
        assert pool.connections() == []
        [conn] = await emu.connections(user)
        assert conn.close_code == 1000


async def test_leaving_the_pool_closes_lingering_sockets_at_once(
    emu: Emulator, shell: MakeSocketFactory | None
) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    with anyio.fail_after(5):  # not the hour of lingering
        async with open_pool(emu, shell, linger=3600.0) as pool:
            sink = RecordingSink()
            attachment = pool.attach(order, sink, token=user.token, user_id="alice")
            await sink.wait_for(has("new"))
            attachment.detach()
            assert len(pool.connections()) == 1
    await wait_closed(emu, "alice", 1)


async def test_a_socket_given_up_closes_without_lingering(
    emu: Emulator, shell: MakeSocketFactory | None
) -> None:
    """``detach(linger=False)``: the tracker gives the socket up (its lifespan is over)."""
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    async with open_pool(emu, shell, linger=3600.0) as pool:
        sink = RecordingSink()
        attachment = pool.attach(order, sink, token=user.token, user_id="alice")
        await sink.wait_for(has("new"))
        attachment.detach(linger=False)
        assert pool.connections() == []
        await wait_closed(emu, "alice", 1)


async def test_a_lingering_socket_that_fails_is_not_handed_to_the_next_order(
    emu: Emulator, shell: MakeSocketFactory | None
) -> None:
    user = await emu.create_user("alice")
    first, second = await emu.create_order(user), await emu.create_order(user)
    async with open_pool(emu, shell, linger=3600.0) as pool:
        one = RecordingSink()
        pool.attach(first, one, token=user.token, user_id="alice").detach()
        with anyio.fail_after(5):
            while pool.connections()[0].health is not Health.HEALTHY:  # noqa: ASYNC110 (a snapshot)
                await anyio.sleep(0.02)
        await emu.close_connections(user, 3503, "force disconnect")  # no reconnect
        await wait_closed(emu, "alice", 1)
        with anyio.fail_after(5):
            while pool.connections():  # noqa: ASYNC110 (a snapshot)
                await anyio.sleep(0.02)
        two = RecordingSink()
        pool.attach(second, two, token=user.token, user_id="alice")
        await two.wait_for(has("new"))
        assert healths(two) == [Health.CONNECTING, Health.HEALTHY]
        assert len(await emu.connections(user)) == 2


def test_linger_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="linger"):
        WebSocketPool(project_id=1, linger=-1.0)


async def test_leaving_the_pool_stops_every_connection(
    emu: Emulator, shell: MakeSocketFactory | None
) -> None:
    alice, bob = await emu.create_user("alice"), await emu.create_user("bob")
    sinks = [RecordingSink(), RecordingSink()]
    async with open_pool(emu, shell) as pool:
        for user, sink in zip((alice, bob), sinks, strict=True):
            pool.attach(await emu.create_order(user), sink, token=user.token)
        for sink in sinks:
            await sink.wait_for(lambda s: Health.HEALTHY in healths(s))
    for sink in sinks:
        assert healths(sink) == [Health.CONNECTING, Health.HEALTHY, Health.STOPPED]
    await wait_closed(emu, "alice", 1)
    await wait_closed(emu, "bob", 1)
    with pytest.raises(PoolClosed):
        pool.attach(1, RecordingSink(), token=alice.token)


def test_attach_outside_the_pool_is_refused() -> None:
    pool = WebSocketPool(project_id=1)
    with pytest.raises(PoolClosed):
        pool.attach(1, RecordingSink(), token="t")
