"""The one-shot Get order check each order gets when tracking starts, at scale."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from support_tracker import emulator_tracker

from orderfsm import Status
from orderfsm.supervisor.checks import CHECKS_AT_ONCE
from transports.emulator import Emulator

pytestmark = pytest.mark.anyio


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(seed=61) as emulator:
        yield emulator


async def test_many_orders_tracked_at_once_are_checked_a_few_at_a_time(emu: Emulator) -> None:
    """A backend resuming ten thousand orders must not send ten thousand Get orders at
    once: Xsolla's API would see a herd, and the collector a million half-done requests."""
    user = await emu.create_user()
    orders = [await emu.create_order(user) for _ in range(CHECKS_AT_ONCE + 20)]
    await emu.get_order_fault("slow", delay=1.5)  # every answer 1.5 s away

    async def asked() -> set[int]:
        requests = (await emu.stats()).get_order_requests
        return {order_id for order_id in orders if requests.get(order_id)}

    async with emulator_tracker(emu, user, fetch_details=False) as tracker:
        for order_id in orders:
            tracker.track(order_id)
        await anyio.sleep(0.75)  # the first ones are in flight, none answered yet
        first_wave = await asked()
        await emu.clear_faults()
        with anyio.fail_after(20):
            while await asked() != set(orders):  # noqa: ASYNC110 (in the emulator)
                await anyio.sleep(0.05)
        await emu.set_status(orders[0], "canceled")
        assert (await tracker.wait(orders[0])).status is Status.CANCELED
    assert 0 < len(first_wave) <= CHECKS_AT_ONCE
