"""``Tracker.stats()`` against what happened, as the emulator saw it.

Each number in the record is checked against an independent count: the
results the application got, the Get order requests the emulator logged,
the WebSocket connections it closed.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from support_tracker import emulator_tracker

from orderfsm import Observation, OrderNotFound, Status, StatusChange, TokenRejected, Tracker
from orderfsm.interface import Health
from orderfsm.testing import RecordingSink
from transports.emulator import Emulator

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(seed=23, ping_interval=1.0) as emulator:
        yield emulator


async def test_stats_match_what_happened(emu: Emulator) -> None:
    user = await emu.create_user()
    done, refunded = await emu.create_order(user), await emu.create_order(user)
    sink = RecordingSink()
    asked_before = (await emu.stats()).get_order_total

    def websocket_health() -> list[Health]:
        return [r.health for r in sink.reports if r.source == "websocket"]

    async with emulator_tracker(
        emu, user, not_found_grace=0.3, on_report=lambda _, r: sink.report(r)
    ) as tracker:
        before = tracker.stats()
        assert before.orders_tracked == 0 and before.websocket is not None
        tracker.track(done)
        tracker.track(refunded)
        await sink.wait_for(lambda _: Health.HEALTHY in websocket_health())
        await emu.close_connections(user, 3000, "shutdown")  # one reconnect
        await sink.wait_for(
            lambda _: (
                Health.DEGRADED in websocket_health() and websocket_health()[-1] is Health.HEALTHY
            )
        )
        await emu.run_script(done, [(0.05, "paid"), (0.05, "done")])
        await emu.run_script(refunded, [(0.05, "paid"), (0.05, "canceled")])
        results = [await tracker.wait(done), await tracker.wait(refunded)]
        with pytest.raises(OrderNotFound):
            await tracker.wait(987654321)  # nobody's order: 404 until the grace is over
        stats = tracker.stats()

    trail = [f"{r.at:.3f} {r.source} {r.health.value} {r.reason}" for r in sink.reports]
    assert stats.orders_tracked == 3 and stats.orders_active == 0, stats
    assert stats.settled == {"succeeded": 1, "failed": 1}
    assert stats.unsettled == {"not_found": 1} and stats.timed_out == 0
    changes = Counter(c.source for r in results for c in r.changes if type(c) is StatusChange)
    assert stats.changes == dict(changes)
    emulated = await emu.stats()
    asked = emulated.get_order_requests
    answered = sum(len(asked.get(order_id, [])) for order_id in (done, refunded))
    # A poll cancelled when its order settles may have been answered by the emulator
    # and never read by us: at most one such request per order, never more counted.
    counted = stats.get_order.get("200", 0)
    assert answered - 2 <= counted <= answered, (stats, trail)
    assert stats.get_order.get("404", 0) == emulated.get_order_total - asked_before - answered >= 1
    # One per order when tracking starts, one per order after the outage.
    assert stats.checks >= 3, stats
    websocket = stats.websocket
    assert websocket is not None
    assert websocket.reconnects == 1 and websocket.closes == {"3000": 1}, (stats, trail)
    # The first two orders' socket and its reconnect; the third order reuses it (an
    # idle user's socket lingers after the last order settles).
    assert websocket.sockets_opened == len(await emu.connections(user)) == 2
    assert websocket.failures == 0
    assert stats.polling == 0 and stats.host_sleeps == 0
    closed = tracker.stats().websocket
    assert closed is not None and closed.connections == {}  # the pool closed with the tracker


async def test_stats_of_a_refused_token(emu: Emulator) -> None:
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    async with emulator_tracker(emu, user) as tracker:
        with pytest.raises(TokenRejected):
            await tracker.wait(order_id, token="not-a-token")
        stats = tracker.stats()
    assert stats.unsettled == {"token_rejected": 1}
    assert stats.websocket is not None and stats.websocket.closes == {"3500": 1}
    assert stats.websocket.failures == 1
    assert stats.get_order.get("401", 0) >= 2  # refused, and refused again with a fresh token


async def test_an_instrument_listener_that_raises_does_not_keep_a_result_from_its_waiter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A settled order finishes inside the call that delivered its status (here a
    webhook's ``observe``): a bug in the application's listener used to come out of
    that call and leave the order ended without a result, its ``wait()`` never woken."""

    class Broken:
        def tracked(self, order_id: int) -> None:
            raise RuntimeError("listener bug")

        def finished(self, order_id: int, label: str) -> None:
            raise RuntimeError("listener bug")

        def request(self, what: str) -> contextlib.AbstractContextManager[Any]:
            return contextlib.nullcontext()

    async with Tracker(project_id=1, transports=("webhook",), fetch_details=False) as tracker:
        tracker.instrument(Broken())
        tracker.track(7)
        tracker.observe(Observation(7, Status.DONE, "webhook", anyio.current_time()))
        with anyio.fail_after(5):
            assert (await tracker.wait(7)).status is Status.DONE
    failed = [r for r in caplog.records if getattr(r, "event", None) == "callback.failed"]
    assert len(failed) == 2
