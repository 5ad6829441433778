"""The Event API as the tracker's only source, through the custom-transport interface."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import anyio
import pytest

from orderfsm import Status
from orderfsm.interface import Health, HealthReport
from orderfsm.supervisor.custom import CustomTransport
from orderfsm.supervisor.policy import DefaultPolicy
from orderfsm.supervisor.records import Change, StatusChange
from orderfsm.supervisor.tracker import Tracker, TrackerClosed
from transports.emulator import Emulator
from transports.events import event_api

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(ping_interval=0, seed=23) as emulator:
        yield emulator


def events_only(
    emu: Emulator, token: str, on_report: Callable[[int, HealthReport], None] | None = None
) -> Tracker:
    transport: CustomTransport = event_api(base_url=emu.base_url, interval=0.05)
    return Tracker(
        project_id=emu.project_id,
        token=token,
        api_url=emu.api_url,
        transports=(),
        extra=[transport],
        fetch_details=False,
        policy=DefaultPolicy(deadline=20.0),
        on_report=on_report,
    )


async def test_a_canceled_order_finishes_through_the_event_api_alone(emu: Emulator) -> None:
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    reports: list[HealthReport] = []
    async with events_only(emu, user.token, on_report=lambda _, r: reports.append(r)) as tracker:
        await emu.run_script(order_id, [(0.2, "paid"), (0.2, "canceled")])
        with anyio.fail_after(10):
            result = await tracker.wait(order_id)
    assert result.status is Status.CANCELED and result.source == "events"
    assert [c.status for c in result.changes] == [Status.PAID, Status.CANCELED]
    assert all(c.source == "events" for c in result.changes)
    assert result.details is None
    assert [r.health for r in reports][:2] == [Health.CONNECTING, Health.HEALTHY]
    assert (await emu.stats()).get_order_requests.get(order_id) is None  # no polling at all


async def test_a_paid_order_reaches_paid(emu: Emulator) -> None:
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    async with events_only(emu, user.token) as tracker:
        await emu.run_script(order_id, [(0.2, "paid")])
        seen: list[Change] = []
        with anyio.fail_after(10), pytest.raises(TrackerClosed):
            async for change in tracker.watch(order_id):
                seen.append(change)
                tracker.untrack(order_id)  # paid is not final: stop here
        assert tracker.status(order_id) is Status.PAID
    [change] = seen
    assert isinstance(change, StatusChange)
    assert change.status is Status.PAID and change.source == "events"


async def test_orders_of_one_user_each_get_their_own_news(emu: Emulator) -> None:
    user = await emu.create_user()
    first, second = await emu.create_order(user), await emu.create_order(user)
    async with events_only(emu, user.token) as tracker:
        await emu.run_script(first, [(0.1, "canceled")])
        await emu.run_script(second, [(0.3, "paid"), (0.1, "canceled")])
        with anyio.fail_after(10):
            a = await tracker.wait(first)
            b = await tracker.wait(second)
    assert [c.status for c in a.changes] == [Status.CANCELED]
    assert [c.status for c in b.changes] == [Status.PAID, Status.CANCELED]
