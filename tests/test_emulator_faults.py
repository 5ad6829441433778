"""Ping/pong rules and every injected WebSocket fault."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

from transports.emulator import Emulator
from transports.emulator.raw import Closed, Disconnected, RawSocket, raw_socket

pytestmark = pytest.mark.anyio


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(ping_interval=0, seed=5) as emulator:
        yield emulator


async def expect_silence(ws: RawSocket, seconds: float) -> None:
    with anyio.move_on_after(seconds) as scope:
        frame = await ws.receive()
        raise AssertionError(f"expected silence, got {frame!r}")
    assert scope.cancelled_caught


async def test_pings_with_pongs_keep_the_connection() -> None:
    """Five pings answered at once keep the connection open for longer than the
    pong timeout (a session that never cleared its wait would have closed 3012).

    The timeout (1.5 s) is the margin for a loaded machine: a pong here is sent
    as soon as its ping arrives.
    """
    async with Emulator(ping_interval=0.3, pong_timeout=1.5) as emu:
        user = await emu.create_user("alice")
        async with raw_socket(emu.ws_url) as ws:
            start = anyio.current_time()
            result = (await ws.connect(user.token, emu.project_id))["connect"]
            assert result["ping"] == 1 and result["pong"] is True
            with anyio.fail_after(10):
                first = await ws.receive_one()
                assert first == {}
                # first ping no earlier than interval/2 (the upper bound is for
                # the sans-io test: here it would be timer luck)
                first_at = anyio.current_time()
                assert first_at - start >= 0.15
                await ws.send_text("{}")
                answered = 1
                while answered < 5 or anyio.current_time() - first_at <= 1.5 + 0.3:
                    assert await ws.receive_one() == {}
                    await ws.send_text("{}")
                    answered += 1
            with anyio.fail_after(10):
                while True:
                    [conn] = await emu.connections(user)
                    if conn.pongs_received >= answered:
                        break
                    await anyio.sleep(0.02)  # the emulator's record, read until it holds
            assert conn.state == "connected" and conn.close_code is None
            assert conn.pings_sent >= conn.pongs_received == answered


async def test_missing_pong_closes_3012() -> None:
    async with Emulator(ping_interval=0.2, pong_timeout=0.2) as emu:
        user = await emu.create_user("alice")
        async with raw_socket(emu.ws_url) as ws:
            await ws.connect(user.token, emu.project_id)
            assert await ws.receive_one() == {}
            with anyio.fail_after(5):
                assert await ws.closed() == Closed(3012, "no pong")


async def test_two_pongs_for_one_ping_close_3501() -> None:
    async with Emulator(ping_interval=0.2, pong_timeout=5) as emu:
        user = await emu.create_user("alice")
        async with raw_socket(emu.ws_url) as ws:
            await ws.connect(user.token, emu.project_id)
            assert await ws.receive_one() == {}
            # both in one frame: the second cannot pass for the next ping's pong
            await ws.send_text("{}\n{}")
            with anyio.fail_after(5):
                assert await ws.closed() == Closed(3501, "bad request")


async def test_stop_pinging_then_resume() -> None:
    async with Emulator(ping_interval=0.2, pong_timeout=0.1) as emu:
        user = await emu.create_user("alice")
        await emu.set_pings(False, user)
        async with raw_socket(emu.ws_url) as ws:
            await ws.connect(user.token, emu.project_id)
            await expect_silence(ws, 0.6)
            [conn] = await emu.connections(user)
            assert conn.state == "connected" and conn.pings_sent == 0
            await emu.set_pings(True)
            with anyio.fail_after(2):
                assert await ws.receive_one() == {}


async def test_close_connections_with_a_chosen_code(emu: Emulator) -> None:
    alice, bob = await emu.create_user("alice"), await emu.create_user("bob")
    async with raw_socket(emu.ws_url) as wa, raw_socket(emu.ws_url) as wb:
        await wa.connect(alice.token, emu.project_id)
        await wb.connect(bob.token, emu.project_id)
        assert await emu.close_connections(alice, 3011, "force reconnect") == 1
        assert await wa.closed() == Closed(3011, "force reconnect")
        order = await emu.create_order(bob)
        assert (await wb.receive_one())["push"]["pub"]["data"]["order_id"] == order
    [conn] = await emu.connections(alice)
    assert conn.state == "closed" and conn.close_code == 3011


async def test_drop_connections_aborts_without_close_frame(emu: Emulator) -> None:
    user = await emu.create_user("alice")
    async with raw_socket(emu.ws_url) as ws:
        await ws.connect(user.token, emu.project_id)
        assert await emu.drop_connections(user) == 1
        with anyio.fail_after(3):
            closed = await ws.closed()
        assert closed.dropped or closed.code == 1006


async def test_a_stall_is_silent_and_leaves_the_socket_open(emu: Emulator) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    async with raw_socket(emu.ws_url) as stalled, raw_socket(emu.ws_url) as healthy:
        await stalled.connect(user.token, emu.project_id)
        await healthy.connect(user.token, emu.project_id)
        # no deadline: the stall lasts as long as the checks take, on any machine
        assert await emu.stall_connections(user) == 2
        states = {c.state for c in await emu.connections(user)}
        assert states == {"stalled"}
        await emu.set_status(order, "paid")
        # a stalled socket neither answers nor receives, and stays open
        await stalled.send({"id": 2, "history": {"channel": user.channel, "limit": 0}})
        await expect_silence(stalled, 0.3)
        # a fresh connection works meanwhile and sees the publication through history
        async with raw_socket(emu.ws_url) as fresh:
            await fresh.connect(user.token, emu.project_id)
            await fresh.send({"id": 2, "history": {"channel": user.channel, "limit": -1}})
            pubs = (await fresh.receive_one())["history"]["publications"]
            assert pubs[-1]["data"]["status"] == "paid"
        assert [c.state for c in await emu.connections(user)][:2] == ["stalled", "stalled"]
        with anyio.fail_after(10):
            await anyio.to_thread.run_sync(emu.stop)  # a stall without deadline ends here
            closed = await stalled.closed()
        assert closed.dropped or closed.code == 1006


async def test_a_stall_with_seconds_drops_after_them(emu: Emulator) -> None:
    user = await emu.create_user("alice")
    async with raw_socket(emu.ws_url) as ws:
        await ws.connect(user.token, emu.project_id)
        start = anyio.current_time()
        assert await emu.stall_connections(user, seconds=0.5) == 1
        with anyio.fail_after(10):
            closed = await ws.closed()
        assert anyio.current_time() - start >= 0.5
        assert closed.dropped or closed.code == 1006
    [conn] = await emu.connections(user)
    assert conn.state == "closed" and conn.close_code == 1006


async def test_stall_without_deadline_ends_at_shutdown() -> None:
    emu = Emulator(ping_interval=0)
    async with emu:
        user = await emu.create_user("alice")
        async with raw_socket(emu.ws_url) as ws:
            await ws.connect(user.token, emu.project_id)
            assert await emu.stall_connections(user) == 1
            await expect_silence(ws, 0.2)
            with anyio.fail_after(10):
                await anyio.to_thread.run_sync(emu.stop)
            with pytest.raises(Disconnected):
                await ws.receive()


async def test_duplicate_publications(emu: Emulator) -> None:
    user = await emu.create_user("alice")
    async with raw_socket(emu.ws_url) as ws:
        await ws.connect(user.token, emu.project_id)
        await emu.duplicate_publications(user, count=1)
        order = await emu.create_order(user)
        frame = await ws.receive()
        assert len(frame) == 2 and frame[0] == frame[1]
        assert frame[0]["push"]["pub"] == {
            "data": {"order_id": order, "status": "new"},
            "offset": 1,
        }
        await emu.set_status(order, "paid")
        assert len(await ws.receive()) == 1  # only the next one was duplicated


async def reordered_offsets(seed: int) -> list[int]:
    async with Emulator(ping_interval=0, seed=seed) as emu:
        user = await emu.create_user("alice")
        order = await emu.create_order(user, publish=False)
        async with raw_socket(emu.ws_url) as ws:
            await ws.connect(user.token, emu.project_id)
            await emu.reorder_publications(user, count=4)
            for status in ["paid", "done", "canceled", "expired"]:
                await emu.set_status(order, status)
            frame = await ws.receive()
            # history keeps publish order
            await ws.send({"id": 2, "history": {"channel": user.channel, "limit": -1}})
            history = (await ws.receive_one())["history"]["publications"]
            assert [p["offset"] for p in history] == [1, 2, 3, 4]
        return [o["push"]["pub"]["offset"] for o in frame]


async def test_reorder_is_a_seeded_permutation() -> None:
    first = await reordered_offsets(seed=11)
    assert sorted(first) == [1, 2, 3, 4] and first != [1, 2, 3, 4]
    assert await reordered_offsets(seed=11) == first


async def test_new_epoch_restarts_offsets(emu: Emulator) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    await emu.set_status(order, "paid")
    async with raw_socket(emu.ws_url) as ws:
        old = (await ws.connect(user.token, emu.project_id))["connect"]["subs"][user.channel]
        epoch = await emu.new_epoch(user)
        await emu.set_status(order, "done")
        assert (await ws.receive_one())["push"]["pub"]["offset"] == 1
        await ws.send({"id": 2, "history": {"channel": user.channel, "limit": -1}})
        reply = (await ws.receive_one())["history"]
    assert old["epoch"] != epoch == reply["epoch"] and reply["offset"] == 1
    assert [p["data"]["status"] for p in reply["publications"]] == ["done"]


async def test_faults_on_unknown_users_are_refused(emu: Emulator) -> None:
    from transports.emulator import EmulatorError

    with pytest.raises(EmulatorError) as info:
        await emu.close_connections("nobody")
    assert info.value.status == 404
    with pytest.raises(EmulatorError):
        await emu.close_connections(await emu.create_user("alice"), code=1000)
