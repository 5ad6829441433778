"""Edges of the client-side path where a paying player got a wrong answer or every
order failed at once (found by a review of the WebSocket, polling and failover code,
each test failing before its fix), on the emulator, on asyncio and trio."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from contextlib import asynccontextmanager

import anyio
import pytest
from support_http import Request, http_response, loopback_server
from support_tracker import emulator_tracker

from orderfsm import Status, Tracker
from orderfsm.core import Observation
from orderfsm.errors import TrackingTimeout, TransportError
from orderfsm.interface import Health, HealthReport
from orderfsm.supervisor.policy import DefaultPolicy
from orderfsm.supervisor.records import FinalResult
from orderfsm.testing import eventually
from transports.emulator import Emulator, User
from transports.http import HttpClient, HttpResponse, open_http_client
from transports.polling import PollConfig, poll_order
from transports.webhook import WebhookReceiver, serve_receiver

pytestmark = pytest.mark.anyio


def webhooks_only(emu: Emulator, user: User) -> tuple[Tracker, WebhookReceiver]:
    """A backend that learns from webhooks alone, with a deadline it will miss."""
    tracker = Tracker(
        project_id=emu.project_id, token=user.token, api_url=emu.api_url,
        transports=("webhook",), until="paid", policy=DefaultPolicy(deadline=0.5),
    )  # fmt: skip
    return tracker, WebhookReceiver(emu.secret, sink=tracker)


async def time_out_then_pay(
    emu: Emulator, tracker: Tracker, url: str, order_id: int, details_delay: float
) -> None:
    """The order times out; then an ``order_paid`` Xsolla retried gets through, with the
    order's details ``details_delay`` seconds away."""
    await emu.configure_webhooks(url)
    with pytest.raises(TrackingTimeout):
        await tracker.wait(order_id)
    assert tracker.stats().timed_out == 1
    await emu.get_order_fault("slow", delay=details_delay, order_id=order_id)
    await emu.pay(order_id)
    await eventually(lambda: tracker.status(order_id) is Status.PAID)


async def test_a_webhook_after_the_deadline_turns_the_timeout_into_its_result() -> None:
    """A backend that learns from webhooks alone times out on an order whose endpoint
    was down; Xsolla retries ``order_paid`` for 12 hours, and one gets through later.
    The next ``wait()``, even one made while the details are on their way, returns
    ``paid`` with its details (before, every later wait raised the old TrackingTimeout
    while ``status()`` said paid: the item was never granted)."""
    async with Emulator(ping_interval=0) as emu:
        user = await emu.create_user()
        order_id = await emu.create_order(user)
        tracker, receiver = webhooks_only(emu, user)
        async with tracker, serve_receiver(receiver) as url:
            await time_out_then_pay(emu, tracker, url, order_id, details_delay=0.3)
            result = await tracker.wait(order_id)
            stats = tracker.stats()
    assert result.status is Status.PAID and result.source == "webhook" and result.succeeded
    # A paid order, settled late; the timeout stays counted (the exporters' counters
    # never go down), and the order is finished once.
    assert stats.settled == {"succeeded": 1} and stats.settled_late == {"succeeded": 1}
    assert stats.timed_out == 1 and stats.orders_tracked == 1 and stats.orders_active == 0
    assert result.details is not None and result.details.status == "paid"


async def test_a_tracker_closing_while_a_late_settlement_s_details_come_counts_it_once() -> None:
    """An order timed out, then paid (a webhook Xsolla retried), and the tracker closes
    while its details are on their way: the waiter gets ``paid``, and the order is
    finished and settled once in ``stats()`` (it was counted twice: found by review)."""
    async with Emulator(ping_interval=0) as emu:
        user = await emu.create_user()
        order_id = await emu.create_order(user)
        tracker, receiver = webhooks_only(emu, user)
        results: list[FinalResult] = []

        async def waiting() -> None:
            results.append(await tracker.wait(order_id))

        async with serve_receiver(receiver) as url, anyio.create_task_group() as tg:
            async with tracker:
                await time_out_then_pay(emu, tracker, url, order_id, details_delay=5.0)
                tg.start_soon(waiting)
                await anyio.sleep(0.2)  # it waits for the details, which are 5 s away
            stats = tracker.stats()  # closed with the details on their way
    [result] = results
    assert result.status is Status.PAID and result.details is None
    assert stats.orders_tracked == 1 and stats.orders_active == 0
    assert stats.settled == {"succeeded": 1} and stats.settled_late == {"succeeded": 1}


