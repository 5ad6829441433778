"""The tracker with polling only: the fallback path, end to end on the emulator."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

from orderfsm import Observation, Status
from orderfsm.errors import TokenRejected, TrackingTimeout
from orderfsm.supervisor.policy import DefaultPolicy
from orderfsm.supervisor.records import FinalResult, StatusChange
from orderfsm.supervisor.tracker import Tracker, TrackerClosed
from orderfsm.testing import eventually
from transports.emulator import Emulator

pytestmark = pytest.mark.anyio

FAST = DefaultPolicy(poll_interval=0.05, deadline=20.0)


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(seed=11) as emulator:
        yield emulator


def polling_tracker(emu: Emulator, token: str, policy: DefaultPolicy = FAST) -> Tracker:
    return Tracker(
        project_id=emu.project_id,
        token=token,
        api_url=emu.api_url,
        transports=("polling",),
        policy=policy,
    )


async def test_polling_follows_an_order_to_done_with_details(emu: Emulator) -> None:
    user = await emu.create_user()
    order_id = await emu.create_order(user, amount="4.99")
    async with polling_tracker(emu, user.token) as tracker:
        await emu.run_script(order_id, [(0.2, "paid"), (0.2, "done")])
        result = await tracker.wait(order_id)
    assert result.status is Status.DONE and result.succeeded
    assert result.source == "polling"
    assert result.details is not None and result.details.status == "done"
    assert result.details.price is not None and result.details.price.amount == "4.99"
    statuses = [c.status for c in result.changes]
    assert statuses[-1] is Status.DONE
    assert len(statuses) == len(set(statuses))  # each change once


async def test_watch_yields_each_change_once_then_ends(emu: Emulator) -> None:
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    seen: list[StatusChange] = []
    async with polling_tracker(emu, user.token) as tracker:
        async for change in tracker.watch(order_id):
            assert isinstance(change, StatusChange)
            seen.append(change)
            if change.status is Status.NEW:  # the script starts once "new" is seen
                await emu.run_script(order_id, [(0.1, "paid"), (0.1, "canceled")])
    assert seen[0].status is Status.NEW
    assert seen[-1].status is Status.CANCELED and seen[-1].final
    assert [c.previous for c in seen[1:]] == [c.status for c in seen[:-1]]


async def test_deadline_ends_tracking_with_a_typed_timeout(emu: Emulator) -> None:
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    policy = DefaultPolicy(poll_interval=0.05, deadline=0.4)
    async with polling_tracker(emu, user.token, policy) as tracker:
        with pytest.raises(TrackingTimeout):
            await tracker.wait(order_id)
        assert tracker.status(order_id) is Status.NEW


async def test_a_rejected_token_fails_fast_with_a_typed_error(emu: Emulator) -> None:
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    await emu.revoke_token(user.token)
    async with polling_tracker(emu, user.token) as tracker:
        with anyio.fail_after(5), pytest.raises(TokenRejected):
            await tracker.wait(order_id)


async def requests_for(emu: Emulator, order_id: int) -> int:
    return len((await emu.stats()).get_order_requests.get(order_id, []))


async def test_cancelling_a_wait_stops_the_polling_it_started(emu: Emulator) -> None:
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    async with polling_tracker(emu, user.token) as tracker:
        async with anyio.create_task_group() as tg:
            tg.start_soon(tracker.wait, order_id)
            await eventually(lambda: requests_for(emu, order_id))
            tg.cancel_scope.cancel()
        before = await requests_for(emu, order_id)
        await anyio.sleep(10 * 0.05)  # ten poll intervals: an absence takes time to show
        assert await requests_for(emu, order_id) <= before + 1  # one may have been on its way


async def test_leaving_the_tracker_stops_everything(emu: Emulator) -> None:
    user = await emu.create_user()
    orders = [await emu.create_order(user) for _ in range(5)]

    async def all_polled_twice() -> bool:
        return all([await requests_for(emu, o) >= 2 for o in orders])

    async with polling_tracker(emu, user.token) as tracker:
        for order_id in orders:
            tracker.track(order_id)
        await eventually(all_polled_twice)
    counts = {o: await requests_for(emu, o) for o in orders}
    await anyio.sleep(10 * 0.05)  # ten poll intervals: an absence takes time to show
    assert counts == {o: await requests_for(emu, o) for o in orders}


async def test_many_orders_at_once(emu: Emulator) -> None:
    user = await emu.create_user()
    orders = [await emu.create_order(user) for _ in range(30)]
    async with polling_tracker(emu, user.token) as tracker:
        for i, order_id in enumerate(orders):
            await emu.run_script(order_id, [(0.05, "paid"), (0.1, "done" if i % 3 else "canceled")])
        results = {}
        async with anyio.create_task_group() as tg:

            async def wait(order_id: int) -> None:
                results[order_id] = await tracker.wait(order_id)

            for order_id in orders:
                tg.start_soon(wait, order_id)
    assert {o: r.status for o, r in results.items()} == {
        o: Status.DONE if i % 3 else Status.CANCELED for i, o in enumerate(orders)
    }


async def test_closing_while_details_are_on_their_way_keeps_the_final_status(
    emu: Emulator,
) -> None:
    """A waiter outside the tracker learns the final status it saw, not only
    that the tracker closed: the details request it cut short is the error."""
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    await emu.get_order_fault("slow", delay=5.0, order_id=order_id)
    results: list[FinalResult] = []

    async def waiter(tracker: Tracker) -> None:
        results.append(await tracker.wait(order_id))

    async with (
        anyio.create_task_group() as tg,
        Tracker(
            project_id=emu.project_id,
            token=user.token,
            api_url=emu.api_url,
            transports=("webhook",),
        ) as tracker,
    ):
        tracker.track(order_id)
        tg.start_soon(waiter, tracker)
        tracker.observe(Observation(order_id, "done", "webhook", anyio.current_time()))
        await eventually(lambda: requests_for(emu, order_id))  # in flight, slowed down
        assert not results
    [result] = results
    assert result.status is Status.DONE and result.details is None
    assert isinstance(result.details_error, TrackerClosed)


async def test_ended_orders_do_not_stay_in_the_schedulers_heap() -> None:
    """Each order waits on a review (its deadline); a thousand orders that
    ended long before it must not keep a thousand entries alive."""
    async with Tracker(project_id=1, transports=("webhook",), fetch_details=False) as tracker:
        scheduler = tracker._scheduler
        assert scheduler is not None
        for order_id in range(1, 1001):
            tracker.track(order_id)
        await eventually(lambda: len(scheduler._due) == 1000)
        for order_id in range(1, 1001):
            tracker.observe(Observation(order_id, "canceled", "webhook", anyio.current_time()))
            await tracker.wait(order_id)
            tracker.forget(order_id)
        tracker.track(5000)  # a scheduler pass
        await eventually(lambda: len(scheduler._due) <= 64 + 2)
