"""Xsolla's order life cycle through the tracker, on the emulator, on asyncio and trio.

An expired order can still be paid, a refund can follow delivery, ``paid`` is
success for a server that asks for it, and every doubt (tracking starts, a
socket back after an outage, a history gap, a host that slept) is settled by
one Get order at once.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import anyio
import attrs
import pytest
from support_tracker import emulator_tracker
from support_webhook import serve_receiver

from orderfsm import Change, Observation, Plan, Situation, Status, StatusChange
from orderfsm.errors import OrderNotFound
from orderfsm.interface import Health
from orderfsm.supervisor.order import TrackedOrder
from orderfsm.supervisor.policy import DefaultPolicy
from orderfsm.supervisor.tracker import Tracker
from orderfsm.testing import RecordingSink, SteppedClock, eventually
from transports.emulator import Emulator, User
from transports.webhook import Notification, OrderCanceled, OrderPaid, WebhookReceiver

pytestmark = pytest.mark.anyio

SECRET = "lifecycle-webhooks"


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(seed=23, ping_interval=1.0, secret=SECRET) as emulator:
        yield emulator


def tracker(emu: Emulator, user: User, **kw: object) -> Tracker:
    # a dead socket is never found by its pings here: something else must notice
    return emulator_tracker(emu, user, max_server_ping_delay=30.0, **kw)


async def requests_for(emu: Emulator, order_id: int) -> int:
    return len((await emu.stats()).get_order_requests.get(order_id, []))


@asynccontextmanager
async def webhooks_into(
    emu: Emulator, t: Tracker, handled: list[Notification] | None = None
) -> AsyncIterator[None]:
    """A real receiver on loopback feeding ``t``, with the emulator's sender pointed at it."""

    async def handler(notification: Notification) -> None:
        if handled is not None:
            handled.append(notification)

    async with serve_receiver(WebhookReceiver(SECRET, handler, sink=t), "asgi") as url:
        await emu.configure_webhooks(url, [0.2] * 20)  # a slow answer is retried soon
        try:
            yield
        finally:
            await emu.configure_webhooks(None)


# --- expired: still payable, a failure only after the grace ----------------------


async def test_expired_then_paid_then_done_is_a_success(emu: Emulator) -> None:
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    async with tracker(emu, user) as t:
        t.track(order_id)
        await emu.wait_connected(user)
        await emu.run_script(order_id, [(0.1, "expired"), (0.2, "paid"), (0.1, "done")])
        watched = [c async for c in t.watch(order_id)]
        result = await t.wait(order_id)
    statuses = [Status.NEW, Status.EXPIRED, Status.PAID, Status.DONE]
    assert [c.status for c in result.changes] == statuses
    assert [c.status for c in watched if isinstance(c, StatusChange)] == statuses
    assert result.status is Status.DONE and result.succeeded and not result.conflicts
    assert [c.settled for c in result.changes] == [False, False, False, True]


@pytest.mark.parametrize(
    ("deadline", "grace"),
    [(30.0, 0.5), (0.6, 600.0)],
    ids=["the grace ends", "the deadline comes first and still ends in expired"],
)
async def test_an_order_that_stays_expired_settles_as_expired(
    emu: Emulator, deadline: float, grace: float
) -> None:
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    policy = DefaultPolicy(poll_interval=0.05, deadline=deadline, expired_grace=grace)
    async with tracker(emu, user, policy=policy) as t:
        started = anyio.current_time()
        t.track(order_id)
        await emu.set_status(order_id, "expired")
        result = await t.wait(order_id)
        expired = result.changes[-1]
        assert expired.status is Status.EXPIRED
        assert anyio.current_time() >= min(expired.at + grace, started + deadline)  # not before
    assert result.status is Status.EXPIRED and not result.succeeded  # not a TrackingTimeout
    assert result.details is not None and result.details.status == "expired"