async def test_forgetting_an_order_while_its_details_come_harms_no_other_order() -> None:
    """The app forgets a settled order while its details are on their way; another
    player's order still settles (the details' lag check read the forgotten order's
    status and ended the Tracker's task group, found by a review of this change)."""
    async with Emulator(ping_interval=0) as emu:
        user, other = await emu.create_user(), await emu.create_user()
        order_id, others = await emu.create_order(user), await emu.create_order(other)
        policy = DefaultPolicy(poll_interval=0.05, deadline=30.0)
        tracker = emulator_tracker(emu, user, policy=policy, transports=("polling",), until="paid")
        async with tracker:
            tracker.track(order_id)
            tracker.track(others, token=other.token, user_id=other.external_id)
            await eventually(lambda: tracker.status(order_id) is Status.NEW)
            await emu.get_order_fault("slow", delay=0.5, order_id=order_id)
            await emu.pay(order_id)
            tracker.observe(Observation(order_id, Status.PAID, "webhook", anyio.current_time()))
            await anyio.sleep(0.2)  # its details are on their way
            tracker.forget(order_id)
            await anyio.sleep(0.6)  # and arrive
            await emu.pay(others)
            result = await tracker.wait(others)
    assert result.status is Status.PAID


async def test_a_tracker_closing_after_an_order_was_forgotten_while_its_details_came() -> None:
    """A request waits on an order; the app forgets it once paid, its details still
    on their way, and the tracker closes before they come: the waiter gets ``paid``
    (it hung forever: the closing tracker finishes only the orders it still has)."""
    async with Emulator(ping_interval=0) as emu:
        user = await emu.create_user()
        order_id = await emu.create_order(user)
        tracker = Tracker(
            project_id=emu.project_id, token=user.token, api_url=emu.api_url,
            transports=("webhook",), until="paid", policy=DefaultPolicy(deadline=30.0),
        )  # fmt: skip
        results: list[FinalResult] = []

        async def waiting() -> None:
            results.append(await tracker.wait(order_id))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg, tracker:
                await emu.get_order_fault("slow", delay=5.0, order_id=order_id)
                tg.start_soon(waiting)
                await anyio.sleep(0.1)  # it waits
                at = anyio.current_time()
                tracker.observe(Observation(order_id, Status.PAID, "webhook", at))
                await anyio.sleep(0.2)  # its details are on their way
                tracker.forget(order_id)
    [result] = results
    assert result.status is Status.PAID and result.details is None


class Collected:
    def __init__(self) -> None:
        self.statuses: list[Status] = []

    def observe(self, observation: Observation, /) -> None:
        self.statuses.append(observation.status)

    def report(self, report: HealthReport, /) -> None:
        pass


async def test_a_token_refresh_that_fails_once_is_not_a_rejected_token() -> None:
    """Get order refuses the player's expired token; the app's token callable fails
    once when asked for a fresh one (a blip of its token service), then works.  The
    poller asks it again and reads the order (before, it sent the refused token once
    more and gave up with TokenRejected, never having tried a fresh one)."""
    async with Emulator(ping_interval=0) as emu:
        user = await emu.create_user()
        order_id = await emu.create_order(user)
        await emu.pay(order_id)
        await emu.deliver(order_id)
        expired = user.token
        await emu.revoke_token(expired)
        fresh = await emu.issue_token(user)
        answers: Iterator[str | Exception] = iter([expired, RuntimeError("blip"), fresh])

        async def token() -> str:
            answer = next(answers, fresh)
            if isinstance(answer, Exception):
                raise answer
            return answer

        seen = Collected()
        details = await poll_order(
            order_id, project_id=emu.project_id, token=token, sink=seen,
            api=emu.api_url, config=PollConfig(interval=0.05),
        )  # fmt: skip
    assert details.known_status == "done" and seen.statuses == [Status.DONE]


@asynccontextmanager
async def on_a_healthy_socket(
    code: int, reason: str
) -> AsyncIterator[tuple[Emulator, User, int, Tracker, list[Health]]]:
    """An order followed on a caught-up socket whose channel the server then drops
    with ``code``; the socket's health reports, in order."""
    socket: list[Health] = []

    def on_report(_: int, report: HealthReport) -> None:
        if report.source == "websocket":
            socket.append(report.health)

    async with Emulator(ping_interval=0) as emu:
        user = await emu.create_user()
        order_id = await emu.create_order(user)
        policy = DefaultPolicy(poll_interval=0.05, deadline=10.0)
        tracker = emulator_tracker(
            emu, user, policy=policy, on_report=on_report, fetch_details=False
        )
        async with tracker:
            tracker.track(order_id)
            await eventually(lambda: socket and socket[-1] is Health.HEALTHY)
            assert await emu.unsubscribe(user, code, reason) == 1
            yield emu, user, order_id, tracker, socket


