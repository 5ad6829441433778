"""The one-shot Get order check each order gets when tracking starts, at scale."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from support_tracker import emulator_tracker

from orderfsm import Status, Tracker
from orderfsm.supervisor.admission import STARTING_AT_ONCE
from orderfsm.supervisor.policy import DefaultPolicy
from transports.emulator import Emulator

pytestmark = pytest.mark.anyio


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(seed=61) as emulator:
        yield emulator


def first_wave(asked: dict[int, list[float]]) -> list[int]:
    """The orders asked before any answer could free a place: none comes back sooner
    than 1.5 s (the slow fault) after the first request arrived.  Read from the
    emulator's arrival times, so a machine slow to let the test look changes nothing."""
    first = min(times[0] for times in asked.values() if times)
    return [o for o, times in asked.items() if times and times[0] < first + 1.4]


async def requests_for(emu: Emulator, orders: list[int]) -> dict[int, list[float]]:
    """When Get order was asked for each order, as the emulator saw it."""
    asked = (await emu.stats()).get_order_requests
    return {order_id: asked.get(order_id, []) for order_id in orders}


async def track_through_a_slow_start(emu: Emulator, tracker: Tracker, orders: list[int]) -> None:
    """Track every order while each Get order answer is 1.5 s away, then answer at
    once until every order was asked."""
    await emu.get_order_fault("slow", delay=1.5)
    for order_id in orders:
        tracker.track(order_id)
    await anyio.sleep(0.75)  # the first ones are in flight, none answered yet
    await emu.clear_faults()
    with anyio.fail_after(20):
        while not all((await requests_for(emu, orders)).values()):  # noqa: ASYNC110
            await anyio.sleep(0.05)


async def test_many_orders_tracked_at_once_are_checked_a_few_at_a_time(emu: Emulator) -> None:
    """A backend resuming ten thousand orders must not send ten thousand Get orders at
    once: Xsolla's API would see a herd, and the collector a million half-done requests."""
    user = await emu.create_user()
    orders = [await emu.create_order(user) for _ in range(STARTING_AT_ONCE + 20)]
    async with emulator_tracker(emu, user, fetch_details=False) as tracker:
        await track_through_a_slow_start(emu, tracker, orders)
        wave = first_wave(await requests_for(emu, orders))
        await emu.set_status(orders[0], "canceled")
        assert (await tracker.wait(orders[0])).status is Status.CANCELED
    assert 0 < len(wave) <= STARTING_AT_ONCE


async def test_orders_waiting_for_their_check_hold_no_task_each(emu: Emulator) -> None:
    """Ten thousand orders tracked at once were ten thousand tasks waiting for a slot
    (some 60 MB at their peak, which the allocator kept): orders wait as entries of a
    queue, and the tasks alive stay bounded however many orders wait."""
    user = await emu.create_user()
    orders = [await emu.create_order(user) for _ in range(STARTING_AT_ONCE + 300)]
    await emu.get_order_fault("slow", delay=2.0)
    async with emulator_tracker(emu, user, fetch_details=False) as tracker:
        before = len(anyio.get_running_tasks())
        for order_id in orders:
            tracker.track(order_id)
        await anyio.sleep(0.5)  # every started check is in flight, the rest queued
        alive = len(anyio.get_running_tasks()) - before
        await emu.clear_faults()
        await emu.set_status(orders[-1], "canceled")  # the last queued is still followed
        with anyio.fail_after(20):
            assert (await tracker.wait(orders[-1])).status is Status.CANCELED
    assert 0 < alive <= STARTING_AT_ONCE + 20