async def test_a_payment_after_the_grace_still_reaches_on_change(emu: Emulator) -> None:
    """wait() said expired; the money that came later is not hidden from the game."""
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    seen: list[Change] = []
    policy = DefaultPolicy(poll_interval=0.05, deadline=30.0, expired_grace=0.2)
    async with (
        tracker(emu, user, policy=policy, on_change=seen.append) as t,
        webhooks_into(emu, t),
    ):
        t.track(order_id)
        await emu.set_status(order_id, "expired")
        assert (await t.wait(order_id)).status is Status.EXPIRED
        await emu.set_status(order_id, "paid")  # order_paid: the only news now
        await eventually(lambda: any(c.status is Status.PAID for c in seen))
    late = [c for c in seen if isinstance(c, StatusChange) and c.status is Status.PAID]
    assert len(late) == 1 and late[0].previous is Status.EXPIRED and not late[0].settled


# --- paid as success, and the refund after delivery --------------------------------


async def test_until_paid_settles_at_paid_with_polling_only(emu: Emulator) -> None:
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    async with tracker(emu, user, transports=("polling",), until="paid") as t:
        await emu.set_status(order_id, "paid")
        result = await t.wait(order_id)
    assert result.status is Status.PAID and result.succeeded and result.until is Status.PAID
    assert result.details is not None and result.details.status == "paid"


async def test_until_paid_settles_on_the_order_paid_webhook_alone(emu: Emulator) -> None:
    """A server granting on payment: no webhook ever says done, and none is needed."""
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    async with (
        Tracker(
            project_id=emu.project_id, transports=("webhook",), until="paid", fetch_details=False
        ) as t,
        webhooks_into(emu, t),
    ):
        t.track(order_id)
        await emu.set_status(order_id, "paid")
        result = await t.wait(order_id)
    assert (result.status, result.source, result.succeeded) == (Status.PAID, "webhook", True)


async def test_a_refund_after_done_is_one_change_not_a_conflict(emu: Emulator) -> None:
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    seen: list[Change] = []
    handled: list[Notification] = []
    transports = ("websocket", "polling", "webhook")
    async with (
        tracker(emu, user, transports=transports, on_change=seen.append) as t,
        webhooks_into(emu, t, handled),
        anyio.create_task_group() as tg,
    ):
        followed: list[Change] = []

        async def follow() -> None:
            followed.extend([c async for c in t.watch(order_id, follow=True)])

        t.track(order_id)
        tg.start_soon(follow)
        # From "new" on (a loaded machine may otherwise hear "paid" first, rightly).
        await eventually(lambda: bool(seen))
        await emu.run_script(order_id, [(0.05, "paid"), (0.05, "done")])
        result = await t.wait(order_id)
        await emu.set_status(order_id, "canceled")  # the refund: socket and webhook
        await emu.send_webhook(order_id, "order_canceled", copies=2)  # and retries

        async def three_refunds_answered() -> bool:
            attempts = await emu.webhook_deliveries()
            refunds = [a for a in attempts if a.order_id == order_id and a.status == 204]
            return sum(a.notification_type == "order_canceled" for a in refunds) >= 3

        await eventually(three_refunds_answered, timeout=30)
        await eventually(lambda: len(followed) == 4)
    assert result.status is Status.DONE and result.succeeded
    refunds = [c for c in seen if c.status is Status.CANCELED]
    assert len(refunds) == 1 and isinstance(refunds[0], StatusChange)
    assert refunds[0].previous is Status.DONE and refunds[0].final and not refunds[0].settled
    assert [c.status for c in followed] == [Status.NEW, Status.PAID, Status.DONE, Status.CANCELED]
    assert [type(n) for n in handled] == [OrderPaid, OrderCanceled]  # each ran once
    assert [c.status for c in result.changes][-1] is Status.DONE  # the result is unchanged