@pytest.mark.parametrize("code", [2000, 0])
async def test_a_channel_the_server_drops_is_covered_by_get_order(code: int) -> None:
    """The server unsubscribes the player's channel on a live socket (code 2000: for
    good; or no code at all): nothing more of it comes there, so Get order covers the
    order (before, the socket stayed healthy with no channel, nothing polled, and the
    order waited for the socket's 5-minute lifespan or timed out)."""
    dropped = on_a_healthy_socket(code, "server unsubscribe")
    async with dropped as (emu, _, order_id, tracker, _):
        await emu.pay(order_id)
        await emu.deliver(order_id)
        result = await tracker.wait(order_id)
    assert result.status is Status.DONE and result.source == "polling"


async def test_a_channel_the_server_asks_to_subscribe_again_comes_back_by_reconnecting() -> None:
    """Code 2500 and up ask the client to subscribe again; a server-side channel comes
    back with a new connection: the socket is healthy again and hears the order (a
    later connect reply restates every channel, so nothing stays 'dropped')."""
    async with on_a_healthy_socket(2500, "insufficient state") as (
        emu,
        user,
        order_id,
        tracker,
        socket,
    ):
        await eventually(lambda: socket[-2:] == [Health.DEGRADED, Health.HEALTHY])
        assert len(await emu.connections(user)) == 2
        await emu.pay(order_id)
        await emu.deliver(order_id)
        result = await tracker.wait(order_id)
    assert result.status is Status.DONE


async def test_a_server_asking_to_subscribe_again_on_every_connection_makes_no_fast_loop() -> None:
    """A server whose every connection drops the channel with code 2500 (its broker's
    state broken for a while): each new connection went at once, some 350 sockets a
    second, each with a Get order for every order on it.  The reconnects now go
    through the delays of a connection lost soon after catching up, doubling."""
    async with Emulator(ping_interval=0) as emu:
        user = await emu.create_user()
        order_id = await emu.create_order(user)
        tracker = emulator_tracker(
            emu, user, fetch_details=False, max_reconnect_delay=5.0, policy=DefaultPolicy()
        )
        async with tracker:
            tracker.track(order_id)
            await emu.wait_connected(user)
            with anyio.move_on_after(3.0):
                while True:
                    await emu.unsubscribe(user, 2500, "insufficient state")
                    await anyio.sleep(0.01)
            sockets = len(await emu.connections(user))
            asked = len((await emu.order(order_id))["get_order_requests"])
            await emu.pay(order_id)
            await emu.deliver(order_id)
            with anyio.fail_after(15):
                result = await tracker.wait(order_id)
    assert result.status is Status.DONE
    assert 3 <= sockets <= 12, sockets  # 0.1 s first, doubling: about 6 in 3 s
    # Each lost channel is a gap: a check, and a poll while the socket is down.  A few
    # Get orders per connection, and the connections few.
    assert asked <= 3 * sockets, (asked, sockets)


async def test_the_first_get_order_check_honours_a_retry_after() -> None:
    """Get order answers 429 with ``Retry-After: 2`` to the check made when tracking
    starts: it asks again no sooner than 2 s later, as the poller does (before, after
    0.5 s: after a host sleep thousands of checks ignored a rate limit together)."""
    async with Emulator(ping_interval=0) as emu:
        user = await emu.create_user()
        order_id = await emu.create_order(user)
        await emu.get_order_fault("rate_limit", retry_after=2, seconds=2.0, order_id=order_id)
        async with emulator_tracker(emu, user, fetch_details=False) as tracker:
            tracker.track(order_id)

            async def asked() -> list[float]:
                return list((await emu.order(order_id))["get_order_requests"])

            await eventually(lambda: _twice(asked()), timeout=10)
            first, second = (await asked())[:2]
    assert second - first >= 1.9


async def _twice(times: Awaitable[list[float]]) -> bool:
    return len(await times) >= 2


async def test_an_odd_detail_in_get_order_does_not_hide_the_status() -> None:
    """Get order says ``done`` for a free order whose price has a null currency (its
    shape there is unconfirmed): the order settles as done, and ``details_error`` says
    the content was unread (before, the whole answer was refused and asked again
    until the deadline: a TrackingTimeout for a delivered order)."""
    body = (
        b'{"order_id": 2, "status": "done", "content": {"price": {"amount": "0",'
        b' "currency": null}, "is_free": true, "items": []}}'
    )

    async def handler(request: Request) -> bytes:
        return http_response(200, body, {"Content-Type": "application/json"})

    async with loopback_server(handler) as server, Tracker(
        project_id=1, token="t", api_url=server.url + "/api", transports=("polling",),
        policy=DefaultPolicy(poll_interval=0.05, deadline=5.0),
    ) as tracker:  # fmt: skip
        result = await tracker.wait(2)
    assert result.status is Status.DONE and result.succeeded
    assert result.details is not None and result.details.items == ()
    assert "currency" in str(result.details_error)


