"""Edges of the life cycle where a paying player got a wrong answer (found by a review,
each test failing before its fix), on the emulator, on asyncio and trio: the last
seconds of an expired order's grace, an ``expired`` replayed from a shared socket,
giving an order up just as it settles and tracking it again, and an application's
token callable that fails once or hangs."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager

import anyio
import pytest
from support_tracker import emulator_tracker

from orderfsm import Change, Observation, Status, Tracker
from orderfsm.errors import NoSourceLeft, OrderNotTracked
from orderfsm.supervisor.policy import DefaultPolicy
from orderfsm.testing import eventually
from transports.emulator import Emulator

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(seed=29, ping_interval=1.0) as emulator:
        yield emulator


@asynccontextmanager
async def websocket_only(
    emu: Emulator, policy: DefaultPolicy
) -> AsyncIterator[tuple[Tracker, int]]:
    """A tracker on the WebSocket alone (fetching details, as by default), tracking a
    new order for ``paid``, its socket connected."""
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    async with emulator_tracker(
        emu, user, policy=policy, transports=("websocket",), until="paid"
    ) as tracker:
        tracker.track(order_id)
        await emu.wait_connected(user)
        yield tracker, order_id


async def settles_paid_unheard(emu: Emulator, tracker: Tracker, order_id: int) -> None:
    """The order is paid where none of the tracker's sources hear it (a publication
    lost, no webhook), and the tracker still settles it as paid."""
    await emu.set_status(order_id, "paid", publish=False)
    with anyio.fail_after(10):
        result = await tracker.wait(order_id)
    assert result.status is Status.PAID and result.succeeded


async def asked_more(asked: Callable[[], Awaitable[int]], before: int) -> bool:
    return await asked() > before


async def expired_seen(tracker: object, order_id: int) -> None:
    await eventually(lambda: tracker.status(order_id) is Status.EXPIRED)  # type: ignore[attr-defined]


async def test_a_payment_in_the_last_seconds_of_the_grace_is_not_lost(emu: Emulator) -> None:
    """During the grace an expired order is polled slowly (here every 1 s); it is paid
    after the last slow poll and before the grace ends.  Get order is asked once more
    when the grace is over, so the order settles as paid, not as expired."""
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    policy = DefaultPolicy(
        poll_interval=0.05, deadline=30.0, expired_grace=1.8, expired_poll_interval=1.0
    )

    async def asked() -> int:
        return len((await emu.order(order_id))["get_order_requests"])

    async with emulator_tracker(emu, user, policy=policy, transports=("polling",)) as tracker:
        tracker.track(order_id, until="paid")
        await emu.set_status(order_id, "expired")
        await expired_seen(tracker, order_id)
        before = await asked()
        # Paid just after the slow poll at +1.0 s: the next would be at +2.0 s, past the
        # grace's end at +1.8 s, where only the last look can hear it.
        await eventually(lambda: asked_more(asked, before))
        await emu.set_status(order_id, "paid")
        result = await tracker.wait(order_id)
    assert result.status is Status.PAID and result.succeeded


async def test_a_tracker_that_does_not_poll_still_looks_last_before_settling_expired(
    emu: Emulator,
) -> None:
    """A WebSocket-only tracker (fetching details, as by default): the payment's
    publication during the grace never reached the socket (recovery is best effort,
    centrifugo#165).  The Get order asked at the end of the grace is the last look,
    so the order settles as paid (it settled as expired, the same Get order's answer,
    ``paid``, arriving as its details: a failure whose details said paid)."""
    policy = DefaultPolicy(deadline=30.0, expired_grace=1.0)
    async with websocket_only(emu, policy) as (tracker, order_id):
        await emu.expire(order_id)
        await expired_seen(tracker, order_id)
        await settles_paid_unheard(emu, tracker, order_id)


async def test_a_webhook_only_tracker_looks_last_before_settling_expired(emu: Emulator) -> None:
    """A tracker fed only by the application (webhooks and its own sources, fetching
    details as by default) hears ``expired``; the payment that followed reached none
    of its sources.  Its grace ends with the same last Get order as a socket's, so the
    order settles as paid (it settled as expired, with details saying ``paid``)."""
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    policy = DefaultPolicy(deadline=30.0, expired_grace=1.0)
    async with emulator_tracker(
        emu, user, policy=policy, transports=("webhook",), until="paid"
    ) as tracker:
        tracker.track(order_id)
        await emu.set_status(order_id, "expired", publish=False)
        tracker.observe(Observation(order_id, Status.EXPIRED, "webhook", anyio.current_time()))
        await expired_seen(tracker, order_id)
        await settles_paid_unheard(emu, tracker, order_id)


@pytest.mark.parametrize("expired_first", [False, True], ids=["new", "expired"])
async def test_a_websocket_only_tracker_looks_once_more_when_its_socket_lifespan_ends(
    emu: Emulator, expired_first: bool
) -> None:
    """A tracker on the WebSocket alone (fetching details, as by default) gives the
    socket up when its lifespan ends, and nothing else follows the order.  The payment
    meanwhile never reached the socket (a lost publication; for an expired order, in
    its grace).  One last Get order before giving up finds it paid (it ended with
    ``NoSourceLeft``, Get order then asked for nothing)."""
    policy = DefaultPolicy(deadline=30.0, expired_grace=20.0, websocket_lifespan=1.5)
    async with websocket_only(emu, policy) as (tracker, order_id):
        if expired_first:
            await emu.expire(order_id)
            await expired_seen(tracker, order_id)
        await settles_paid_unheard(emu, tracker, order_id)


async def test_a_websocket_only_order_still_new_when_its_socket_lifespan_ends_asks_once(
    emu: Emulator,
) -> None:
    """The last Get order before giving up is one request, and an order it finds
    unchanged still ends with :class:`NoSourceLeft` (nothing follows it)."""
    policy = DefaultPolicy(deadline=30.0, websocket_lifespan=1.0)
    async with websocket_only(emu, policy) as (tracker, order_id):
        asked = len((await emu.order(order_id))["get_order_requests"])
        with anyio.fail_after(10), pytest.raises(NoSourceLeft):
            await tracker.wait(order_id)
    assert len((await emu.order(order_id))["get_order_requests"]) == asked + 1


async def test_an_order_that_stays_expired_asks_get_order_once_when_its_grace_ends(
    emu: Emulator,
) -> None:
    """The last look's answer, still ``expired``, is the order's details: Get order is
    not asked a second time for them (it was, back to back)."""
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    policy = DefaultPolicy(deadline=30.0, expired_grace=1.0)
    async with emulator_tracker(emu, user, policy=policy) as tracker:
        tracker.track(order_id)
        await emu.wait_connected(user)
        await eventually(lambda: len(tracker.stats().get_order) > 0)  # the first check
        await emu.expire(order_id)
        await expired_seen(tracker, order_id)
        asked = len((await emu.order(order_id))["get_order_requests"])
        with anyio.fail_after(10):
            result = await tracker.wait(order_id)
    assert result.status is Status.EXPIRED
    assert result.details is not None and result.details.status == "expired"
    assert len((await emu.order(order_id))["get_order_requests"]) == asked + 1


async def test_an_expired_replayed_by_a_shared_socket_gets_its_whole_grace(
    emu: Emulator,
) -> None:
    """The player's socket is open for another order and remembers this one's
    ``expired`` from well over a grace ago.  Tracking starts now: the grace runs from
    now, so the payment under way 0.2 s later is heard (before, the replayed status
    kept its old time and the order settled as expired at once)."""
    user = await emu.create_user()
    other = await emu.create_order(user)
    order_id = await emu.create_order(user)
    policy = DefaultPolicy(poll_interval=0.05, deadline=30.0, expired_grace=1.0)
    async with emulator_tracker(emu, user, policy=policy, until="paid") as tracker:
        tracker.track(other)  # keeps the player's socket open and subscribed
        await emu.wait_connected(user)
        await emu.set_status(order_id, "expired")
        await anyio.sleep(1.5)  # the expiry is now older than the grace
        tracker.track(order_id)
        await anyio.sleep(0.2)
        await emu.set_status(order_id, "paid")
        result = await tracker.wait(order_id)
    assert result.status is Status.PAID


async def test_an_order_given_up_as_it_settles_keeps_its_settled_result(
    emu: Emulator,
) -> None:
    """The app forgets the order from ``on_change`` as soon as the settling change comes:
    the ``wait()`` already waiting gets ``done``, not "untracked before it settled"."""
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    trackers: list[object] = []

    def on_change(change: Change) -> None:
        if change.settled:
            trackers[0].forget(change.order_id)  # type: ignore[attr-defined]

    async with emulator_tracker(emu, user, on_change=on_change) as tracker:
        trackers.append(tracker)
        tracker.track(order_id)
        await emu.wait_connected(user)
        async with anyio.create_task_group() as tasks:
            results: list[Status] = []

            async def wait() -> None:
                results.append((await tracker.wait(order_id)).status)

            tasks.start_soon(wait)
            await emu.run_script(order_id, [(0.1, "paid"), (0.1, "done")])
    assert results == [Status.DONE]


async def test_an_order_tracked_again_after_a_wait_was_given_up_is_followed(
    emu: Emulator,
) -> None:
    """A screen gives ``wait()`` half a second and moves on (which untracks the order);
    the player comes back to it and the app waits again: the order is followed anew
    (before, the second wait raised ``TrackerClosed`` at once and its news was dropped)."""
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    async with emulator_tracker(emu, user) as tracker:
        with anyio.move_on_after(0.5):
            await tracker.wait(order_id)
        await emu.run_script(order_id, [(0.3, "paid"), (0.1, "done")])
        result = await tracker.wait(order_id)
    assert result.status is Status.DONE


STALL_NOTICED = {
    "max_server_ping_delay": 1.0,
    "min_reconnect_delay": 0.3,
    "max_reconnect_delay": 0.5,
}
"""A stalled socket is noticed within a second (and reconnected after a moment)."""


async def test_one_failure_of_the_token_callable_does_not_end_polling(emu: Emulator) -> None:
    """The socket stalls, polling takes over, and the app's token callable fails once
    just then (its auth service blinked): polling backs off and goes on, so the
    payment made after the socket's lifespan is heard."""
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    failures = [0]

    async def token() -> str:
        if failures[0]:
            failures[0] -= 1
            raise ConnectionError("auth service blip")
        return user.token

    policy = DefaultPolicy(poll_interval=0.2, deadline=30.0, websocket_lifespan=3.0)
    async with emulator_tracker(emu, user, token=token, policy=policy, **STALL_NOTICED) as tracker:
        tracker.track(order_id)
        await emu.wait_connected(user)
        await eventually(lambda: tracker.stats().get_order)  # the start's Get order is done
        failures[0] = 1
        await emu.stall_connections(user, seconds=2.0)
        await emu.run_script(order_id, [(4.0, "pay"), (0.2, "deliver")])
        result = await tracker.wait(order_id)
    assert result.status is Status.DONE and failures == [0]


async def test_a_hung_token_callable_does_not_hold_up_other_players_checks(
    emu: Emulator,
) -> None:
    """32 orders whose token callable never answers ask Get order at the start of
    tracking: the token is fetched before a check takes one of the 32 slots shared by
    every order, so another player's order is still checked at once."""
    stuck = await emu.create_user()
    player = await emu.create_user()
    order_id = await emu.create_order(player)
    await emu.set_status(order_id, "done")
    await emu.new_epoch(player)  # its socket's history is gone: only Get order can tell

    async def hung() -> str:
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async with emulator_tracker(emu, player, **STALL_NOTICED) as tracker:
        for _ in range(32):
            tracker.track(await emu.create_order(stuck), token=hung, user_id=stuck.external_id)
        await anyio.sleep(0.2)  # their checks are under way
        tracker.track(order_id)
        with anyio.fail_after(5):  # before: only when the hung orders reached their deadline
            result = await tracker.wait(order_id)
    assert result.status is Status.DONE


async def test_a_refusal_seen_by_the_first_check_does_not_end_polling(emu: Emulator) -> None:
    """Get order answers 401 twice at the start of tracking (a fresh token the second
    time); every later request would be answered.  When the socket then fails for
    good, polling still takes over (before: the order ended with ``TokenRejected``)."""
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    await emu.get_order_fault("error", status=401, count=2, order_id=order_id)
    try:
        async with emulator_tracker(emu, user) as tracker:
            tracker.track(order_id)
            await emu.wait_connected(user)
            await anyio.sleep(0.5)
            await emu.close_connections(user, code=3501, reason="bad request")  # for good
            await emu.run_script(order_id, [(0.2, "pay"), (0.2, "deliver")])
            result = await tracker.wait(order_id)
    finally:
        await emu.clear_faults()
    assert result.status is Status.DONE


async def test_waiting_again_for_an_order_untracked_after_it_settled_returns_its_result(
    emu: Emulator,
) -> None:
    """The app untracks an order once it has its result, then asks again: the result is
    the one it settled with, at once (tracking it afresh would never see a change)."""
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    async with emulator_tracker(emu, user) as tracker:
        tracker.track(order_id)
        await emu.wait_connected(user)
        await emu.run_script(order_id, [(0.1, "paid"), (0.1, "done")])
        assert (await tracker.wait(order_id)).status is Status.DONE
        tracker.untrack(order_id)
        with anyio.fail_after(5):
            again = await tracker.wait(order_id)
    assert again.status is Status.DONE


async def test_an_order_untracked_in_its_grace_and_waited_for_again_still_settles(
    emu: Emulator,
) -> None:
    """Untracked while expired, then waited for again: followed afresh, its grace runs
    again and it settles as expired (not a timeout at the deadline)."""
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    policy = DefaultPolicy(
        poll_interval=0.05, deadline=20.0, expired_grace=1.0, expired_poll_interval=0.5
    )
    async with emulator_tracker(emu, user, policy=policy, transports=("polling",)) as tracker:
        tracker.track(order_id)
        await emu.set_status(order_id, "expired")
        await expired_seen(tracker, order_id)
        tracker.untrack(order_id)
        with anyio.fail_after(10):
            result = await tracker.wait(order_id)
    assert result.status is Status.EXPIRED


async def test_news_between_giving_an_order_up_and_waiting_again_is_kept() -> None:
    """A webhook arrives after the screen gave the order up and before the player came
    back to it: kept, as news of an order not tracked yet is, and told on the wait."""
    from orderfsm import Observation, Tracker

    async with Tracker(
        project_id=1,
        transports=("webhook",),
        until="paid",
        fetch_details=False,
        policy=DefaultPolicy(deadline=10.0),
    ) as tracker:
        with anyio.move_on_after(0.2):
            await tracker.wait(42)  # given up: untracked
        tracker.observe(Observation(42, Status.PAID, source="webhook", at=anyio.current_time()))
        with anyio.fail_after(5):
            result = await tracker.wait(42)
    assert result.status is Status.PAID


async def test_a_second_wait_given_up_stops_the_tracking_it_started_again(
    emu: Emulator,
) -> None:
    """As the first did: ``wait()`` given up stops what it started (the second one had
    started tracking afresh, and left the order followed until its deadline)."""
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    async with emulator_tracker(emu, user) as tracker:
        for _ in range(2):
            with anyio.move_on_after(0.3):
                await tracker.wait(order_id)
        stats = tracker.stats()
    assert (stats.orders_tracked, stats.orders_active) == (2, 0)


async def test_a_user_id_a_journal_cannot_store_is_refused_when_tracking_starts(
    emu: Emulator,
) -> None:
    """A NUL in a user id: PostgreSQL refuses it in text, and a fleet instance whose
    journal write is refused held back every later write of its own (a review's
    finding).  Refused where the id is given, with nothing tracked."""
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    with pytest.raises(ValueError, match="NUL"):
        Tracker(project_id=emu.project_id, token=user.token, user_id="player\x00one")
    async with emulator_tracker(emu, user) as tracker:
        with pytest.raises(ValueError, match="NUL"):
            tracker.track(order_id, token=user.token, user_id="player\x00one")
        with pytest.raises(OrderNotTracked):
            tracker.status(order_id)
        tracker.track(order_id, token=user.token, user_id="player-one", until="paid")
        await emu.set_status(order_id, "paid")
        assert (await tracker.wait(order_id)).status is Status.PAID


def webhook_tracker(**options: object) -> Tracker:
    """A tracker fed by webhooks alone (``observe``), paid being its goal."""
    return Tracker(
        project_id=1,
        transports=("webhook",),
        until="paid",
        fetch_details=False,
        policy=DefaultPolicy(deadline=10.0),
        **options,  # type: ignore[arg-type]
    )


def webhook_says(tracker: Tracker, order_id: int, status: Status) -> None:
    tracker.observe(Observation(order_id, status, source="webhook", at=anyio.current_time()))


@pytest.mark.parametrize("other", ["wait", "watch", "track"])
async def test_a_wait_given_up_leaves_the_order_followed_for_whoever_else_follows_it(
    other: str,
) -> None:
    """Two requests wait on one order (a client retried) and the first, which started
    the tracking, gives up: the other ``wait()``, a ``watch()`` or the app's own
    ``track()`` still follows the order (it was untracked for everyone: the others got
    ``TrackerClosed`` and ``on_change`` heard nothing more)."""
    heard: list[Status] = []
    async with webhook_tracker(on_change=lambda c: heard.append(c.status)) as tracker:
        got: list[Status] = []

        async def follow() -> None:
            if other == "wait":
                got.append((await tracker.wait(42)).status)
            elif other == "watch":
                got.extend([c.status async for c in tracker.watch(42)])

        async with anyio.create_task_group() as tasks:
            with anyio.move_on_after(0.2):
                async with anyio.create_task_group() as impatient:
                    impatient.start_soon(tracker.wait, 42)
                    await anyio.sleep(0.05)
                    if other == "track":
                        tracker.track(42)
                    tasks.start_soon(follow)
            webhook_says(tracker, 42, Status.PAID)
        assert tracker.status(42) is Status.PAID
        if other == "track":
            got.append((await tracker.wait(42)).status)
    assert got == [Status.PAID]
    assert heard == [Status.PAID]


async def test_two_waits_on_one_order_both_given_up_stop_its_tracking() -> None:
    """Whichever gives up last stops what the first started: the client retried, then
    left (the order was followed on to its deadline, ten minutes by default)."""
    async with webhook_tracker() as tracker:
        async with anyio.create_task_group() as tasks:
            for budget in (0.1, 0.3):
                tasks.start_soon(wait_given_up, tracker, 42, budget)
                await anyio.sleep(0.05)
        stats = tracker.stats()
    assert (stats.orders_tracked, stats.orders_active) == (1, 0)


async def wait_given_up(tracker: Tracker, order_id: int, budget: float) -> None:
    with anyio.move_on_after(budget):
        await tracker.wait(order_id)


async def test_a_wait_given_up_while_a_settled_orders_details_come_keeps_its_refund(
    emu: Emulator,
) -> None:
    """``wait()`` with a budget that ends after the order settled but before its details
    came (a slow Get order): the order stays followed, so a later refund is told (it
    was untracked, and the refund dropped: ``status()`` said ``done`` for good)."""
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    heard: list[Status] = []
    async with emulator_tracker(emu, user, on_change=lambda c: heard.append(c.status)) as tracker:
        await emu.get_order_fault("slow", delay=4.0)
        async with anyio.create_task_group() as tasks:

            async def impatient() -> None:
                with anyio.move_on_after(2.0):
                    await tracker.wait(order_id)

            tasks.start_soon(impatient)
            await emu.wait_connected(user)
            await emu.run_script(order_id, [(0.1, "paid"), (0.1, "done")])
        await emu.clear_faults()
        assert tracker.status(order_id) is Status.DONE
        webhook_says(tracker, order_id, Status.CANCELED)
        status = tracker.status(order_id)
    assert status is Status.CANCELED
    assert heard == [Status.NEW, Status.PAID, Status.DONE, Status.CANCELED]


@pytest.mark.parametrize("refund", ["after track()", "before track()"])
async def test_an_order_untracked_after_it_settled_and_tracked_again_hears_its_refund(
    refund: str,
) -> None:
    """``untrack()`` once the result is in, ``track()`` later to hear refunds: the refund,
    after the new ``track()`` or between the two, is applied and told once (``track()``
    was a no-op on the released order, and the refund was dropped)."""
    heard: list[Status] = []
    async with webhook_tracker(on_change=lambda c: heard.append(c.status)) as tracker:
        webhook_says(tracker, 42, Status.PAID)
        assert (await tracker.wait(42)).status is Status.PAID
        tracker.untrack(42)
        if refund == "before track()":
            webhook_says(tracker, 42, Status.CANCELED)
        tracker.track(42)
        if refund == "after track()":
            webhook_says(tracker, 42, Status.CANCELED)
        with anyio.fail_after(5):  # it ends with the refund, final
            followed = [c.status async for c in tracker.watch(42, follow=True)]
        status = tracker.status(42)
    assert status is Status.CANCELED
    assert heard == [Status.PAID, Status.CANCELED]
    assert followed == [Status.PAID, Status.CANCELED]


async def test_the_tokens_of_forgotten_orders_are_not_kept() -> None:
    """Each purchase tracked with the player's current token (they rotate): a backend
    that forgets its orders once settled must not keep one ``User``, and its token, per
    token it was ever given (50,000 orders kept 66 MB)."""
    async with webhook_tracker() as tracker:
        for order_id in range(1, 201):
            tracker.track(order_id, token=f"jwt-{order_id}", user_id=f"player-{order_id % 7}")
        for order_id in range(1, 200):
            webhook_says(tracker, order_id, Status.PAID)
            tracker.forget(order_id)
        gc.collect()
        kept = len(tracker._users)
        webhook_says(tracker, 200, Status.PAID)
        assert (await tracker.wait(200)).status is Status.PAID
    assert kept == 1  # the order still tracked keeps its own


async def test_an_order_untracked_while_its_details_come_and_tracked_again_is_told_once(
    emu: Emulator,
) -> None:
    """Untracked once settled, its details still on their way (a slow Get order), then
    tracked again: it is the same order, followed again, not tracked afresh (every
    change was told twice to ``on_change``: an app granting there granted twice)."""
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    heard: list[Status] = []
    async with emulator_tracker(emu, user, on_change=lambda c: heard.append(c.status)) as tracker:
        tracker.track(order_id)
        await emu.wait_connected(user)
        await emu.get_order_fault("slow", delay=2.0)
        await emu.run_script(order_id, [(0.1, "paid"), (0.1, "done")])
        await eventually(lambda: tracker.status(order_id) is Status.DONE)
        tracker.untrack(order_id)
        tracker.track(order_id)
        await emu.clear_faults()
        with anyio.fail_after(15):
            result = await tracker.wait(order_id)
    assert result.status is Status.DONE
    assert heard == [Status.NEW, Status.PAID, Status.DONE]