async def test_a_result_first_read_after_a_refund_is_still_the_settlement(emu: Emulator) -> None:
    """A settled order's result is made when first read (an application hearing through
    ``on_change`` may never read it): read only after a later refund, it is still
    what settled the order, and the refund is news after it."""
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    seen: list[Change] = []
    transports = ("websocket", "webhook")
    async with (
        tracker(emu, user, transports=transports, fetch_details=False, on_change=seen.append) as t,
        webhooks_into(emu, t),
    ):
        t.track(order_id)
        await eventually(lambda: bool(seen))
        await emu.run_script(order_id, [(0.05, "paid"), (0.05, "done")])
        await eventually(lambda: any(c.status is Status.DONE for c in seen))
        await emu.set_status(order_id, "canceled")  # the refund: heard by its webhook
        await eventually(lambda: any(c.status is Status.CANCELED for c in seen), timeout=30)
        result = await t.wait(order_id)
    assert (result.status, result.succeeded) == (Status.DONE, True)
    assert [c.status for c in result.changes] == [Status.NEW, Status.PAID, Status.DONE]
    assert result.conflicts == ()


async def test_the_details_read_after_settling_tells_of_a_refund_meanwhile(emu: Emulator) -> None:
    """Settled ``done`` (a late webhook), but Get order already says refunded."""
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    seen: list[Change] = []
    await emu.set_status(order_id, "done", publish=False, webhook=False)
    await emu.set_status(order_id, "canceled", publish=False, webhook=False)
    async with Tracker(
        project_id=emu.project_id,
        token=user.token,
        api_url=emu.api_url,
        transports=("webhook",),
        on_change=seen.append,
    ) as t:
        t.track(order_id)
        t.observe(Observation(order_id, "done", "webhook", anyio.current_time()))
        result = await t.wait(order_id)
    assert result.status is Status.DONE and result.details is not None
    assert result.details.status == "canceled"
    assert [(c.status, c.source) for c in seen] == [
        (Status.DONE, "webhook"),
        (Status.CANCELED, "polling"),
    ]


async def test_one_goal_per_order() -> None:
    async with Tracker(project_id=1, transports=("webhook",), fetch_details=False) as t:
        t.track(5, until="paid")
        t.track(5, until="paid")
        t.track(5)
        with pytest.raises(ValueError, match="tracked until paid, not done"):
            t.track(5, until="done")
        with pytest.raises(ValueError, match="until must be one of"):
            t.track(6, until="expired")


# --- every doubt is settled by one Get order at once --------------------------------


@attrs.frozen
class SocketOnly:
    """A policy that never polls: any Get order the test sees is a doubt's check."""

    def plan(self, situation: Situation, now: float) -> Plan:
        return Plan(websocket=True, poll_interval=None)


async def test_tracking_starts_with_one_get_order(emu: Emulator) -> None:
    """A status the socket cannot tell (never published) is known at once."""
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    await emu.set_status(order_id, "done", publish=False)
    async with tracker(emu, user, policy=SocketOnly()) as t:
        result = await t.wait(order_id)
    assert (result.status, result.source) == (Status.DONE, "polling")
    assert await requests_for(emu, order_id) == 1  # the check brought the details too


async def settled_by_a_check(emu: Emulator, user: User, order_id: int, t: Tracker) -> None:
    """Wait until tracking is under way and its start check is done, then change
    the status where only Get order can see it."""
    t.track(order_id)
    await emu.wait_connected(user)
    await eventually(lambda: requests_for(emu, order_id))
    await emu.set_status(order_id, "done", publish=False)


async def test_a_socket_back_after_an_outage_is_followed_by_one_get_order(
    emu: Emulator,
) -> None:
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    sink = RecordingSink()
    async with tracker(emu, user, policy=SocketOnly(), on_report=lambda _, r: sink.report(r)) as t:
        await settled_by_a_check(emu, user, order_id, t)
        await sink.wait_for(lambda s: Health.HEALTHY in [r.health for r in s.reports])
        await emu.drop_connections(user)
        result = await t.wait(order_id)
    assert (result.status, result.source) == (Status.DONE, "polling")
    health = [r.health for r in sink.reports if r.source == "websocket"]
    assert health.index(Health.DEGRADED) < len(health) - 1  # healthy again before the answer
    assert await requests_for(emu, order_id) == 2


