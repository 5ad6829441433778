"""The tracker with its default transports, on the emulator, on asyncio and trio.

Failover and fail-back, the WebSocket's lifespan, the final status seen first
by each transport in turn, sharing one socket per user, and nothing left
running afterwards.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import anyio
import pytest
from support_tracker import FAST, emulator_tracker
from support_webhook import serve_receiver

from orderfsm import Change, HealthReport, Status, StatusChange
from orderfsm.interface import WEBSOCKET, Health
from orderfsm.supervisor.policy import DefaultPolicy
from orderfsm.supervisor.tracker import Tracker
from orderfsm.testing import RecordingSink, eventually
from transports.emulator import Emulator, User
from transports.webhook import WebhookReceiver

pytestmark = pytest.mark.anyio

SECRET = "tracker-webhooks"


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(seed=17, ping_interval=1.0, pong_timeout=1.0, secret=SECRET) as emulator:
        yield emulator


def tracker(
    emu: Emulator, user: User, policy: DefaultPolicy | None = None, **kw: object
) -> Tracker:
    return emulator_tracker(emu, user, policy=policy or FAST, **kw)


async def requests_for(emu: Emulator, order_id: int) -> int:
    return len((await emu.stats()).get_order_requests.get(order_id, []))


async def test_websocket_alone_delivers_and_get_order_is_asked_twice(emu: Emulator) -> None:
    """Once when tracking starts (beside the socket), once for the details: no polling."""
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    async with tracker(emu, user) as t:
        t.track(order_id)
        await emu.wait_connected(user)
        await emu.run_script(order_id, [(0.2, "paid"), (0.2, "done")])
        result = await t.wait(order_id)
    assert [c.status for c in result.changes] == [Status.NEW, Status.PAID, Status.DONE]
    assert [c.source for c in result.changes[1:]] == ["websocket", "websocket"]
    assert result.details is not None and result.details.status == "done"
    assert await requests_for(emu, order_id) == 2


async def test_fails_over_to_polling_and_back(emu: Emulator) -> None:
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    sink = RecordingSink()
    reports = sink.reports

    def websocket_health(_: object = None) -> list[Health]:
        return [r.health for r in reports if r.source == "websocket"]

    async with tracker(emu, user, on_report=lambda _, r: sink.report(r)) as t:
        t.track(order_id)
        await sink.wait_for(lambda _: Health.HEALTHY in websocket_health())
        started = await requests_for(emu, order_id)
        await emu.drop_connections(user)  # a dead TCP connection: reconnect, poll meanwhile
        await sink.wait_for(lambda _: Health.DEGRADED in websocket_health())
        await sink.wait_for(lambda _: websocket_health()[-1] is Health.HEALTHY)
        polled = await requests_for(emu, order_id)
        # Back on the WebSocket, polling stops.  Time must pass to show an absence:
        # twenty poll intervals, which would bring some twenty requests if it had
        # not; at most two more may land (one on its way, one check after the outage).
        await anyio.sleep(20 * 0.05)
        assert await requests_for(emu, order_id) <= polled + 2
        await emu.set_status(order_id, "paid")
        await emu.set_status(order_id, "done")
        result = await t.wait(order_id)
    websocket = [r.health for r in reports if r.source == "websocket"]
    assert Health.DEGRADED in websocket and websocket[-1] is Health.HEALTHY
    assert polled > started
    assert result.status is Status.DONE


async def test_the_websocket_lifespan_ends_in_polling(emu: Emulator) -> None:
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    policy = DefaultPolicy(poll_interval=0.05, websocket_lifespan=0.3, deadline=20.0)
    async with tracker(emu, user, policy) as t:
        t.track(order_id)
        await anyio.sleep(0.6)
        assert (await emu.stats()).open_connections.get(user.external_id, 0) == 0
        assert await requests_for(emu, order_id) >= 1
        await emu.set_status(order_id, "canceled")
        result = await t.wait(order_id)
    assert result.status is Status.CANCELED and result.source == "polling"


async def test_final_status_seen_first_by_polling(emu: Emulator) -> None:
    """The WebSocket never hears of it (not published); the safety poll finds it."""
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    policy = DefaultPolicy(poll_interval=0.05, safety_poll_interval=0.1, deadline=20.0)
    async with tracker(emu, user, policy) as t:
        t.track(order_id)
        await emu.set_status(order_id, "done", publish=False)
        result = await t.wait(order_id)
    assert result.status is Status.DONE and result.source == "polling"


async def test_final_status_seen_first_by_a_webhook(emu: Emulator) -> None:
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    # No polling: no Get order at the start that could see the status first.
    async with tracker(emu, user, transports=("websocket", "webhook")) as t:
        receiver = WebhookReceiver(SECRET, sink=t)
        async with serve_receiver(receiver, "asgi") as url:
            await emu.configure_webhooks(url)
            t.track(order_id)
            await emu.set_status(order_id, "canceled", publish=False)
            result = await t.wait(order_id)
            await emu.configure_webhooks(None)  # type: ignore[arg-type]
    assert result.status is Status.CANCELED and result.source == "webhook"


async def test_orders_of_one_user_share_one_socket_and_nothing_is_left(emu: Emulator) -> None:
    user = await emu.create_user()
    orders = [await emu.create_order(user) for _ in range(12)]
    async with tracker(emu, user) as t:
        for order_id in orders:
            t.track(order_id, token=user.token, user_id=user.external_id)
        await emu.wait_connected(user)
        for i, order_id in enumerate(orders):
            await emu.run_script(order_id, [(0.01 * i, "paid"), (0.05, "done")])
        results = [await t.wait(order_id) for order_id in orders]
        assert all(r.status is Status.DONE for r in results)
    connections = await emu.connections(user)
    assert len(connections) == 1
    assert all(c.state == "closed" for c in connections)


async def test_on_change_sees_every_change_once_before_wait_resumes(emu: Emulator) -> None:
    """One callback for all orders, as a UI or a queue would use it: no task per order.

    A raising callback is logged and changes nothing for the others.
    """
    users = [await emu.create_user() for _ in range(2)]
    orders = {oid: u for u in users for oid in [await emu.create_order(u) for _ in range(4)]}
    seen: list[Change] = []

    def on_change(change: Change) -> None:
        seen.append(change)
        if change.order_id == next(iter(orders)):
            raise RuntimeError("a bug in the application's callback")

    async with tracker(emu, users[0], on_change=on_change, fetch_details=False) as t:
        for order_id, user in orders.items():
            t.track(order_id, token=user.token, user_id=user.external_id)
        for user in users:
            await emu.wait_connected(user)
        for order_id in orders:
            await emu.run_script(order_id, [(0.01, "paid"), (0.02, "done")])
        for order_id in orders:
            result = await t.wait(order_id)
            # Told before wait() resumed: the final change is already in.
            assert [c for c in seen if c.order_id == order_id] == list(result.changes)
    assert all(isinstance(c, StatusChange) for c in seen)
    for order_id in orders:
        statuses = [c.status for c in seen if c.order_id == order_id]
        assert statuses == [Status.NEW, Status.PAID, Status.DONE]


async def test_a_connection_given_no_channel_leaves_its_orders_to_polling_until_subscribed(
    emu: Emulator,
) -> None:
    """A connect reply that names no channel can bring no status (Centrifugo pushes only
    on subscribed channels): the socket says so, not healthy, so polling follows the
    order now rather than after the socket's 5-minute lifespan.  A subscribe push
    later makes it healthy again, polling stops, and the news comes by the socket."""
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    await emu.withhold_channel(user)
    reports: list[Health] = []
    reasons: list[str] = []

    def on_report(_: int, report: HealthReport) -> None:
        if report.source == WEBSOCKET:
            reports.append(report.health)
            reasons.append(report.reason)

    async def polled_since(count: int) -> bool:
        return await requests_for(emu, order_id) >= count + 3

    async with tracker(emu, user, on_report=on_report, fetch_details=False) as t:
        t.track(order_id)
        await eventually(lambda: "no channel" in " ".join(reasons))
        assert Health.HEALTHY not in reports
        await eventually(functools.partial(polled_since, await requests_for(emu, order_id)))
        assert await emu.give_channel(user) == 1
        await eventually(lambda: reports[-1] is Health.HEALTHY)
        await anyio.sleep(0.2)  # a poll already under way when it turned healthy ends
        polls = await requests_for(emu, order_id)
        await emu.run_script(order_id, [(0.3, "paid"), (0.1, "done")])
        result = await t.wait(order_id)
    assert [c.status for c in result.changes] == [Status.NEW, Status.PAID, Status.DONE]
    assert [c.source for c in result.changes[1:]] == ["websocket", "websocket"]
    assert await requests_for(emu, order_id) == polls