async def test_a_check_backing_off_gives_its_place_to_the_next_order(emu: Emulator) -> None:
    """Orders whose Get order keeps failing for a reason of their own (here: unknown
    ids, asked again through their not-found grace) must not hold back the first look
    at the others."""
    user = await emu.create_user()
    unknown = [10_000_000 + n for n in range(STARTING_AT_ONCE)]
    real = await emu.create_order(user)
    async with emulator_tracker(emu, user, fetch_details=False, not_found_grace=30.0) as tracker:
        for order_id in unknown:
            tracker.track(order_id)
        await anyio.sleep(0.3)  # every place taken by a check that got a 404
        tracker.track(real)
        with anyio.fail_after(3):  # well before any unknown order's grace runs out
            while not (await emu.stats()).get_order_requests.get(real):  # noqa: ASYNC110
                await anyio.sleep(0.05)


async def test_polling_only_orders_start_a_few_at_a_time_with_one_get_order_each(
    emu: Emulator,
) -> None:
    """A polling-only tracker resuming many orders: their pollers' first requests are
    let through a few at a time, like the checks (a herd otherwise, and a loop too
    busy to apply the journal's news for seconds), and each order's first request is
    its only one until its interval: the poller's first answer is the check."""
    user = await emu.create_user()
    orders = [await emu.create_order(user) for _ in range(STARTING_AT_ONCE + 40)]
    policy = DefaultPolicy(poll_interval=5.0)
    async with emulator_tracker(
        emu, user, transports=("polling",), policy=policy, fetch_details=False
    ) as tracker:
        await track_through_a_slow_start(emu, tracker, orders)
        await anyio.sleep(0.5)  # a second request per order would be on its way by now
        asked = await requests_for(emu, orders)
        await emu.set_status(orders[-1], "canceled")
        with anyio.fail_after(15):  # the last one's next poll hears it
            assert (await tracker.wait(orders[-1])).status is Status.CANCELED
    assert 0 < len(first_wave(asked)) <= STARTING_AT_ONCE
    assert {len(times) for times in asked.values()} == {1}, asked


@pytest.mark.parametrize("transports", [("websocket", "polling"), ("polling",)])
async def test_a_rate_limited_xsolla_gets_a_few_first_requests_per_retry_after(
    emu: Emulator, transports: tuple[str, ...]
) -> None:
    """Xsolla answering 429 to every Get order: a first request gave its place back at
    its 429, so the next order's started at once, and ten thousand orders sent ten
    thousand requests within a second, each told to wait.  A 429 now keeps its place
    through its first Retry-After: no more first requests than places until it has
    passed, checks (beside the WebSocket) and pollers' first polls alike."""
    user = await emu.create_user()
    orders = [await emu.create_order(user) for _ in range(2 * STARTING_AT_ONCE + 20)]
    async with emulator_tracker(emu, user, fetch_details=False, transports=transports) as tracker:
        # Every answer a 429 until the first wave's retries are due (Retry-After 2 s):
        # a first request answered 200 (a slow host's late one) would free its place.
        await emu.get_order_fault("rate_limit", retry_after=2, seconds=3.0)
        for order_id in orders:
            tracker.track(order_id)
        with anyio.fail_after(30):
            while not all((await requests_for(emu, orders)).values()):  # noqa: ASYNC110
                await anyio.sleep(0.05)
        asked = await requests_for(emu, orders)
        await emu.set_status(orders[-1], "canceled")
        assert (await tracker.wait(orders[-1])).status is Status.CANCELED
    first = min(times[0] for times in asked.values())
    # Before any Retry-After (2 s) can have passed, read from the emulator's clock.
    early = [o for o, times in asked.items() if times[0] < first + 1.5]
    assert 0 < len(early) <= STARTING_AT_ONCE, len(early)


def asked_since(asked: dict[int, list[float]], since: float) -> dict[int, float]:
    """Each order's first Get order at or after ``since``, for those asked since."""
    return {
        o: later[0] for o, times in asked.items() if (later := [t for t in times if t >= since])
    }


