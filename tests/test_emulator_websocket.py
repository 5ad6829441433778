"""The emulator's Centrifuge v2 WebSocket, driven frame by frame over loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from transports.emulator import Emulator, User
from transports.emulator.raw import Closed, RawSocket, raw_socket

pytestmark = pytest.mark.anyio


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(ping_interval=0, seed=3) as emulator:
        yield emulator


def connect_cmd(user: User, project_id: int, **extra: Any) -> dict[str, Any]:
    return {"id": 1, "connect": {"data": {"auth": user.token, "project_id": project_id}, **extra}}


async def history(ws: RawSocket, channel: str, cid: int = 2, **fields: Any) -> dict[str, Any]:
    await ws.send({"id": cid, "history": {"channel": channel, **fields}})
    reply = await ws.receive_one()
    assert reply["id"] == cid
    return reply


def statuses(pubs: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(p.get("offset", 0), p["data"]["status"]) for p in pubs]


async def test_connect_reply_has_the_server_side_subscription(emu: Emulator) -> None:
    user = await emu.create_user("alice")
    async with raw_socket(emu.ws_url) as ws:
        reply = await ws.connect(user.token, emu.project_id)
    assert reply["id"] == 1
    result = reply["connect"]
    assert result["client"]
    sub = result["subs"][user.channel]
    assert sub["recoverable"] is True and sub["positioned"] is True and sub["epoch"]
    # zero values are omitted: nothing published yet, no pings configured
    assert "offset" not in sub and "ping" not in result and "pong" not in result


async def test_connect_accepts_matching_user_external_id(emu: Emulator) -> None:
    user = await emu.create_user("alice")
    async with raw_socket(emu.ws_url) as ws:
        reply = await ws.connect(user.token, emu.project_id, user_external_id="alice")
    assert "connect" in reply


@pytest.mark.parametrize(
    "data",
    [
        {"auth": "not-a-token", "project_id": 12345},
        {"auth": "{token}", "project_id": 99},
        {"auth": "{token}", "project_id": 12345, "user_external_id": "mallory"},
        {"project_id": 12345},
        "a string",
    ],
    ids=["bad-token", "wrong-project", "wrong-user", "no-auth", "data-not-object"],
)
async def test_bad_credentials_close_3500(emu: Emulator, data: Any) -> None:
    user = await emu.create_user("alice")
    if isinstance(data, dict) and data.get("auth") == "{token}":
        data = {**data, "auth": user.token}
    async with raw_socket(emu.ws_url) as ws:
        await ws.send({"id": 1, "connect": {"data": data}})
        assert await ws.closed() == Closed(3500, "invalid token")
    # and the emulator keeps serving others
    async with raw_socket(emu.ws_url) as ws:
        assert "connect" in await ws.connect(user.token, emu.project_id)


async def test_revoked_token_is_refused(emu: Emulator) -> None:
    user = await emu.create_user("alice")
    spare = await emu.issue_token(user)
    await emu.revoke_token(user.token)
    async with raw_socket(emu.ws_url) as ws:
        await ws.send(connect_cmd(user, emu.project_id))
        assert (await ws.closed()).code == 3500
    async with raw_socket(emu.ws_url) as ws:
        assert "connect" in await ws.connect(spare, emu.project_id)


async def test_publications_carry_offsets_and_only_reach_their_user(emu: Emulator) -> None:
    alice, bob = await emu.create_user("alice"), await emu.create_user("bob")
    async with raw_socket(emu.ws_url) as wa, raw_socket(emu.ws_url) as wb:
        await wa.connect(alice.token, emu.project_id)
        await wb.connect(bob.token, emu.project_id)
        order = await emu.create_order(alice)
        push = await wa.receive_one()
        assert push == {
            "push": {
                "channel": alice.channel,
                "pub": {"data": {"order_id": order, "status": "new"}, "offset": 1},
            }
        }
        pub = await emu.set_status(order, "paid")
        assert pub is not None and pub.offset == 2
        push = await wa.receive_one()
        assert push["push"]["pub"] == {"data": {"order_id": order, "status": "paid"}, "offset": 2}
        bob_order = await emu.create_order(bob)
        assert (await wb.receive_one())["push"]["pub"]["data"]["order_id"] == bob_order


async def test_history_limits_since_and_reverse(emu: Emulator) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    for status in ["paid", "done", "canceled"]:
        await emu.set_status(order, status)
    async with raw_socket(emu.ws_url) as ws:
        sub = (await ws.connect(user.token, emu.project_id))["connect"]["subs"][user.channel]
        epoch = sub["epoch"]
        ch = user.channel

        everything = (await history(ws, ch, limit=-1, since={"offset": 0}))["history"]
        assert statuses(everything["publications"]) == [
            (1, "new"),
            (2, "paid"),
            (3, "done"),
            (4, "canceled"),
        ]
        assert everything["offset"] == 4 and everything["epoch"] == epoch

        position = (await history(ws, ch, cid=3, limit=0))["history"]
        assert position == {"epoch": epoch, "offset": 4}
        # limit omitted means position only too
        assert (await history(ws, ch, cid=4))["history"] == {"epoch": epoch, "offset": 4}

        after_two = await history(ws, ch, cid=5, limit=-1, since={"offset": 2, "epoch": epoch})
        assert statuses(after_two["history"]["publications"]) == [(3, "done"), (4, "canceled")]

        two = (await history(ws, ch, cid=6, limit=2))["history"]
        assert statuses(two["publications"]) == [(1, "new"), (2, "paid")]

        newest = (await history(ws, ch, cid=7, limit=2, reverse=True))["history"]
        assert statuses(newest["publications"]) == [(4, "canceled"), (3, "done")]

        before_three = await history(ws, ch, cid=8, limit=-1, reverse=True, since={"offset": 3})
        assert statuses(before_three["history"]["publications"]) == [(2, "paid"), (1, "new")]

        mismatch = await history(ws, ch, cid=9, limit=-1, since={"offset": 0, "epoch": "other"})
        assert mismatch == {"id": 9, "error": {"code": 112, "message": "unrecoverable position"}}

        bad = await history(ws, ch, cid=10, limit=-1, reverse=True, since={"offset": 0})
        assert bad["error"]["code"] == 107

        other = await history(ws, "orders#someone-else", cid=11, limit=-1)
        assert other["error"] == {"code": 103, "message": "permission denied"}


async def test_history_is_capped_at_the_server_limit() -> None:
    async with Emulator(ping_interval=0, history_size=400, history_limit=300) as emu:
        user = await emu.create_user("alice")
        for i in range(320):
            await emu.publish_raw(user, {"order_id": i, "status": "new"})
        async with raw_socket(emu.ws_url) as ws:
            await ws.connect(user.token, emu.project_id)
            everything = await history(ws, user.channel, limit=-1, since={"offset": 0})
            pubs = everything["history"]["publications"]
            assert len(pubs) == 300 and pubs[0]["offset"] == 1 and pubs[-1]["offset"] == 300
            assert everything["history"]["offset"] == 320
            big = await history(ws, user.channel, cid=3, limit=1000)
            assert len(big["history"]["publications"]) == 300


async def test_history_size_drops_oldest() -> None:
    async with Emulator(ping_interval=0, history_size=3) as emu:
        user = await emu.create_user("alice")
        for i in range(5):
            await emu.publish_raw(user, {"order_id": i, "status": "new"})
        async with raw_socket(emu.ws_url) as ws:
            await ws.connect(user.token, emu.project_id)
            pubs = (await history(ws, user.channel, limit=-1))["history"]["publications"]
            assert [p["offset"] for p in pubs] == [3, 4, 5]


async def test_recovery_through_connect_subs(emu: Emulator) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    async with raw_socket(emu.ws_url) as ws:
        sub = (await ws.connect(user.token, emu.project_id))["connect"]["subs"][user.channel]
    assert sub["offset"] == 1
    epoch = sub["epoch"]
    await emu.set_status(order, "paid")
    await emu.set_status(order, "done")

    async with raw_socket(emu.ws_url) as ws:
        subs = {user.channel: {"recover": True, "offset": 1, "epoch": epoch}}
        got = (await ws.connect(user.token, emu.project_id, subs=subs))["connect"]["subs"]
    recovered = got[user.channel]
    assert recovered["recovered"] is True and recovered["was_recovering"] is True
    # the requested offset, not the stream top (centrifuge's rule)
    assert recovered["offset"] == 1 and recovered["epoch"] == epoch
    assert statuses(recovered["publications"]) == [(2, "paid"), (3, "done")]

    # nothing missed: recovered, no publications (zero values omitted)
    async with raw_socket(emu.ws_url) as ws:
        subs = {user.channel: {"recover": True, "offset": 3, "epoch": epoch}}
        got = (await ws.connect(user.token, emu.project_id, subs=subs))["connect"]["subs"]
    assert got[user.channel]["recovered"] is True
    assert "publications" not in got[user.channel] and got[user.channel]["offset"] == 3


async def test_recovery_fails_after_a_new_epoch(emu: Emulator) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    async with raw_socket(emu.ws_url) as ws:
        old = (await ws.connect(user.token, emu.project_id))["connect"]["subs"][user.channel]
    new_epoch = await emu.new_epoch(user)
    assert new_epoch != old["epoch"]
    await emu.set_status(order, "paid")
    async with raw_socket(emu.ws_url) as ws:
        subs = {user.channel: {"recover": True, "offset": old["offset"], "epoch": old["epoch"]}}
        got = (await ws.connect(user.token, emu.project_id, subs=subs))["connect"]["subs"]
        sub = got[user.channel]
        assert sub == {
            "recoverable": True,
            "positioned": True,
            "epoch": new_epoch,
            "offset": 1,
            "was_recovering": True,
        }
        stale = await history(
            ws, user.channel, limit=-1, since={"offset": 0, "epoch": old["epoch"]}
        )
        assert stale["error"]["code"] == 112


async def test_recovery_fails_when_history_was_trimmed() -> None:
    async with Emulator(ping_interval=0, history_size=2) as emu:
        user = await emu.create_user("alice")
        async with raw_socket(emu.ws_url) as ws:
            sub = (await ws.connect(user.token, emu.project_id))["connect"]["subs"][user.channel]
        for i in range(3):
            await emu.publish_raw(user, {"order_id": i, "status": "new"})
        async with raw_socket(emu.ws_url) as ws:
            subs = {user.channel: {"recover": True, "offset": 0, "epoch": sub["epoch"]}}
            got = (await ws.connect(user.token, emu.project_id, subs=subs))["connect"]["subs"]
        assert "recovered" not in got[user.channel]
        assert got[user.channel]["was_recovering"] is True and got[user.channel]["offset"] == 3


@pytest.mark.parametrize(
    "frame",
    [
        '{"id":1,"history":{"channel":"x"}}',  # a command before connect
        "{}",  # a pong before connect
        "not json",
        '["an", "array"]',
        '{"id":-1,"connect":{}}',
        '{"id":1,"connect":{"data":{}}}\n\n{"id":2,"connect":{}}',  # two newlines
        "",
    ],
    ids=[
        "before-connect",
        "pong-before-connect",
        "bad-json",
        "not-object",
        "negative-id",
        "blank-line",
        "empty",
    ],
)
async def test_malformed_or_early_frames_close_3501(emu: Emulator, frame: str) -> None:
    user = await emu.create_user("alice")
    async with raw_socket(emu.ws_url) as ws:
        await ws.send_text(frame)
        assert await ws.closed() == Closed(3501, "bad request")
    async with raw_socket(emu.ws_url) as ws:
        assert "connect" in await ws.connect(user.token, emu.project_id)


@pytest.mark.parametrize(
    "frame",
    [
        '{"id":2,"ping":{}}',
        '{"id":2,"frobnicate":{}}',
        "{}",  # an unsolicited pong
        '{"id":2,"connect":{"data":{}}}',  # connect twice
        "{oops",
        '{"id":2,"sub_refresh":{}}',
    ],
    ids=[
        "ping-command",
        "unknown-command",
        "unsolicited-pong",
        "second-connect",
        "bad-json",
        "sub-refresh-without-channel",
    ],
)
async def test_bad_commands_after_connect_close_3501(emu: Emulator, frame: str) -> None:
    user = await emu.create_user("alice")
    async with raw_socket(emu.ws_url) as ws, raw_socket(emu.ws_url) as bystander:
        await ws.connect(user.token, emu.project_id)
        await bystander.connect(user.token, emu.project_id)
        await ws.send_text(frame)
        assert await ws.closed() == Closed(3501, "bad request")
        # the other connection of the same user still gets publications
        await emu.publish_raw(user, {"order_id": 1, "status": "paid"})
        assert (await bystander.receive_one())["push"]["pub"]["offset"] == 1


async def test_binary_frame_closes_3501(emu: Emulator) -> None:
    user = await emu.create_user("alice")
    async with raw_socket(emu.ws_url) as ws:
        await ws.connect(user.token, emu.project_id)
        await ws.send_bytes(b'{"id":2,"history":{}}')
        assert (await ws.closed()).code == 3501


async def test_oversized_frame_closes_1009(emu: Emulator) -> None:
    user = await emu.create_user("alice")
    async with raw_socket(emu.ws_url) as ws:
        await ws.connect(user.token, emu.project_id)
        await ws.send_text('{"id":2,"history":{"channel":"' + "x" * 70000 + '"}}')
        assert (await ws.closed()).code == 1009


async def test_batched_commands_get_batched_replies(emu: Emulator) -> None:
    user = await emu.create_user("alice")
    await emu.create_order(user)
    async with raw_socket(emu.ws_url) as ws:
        await ws.send(
            connect_cmd(user, emu.project_id),
            {"id": 2, "history": {"channel": user.channel, "limit": -1}},
        )
        frame = await ws.receive()
        assert [o["id"] for o in frame] == [1, 2]
        assert statuses(frame[1]["history"]["publications"]) == [(1, "new")]


async def test_other_commands_get_error_replies(emu: Emulator) -> None:
    user = await emu.create_user("alice")
    async with raw_socket(emu.ws_url) as ws:
        await ws.connect(user.token, emu.project_id)
        await ws.send(
            {"id": 2, "subscribe": {"channel": "orders#bob"}},
            {"id": 3, "publish": {"channel": user.channel, "data": {}}},
            {"id": 4, "presence": {"channel": user.channel}},
            {"id": 5, "rpc": {"method": "x"}},
            {"send": {"data": {}}},
        )
        codes = {o["id"]: o["error"]["code"] for o in await ws.receive()}
        assert codes == {2: 103, 3: 103, 4: 108, 5: 104}
        assert "connect" not in await history(ws, user.channel, cid=6, limit=0)


async def test_stale_connection_closes_3502() -> None:
    async with (
        Emulator(ping_interval=0, stale_timeout=0.2) as emu,
        raw_socket(emu.ws_url) as ws,
    ):
        with anyio.fail_after(3):
            assert await ws.closed() == Closed(3502, "stale")


async def test_subprotocol_centrifuge_json_is_accepted(emu: Emulator) -> None:
    user = await emu.create_user("alice")
    async with raw_socket(emu.ws_url, subprotocols=["centrifuge-json"]) as ws:
        assert "connect" in await ws.connect(user.token, emu.project_id)


async def test_shutdown_closes_sockets_with_3001() -> None:
    emu = Emulator(ping_interval=0)
    async with emu:
        user = await emu.create_user("alice")
        async with raw_socket(emu.ws_url) as ws:
            await ws.connect(user.token, emu.project_id)
            async with anyio.create_task_group() as tg:
                result: list[Closed] = []

                async def watch() -> None:
                    result.append(await ws.closed())

                tg.start_soon(watch)
                await anyio.to_thread.run_sync(emu.stop)
            assert result == [Closed(3001, "shutdown")]