async def test_details_that_lag_behind_the_settling_status_are_asked_again() -> None:
    """The socket says ``done`` while Get order still says ``paid`` for a moment: the
    result's details are asked for again until they say ``done`` (before, the result
    said done and its details paid)."""
    async with Emulator(ping_interval=0) as emu:
        user = await emu.create_user()
        order_id = await emu.create_order(user)
        await emu.pay(order_id)
        async with emulator_tracker(emu, user) as tracker:
            tracker.track(order_id)
            await eventually(lambda: tracker.status(order_id) is Status.PAID)
            await emu.publish_raw(user, {"order_id": order_id, "status": "done"})
            await eventually(lambda: tracker.status(order_id) is Status.DONE)
            await emu.set_status(order_id, "done")  # Get order catches up
            result = await tracker.wait(order_id)
    assert result.status is Status.DONE and result.details_error is None
    assert result.details is not None and result.details.status == "done"


async def test_details_are_asked_again_after_a_passing_failure() -> None:
    """One 503 (a load balancer's blip) as the settled order's details are fetched
    cost the result its items: ``details`` None beside ``done``, though most of
    ``details_timeout`` was left.  A passing failure is asked again for a moment,
    as details lagging behind the status are."""
    async with Emulator(ping_interval=0) as emu:
        user = await emu.create_user()
        order_id = await emu.create_order(user)
        await emu.pay(order_id)
        async with emulator_tracker(emu, user) as tracker:
            tracker.track(order_id)
            await eventually(lambda: tracker.status(order_id) is Status.PAID)
            await emu.get_order_fault("error", status=503, count=1, order_id=order_id)
            await emu.deliver(order_id)
            result = await tracker.wait(order_id)
    assert result.status is Status.DONE and result.details_error is None
    assert result.details is not None and result.details.status == "done"
    assert [item.sku for item in result.details.items] == ["com.xsolla.item_1"]


class FailsForOneOrder:
    """An application's HttpClient with a bug that shows for one order's URL only."""

    def __init__(self, inner: HttpClient, order_id: int) -> None:
        self.inner, self.order_id = inner, order_id

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109 (the HttpClient interface)
    ) -> HttpResponse:
        if url.endswith(f"/{self.order_id}"):
            raise RuntimeError("a bug in the app's HTTP client")
        return await self.inner.request(method, url, headers, body, timeout)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_bug_in_one_orders_polling_ends_that_order_only() -> None:
    """Get order raising something no transport expects (an app's HttpClient with a
    bug, or one of ours) ends polling for that order; another player's order still
    settles (before, it ended the Tracker's task group and every order with it)."""
    async with Emulator(ping_interval=0) as emu:
        user = await emu.create_user()
        broken, fine = await emu.create_order(user), await emu.create_order(user)
        await emu.pay(fine)
        await emu.deliver(fine)
        http = FailsForOneOrder(open_http_client(), broken)
        policy = DefaultPolicy(poll_interval=0.05, deadline=10.0)
        tracker = emulator_tracker(emu, user, policy=policy, transports=("polling",), http=http)
        async with tracker:
            with pytest.raises(TransportError):
                await tracker.wait(broken)
            result = await tracker.wait(fine)
        await http.aclose()
    assert result.status is Status.DONE


async def test_an_order_settled_by_the_sockets_replay_while_attaching_lets_the_socket_go() -> None:
    """The player's socket, open for order A, has heard order B reach ``done`` before
    the game tracks B (it tracks B after the player paid).  Attaching B replays that
    status and B settles inside the attach, before the attachment was stored: nothing
    ever let go of it, and the socket stayed open for the tracker's life."""
    async with Emulator(ping_interval=1.0) as emu:
        await _replayed_settle_lets_go(emu)


async def _replayed_settle_lets_go(emu: Emulator) -> None:
    user = await emu.create_user()
    a, b = await emu.create_order(user), await emu.create_order(user)
    async with emulator_tracker(emu, user, fetch_details=False) as tracker:
        tracker.track(a)
        await emu.wait_connected(user)
        for status in ("paid", "done"):
            await emu.set_status(b, status)
        pool = tracker._pool
        assert pool is not None
        live = pool._live[pool.connections()[0].key]
        await eventually(lambda: "done" in live._subscribers.statuses_seen(b))
        assert (await tracker.wait(b)).status is Status.DONE
        for status in ("paid", "done"):
            await emu.set_status(a, status)
        assert (await tracker.wait(a)).status is Status.DONE
        tracker.forget(a)
        tracker.forget(b)
        assert [c.attachments for c in pool.connections()] in ([], [0])