async def test_an_order_the_app_tracks_during_a_resume_is_asked_before_the_resumed_ones(
    emu: Emulator, tmp_path: Path
) -> None:
    """A restart resuming thousands of orders while Xsolla answers slowly must not keep
    a player who buys now waiting for all of them: the app's own order takes the first
    place that frees, ahead of every resumed order still queued."""
    user = await emu.create_user()
    resumed = [await emu.create_order(user) for _ in range(3 * STARTING_AT_ONCE)]
    journal = str(tmp_path / "journal.sqlite3")
    options: dict[str, Any] = {
        "journal": journal,
        "instance": "shop-1",
        "transports": ("polling",),
        "fetch_details": False,
        "token_for": lambda order_id, user_id: user.token,
    }
    async with emulator_tracker(emu, user, **options) as before:
        for order_id in resumed:
            before.track(order_id)
        with anyio.fail_after(30):
            while not all((await requests_for(emu, resumed)).values()):  # noqa: ASYNC110
                await anyio.sleep(0.05)
    # Each wave of answers 2 s away: time enough, on a loaded machine, for the app's
    # order to be queued before the first wave frees its places.
    await emu.get_order_fault("slow", delay=2.0)
    since = time.time()  # the emulator's clock: the requests of the restart, after this
    bought = await emu.create_order(user)
    async with emulator_tracker(emu, user, **options) as after:  # takes back its own orders
        with anyio.fail_after(30):
            while len(asked_since(await requests_for(emu, resumed), since)) < STARTING_AT_ONCE:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        tracked_at = time.time()
        after.track(bought)
        with anyio.fail_after(30):
            while not (await requests_for(emu, [bought]))[bought]:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        await emu.clear_faults()
        with anyio.fail_after(30):
            while len(asked := asked_since(await requests_for(emu, resumed), since)) < len(resumed):  # noqa: ASYNC110
                await anyio.sleep(0.05)  # every order taken back, and asked
        first = (await requests_for(emu, [bought]))[bought][0]
        await emu.set_status(bought, "canceled")
        assert (await after.wait(bought)).status is Status.CANCELED
    # Resumed orders still queued when the app tracked its own, asked before it: some of
    # the wave it joined at most (trio runs the tasks a freed wave starts in an order of
    # its own); behind every queued resumed order, both later waves (128) would be.
    ahead = [o for o, at in asked.items() if tracked_at <= at < first]
    assert len(ahead) < STARTING_AT_ONCE, len(ahead)


@pytest.mark.parametrize("transports", [("websocket", "polling"), ("polling",)])
@pytest.mark.parametrize("fault", ["error", "rate_limit"])
async def test_orders_whose_own_get_order_keeps_failing_hold_back_others_one_pause_at_most(
    emu: Emulator, transports: tuple[str, ...], fault: str
) -> None:
    """A place kept through a 429's pause must not be kept for an order's life: 64
    orders each answered 500 for good (their own trouble, not Xsolla's) took every
    place, and a healthy order tracked next got no Get order at all (found by review).
    Each keeps its place for one pause (a second of backoff here), then lets others go;
    and not at all through a Retry-After of an hour (found by the next review)."""
    user = await emu.create_user()
    failing = [await emu.create_order(user) for _ in range(STARTING_AT_ONCE)]
    for order_id in failing:
        await emu.get_order_fault(fault, status=500, retry_after=3600, order_id=order_id)
    healthy = await emu.create_order(user)
    policy = DefaultPolicy(poll_interval=0.5, deadline=None)
    async with emulator_tracker(
        emu, user, transports=transports, policy=policy, fetch_details=False
    ) as tracker:
        for order_id in failing:
            tracker.track(order_id)
        with anyio.fail_after(30):
            while len([t for t in (await requests_for(emu, failing)).values() if t]) < len(failing):  # noqa: ASYNC110
                await anyio.sleep(0.05)  # every place taken by an order answered 500
        tracker.track(healthy)
        with anyio.fail_after(10):  # behind held places, it waited for good
            while not (await requests_for(emu, [healthy]))[healthy]:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        await emu.set_status(healthy, "canceled")
        assert (await tracker.wait(healthy)).status is Status.CANCELED
