"""The tracker across a cut socket, for each way Xsolla's channels may be set up.

Whether Xsolla keeps history, or recovery, on its channels is unknown, so the
tracker must be right under each (the emulator's ``channel_mode``).  Over
loopback, on asyncio and trio: statuses pushed live, the socket cut, statuses
changed while it is down, the reconnect.  Get order fails throughout the
outage, so what the WebSocket brings back is its own doing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support_tracker import emulator_tracker

from orderfsm import Change, HealthReport, Status, StatusChange
from orderfsm.interface import WEBSOCKET, Health
from orderfsm.testing import eventually
from transports.emulator import Emulator
from transports.emulator.state import CHANNEL_MODES

pytestmark = pytest.mark.anyio

NEW, PAID, DONE = Status.NEW, Status.PAID, Status.DONE


@pytest.fixture(scope="module", params=CHANNEL_MODES)
def emu(request: pytest.FixtureRequest) -> Iterator[Emulator]:
    with Emulator(seed=23, ping_interval=1.0, pong_timeout=1.0, channel_mode=request.param) as e:
        yield e


async def test_every_change_once_and_the_final_status_across_a_cut_socket(emu: Emulator) -> None:
    """With history, the socket brings back what the outage hid, each change once
    and with no gap reported (a gap would send the tracker to Get order for
    nothing); without it, the client says news may be lost, and the check that
    follows finds the final status (the status nobody reported is skipped)."""
    mode = (await emu.info())["channel_mode"]
    user = await emu.create_user()
    live, hidden = await emu.create_order(user), await emu.create_order(user)
    changes: list[Change] = []
    reports: list[HealthReport] = []

    def on_report(_: int, report: HealthReport) -> None:
        reports.append(report)

    def healthy() -> bool:
        socket = [r.health for r in reports if r.source == WEBSOCKET]
        return bool(socket) and socket[-1] is Health.HEALTHY

    async def reconnected() -> bool:
        return (await emu.stats()).connects > connects

    def heard(order_id: int, status: Status) -> bool:
        return any(
            isinstance(c, StatusChange) and c.order_id == order_id and c.status is status
            for c in changes
        )

    # A reconnect waits 0.5 to 1 s (a connection lost soon after catching up):
    # the outage's changes are made well inside that.
    async with emulator_tracker(
        emu,
        user,
        on_change=changes.append,
        on_report=on_report,
        fetch_details=False,
        first_reconnect_delay=0.5,
        max_reconnect_delay=1.0,
        stable_after=60.0,
    ) as t:
        for order_id in (live, hidden):
            t.track(order_id)
        await eventually(lambda: healthy() and heard(hidden, NEW))
        await emu.set_status(live, "paid")
        await eventually(lambda: heard(live, PAID))
        gaps_before = sum(r.gap for r in reports)

        await emu.get_order_fault("error", status=500)
        connects = (await emu.stats()).connects
        assert await emu.drop_connections(user) == 1
        await emu.set_status(live, "done")
        await emu.set_status(hidden, "paid")
        await emu.set_status(hidden, "done")
        assert (await emu.stats()).connects == connects, "reconnected before the changes"
        await eventually(reconnected)
        if mode == "none":  # nothing on the socket can tell: Get order must
            await eventually(lambda: sum(r.gap for r in reports) > gaps_before)
            await emu.clear_faults()
        results = {order_id: await t.wait(order_id) for order_id in (live, hidden)}
        watched = [c async for c in t.watch(hidden)]
        await emu.clear_faults()

    for order_id, result in results.items():
        told = [c for c in changes if c.order_id == order_id]
        assert told == list(result.changes), "on_change and wait tell the same, once each"
        assert result.status is DONE
    assert watched == list(results[hidden].changes)
    statuses = {o: [c.status for c in r.changes] for o, r in results.items()}
    outage = [results[live].changes[-1], *results[hidden].changes[1:]]
    gaps_after = sum(r.gap for r in reports) - gaps_before
    if mode == "none":
        assert statuses == {live: [NEW, PAID, DONE], hidden: [NEW, DONE]}
        last = results[hidden].changes[-1]
        assert isinstance(last, StatusChange) and last.skipped == (PAID,)
        assert gaps_after >= 1
    else:
        assert statuses == {live: [NEW, PAID, DONE], hidden: [NEW, PAID, DONE]}
        assert [c.source for c in outage] == [WEBSOCKET] * 3
        assert gaps_after == 0


async def test_a_history_only_stream_that_restarts_while_connected_still_brings_each_change() -> (
    None
):
    """History without recovery: when it expires (the channel quiet past its TTL) the
    stream starts again at offset 1 and nobody ends the subscription.  Its ``paid``
    at offset 1 was dropped as a copy of the old stream's ``new`` at 1 (the order
    went from ``new`` to ``done``, ``paid`` skipped); each change comes by the socket."""
    async with Emulator(seed=29, ping_interval=1.0, pong_timeout=1.0, channel_mode="history") as e:
        user = await e.create_user()
        order_id = await e.create_order(user)
        async with emulator_tracker(e, user, fetch_details=False) as t:
            t.track(order_id)
            await eventually(lambda: t.status(order_id) is NEW)
            await e.new_epoch(user)  # what the history's expiry does
            await e.get_order_fault("error", status=500)  # only the socket can tell
            await e.set_status(order_id, "paid")
            await eventually(lambda: t.status(order_id) is PAID)
            await e.set_status(order_id, "done")
            result = await t.wait(order_id)
    assert [c.status for c in result.changes] == [NEW, PAID, DONE]
    assert [c.source for c in result.changes[1:]] == [WEBSOCKET, WEBSOCKET]