async def test_a_history_gap_is_followed_by_one_get_order(emu: Emulator) -> None:
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    async with tracker(emu, user, policy=SocketOnly()) as t:
        await settled_by_a_check(emu, user, order_id, t)
        await emu.new_epoch(user)
        await emu.close_connections(user, 3000)  # recovery meets the new epoch: a gap
        result = await t.wait(order_id)
    assert (result.status, result.source) == (Status.DONE, "polling")


async def test_a_host_that_slept_reconnects_and_asks_get_order_at_once(emu: Emulator) -> None:
    """The socket is a black hole after the sleep (no close, no ping): without the
    two clocks it would take the missed ping (30 s of slack here) to notice."""
    user = await emu.create_user()
    order_id, other = await emu.create_order(user), await emu.create_order(user)
    clock = SteppedClock()
    async with tracker(emu, user, policy=SocketOnly(), sleep_clock=clock) as t:
        t.track(other)  # keeps the player's socket open after the first order settles
        await settled_by_a_check(emu, user, order_id, t)
        await emu.suspend(user)  # the host sleeps: its socket goes silent, unclosed
        await emu.resume(user)  # and wakes: new sockets work, the old one stays dead
        clock.step(120.0)
        with anyio.fail_after(10):
            result = await t.wait(order_id)
        await eventually(lambda: _sockets_opened(emu, user, 2))
    assert (result.status, result.source) == (Status.DONE, "polling")


async def _sockets_opened(emu: Emulator, user: User, count: int) -> bool:
    return len(await emu.connections(user)) >= count


async def test_an_order_id_that_does_not_exist_is_named_within_the_not_found_grace(
    emu: Emulator,
) -> None:
    """Even with a healthy socket, which would otherwise wait out its five minutes."""
    user = await emu.create_user()
    async with tracker(emu, user, not_found_grace=1.0) as t:
        started = anyio.current_time()
        with anyio.fail_after(15), pytest.raises(OrderNotFound):
            await t.wait(987654321)
        assert anyio.current_time() - started >= 1.0


async def test_observations_after_untrack_are_dropped() -> None:
    seen: list[Change] = []
    async with Tracker(
        project_id=1, transports=("webhook",), fetch_details=False, on_change=seen.append
    ) as t:
        t.track(3)
        t.untrack(3)
        t.observe(Observation(3, "paid", "webhook", anyio.current_time()))
    assert seen == []


class CountingPolicy:
    """The default plans, counted: a test waits for the scheduler's first look."""

    def __init__(self) -> None:
        self.plans = 0
        self._default = DefaultPolicy()

    def plan(self, situation: Situation, now: float) -> Plan:
        self.plans += 1
        return self._default.plan(situation, now)


async def test_settled_and_forgotten_orders_are_not_kept_by_the_scheduler() -> None:
    """Each order planned has an entry in the scheduler's review heap until its review
    time (minutes away); ended orders' entries are dropped in bulk once they outnumber
    the live ones.  An order settled the moment its settling status is applied, not in
    a pass of the scheduler, must not stay alive there once the application forgot it."""
    policy = CountingPolicy()
    orders = range(1, 301)
    async with Tracker(
        project_id=1, transports=("webhook",), fetch_details=False, policy=policy
    ) as t:
        for order_id in orders:
            t.track(order_id)
        await eventually(lambda: policy.plans >= len(orders))  # one plan each, at least
        for order_id in orders:
            t.observe(Observation(order_id, "done", "webhook", anyio.current_time()))
            assert t.status(order_id) is Status.DONE
            t.forget(order_id)
        gc.collect()
        kept = [o for o in gc.get_objects() if type(o) is TrackedOrder]
        assert len(kept) <= 64  # the bulk drop's slack, whatever the number of orders
