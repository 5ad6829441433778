"""The emulator's channel modes on the wire, as Centrifugo serves each channel setup.

Whether Xsolla's channels keep history or recovery is unknown, so the emulator
serves all three (``recovery`` is the default, tested in
``test_emulator_websocket.py``); these pin down the two others frame by frame,
after ``client.go`` ``subscribeCmd`` and Centrifugo's ``OnHistory``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from transports.emulator import Emulator
from transports.emulator.raw import raw_socket

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def history_only() -> Iterator[Emulator]:
    with Emulator(ping_interval=0, seed=5, channel_mode="history") as emulator:
        yield emulator


@pytest.fixture(scope="module")
def no_history() -> Iterator[Emulator]:
    with Emulator(ping_interval=0, seed=6, channel_mode="none") as emulator:
        yield emulator


async def test_history_only_serves_history_but_no_position_and_no_recovery(
    history_only: Emulator,
) -> None:
    emu = history_only
    user = await emu.create_user()
    order = await emu.create_order(user)
    async with raw_socket(emu.ws_url) as ws:
        reply = await ws.connect(user.token, emu.project_id)
        assert reply["connect"]["subs"] == {user.channel: {}}
        await emu.set_status(order, "paid")
        pushed = (await ws.receive_one())["push"]["pub"]
        assert pushed == {"data": {"order_id": order, "status": "paid"}, "offset": 2}
        await ws.send({"id": 2, "history": {"channel": user.channel, "limit": -1}})
        history = (await ws.receive_one())["history"]
    assert [p["offset"] for p in history["publications"]] == [1, 2]
    assert history["offset"] == 2 and history["epoch"]

    # A recover request is not honoured; Centrifuge still echoes that it was made.
    subs = {user.channel: {"recover": True, "offset": 1, "epoch": history["epoch"]}}
    async with raw_socket(emu.ws_url) as ws:
        reply = await ws.connect(user.token, emu.project_id, subs=subs)
    assert reply["connect"]["subs"] == {user.channel: {"was_recovering": True}}


async def test_no_history_answers_108_and_numbers_nothing(no_history: Emulator) -> None:
    emu = no_history
    user = await emu.create_user()
    order = await emu.create_order(user)
    subs = {user.channel: {"recover": True, "offset": 1, "epoch": "e"}}
    async with raw_socket(emu.ws_url) as ws:
        reply = await ws.connect(user.token, emu.project_id, subs=subs)
        assert reply["connect"]["subs"] == {user.channel: {"was_recovering": True}}
        await emu.set_status(order, "paid")
        pushed = (await ws.receive_one())["push"]["pub"]
        assert pushed == {"data": {"order_id": order, "status": "paid"}}
        for cid, channel in enumerate([user.channel, "orders#someone-else"], start=2):
            await ws.send({"id": cid, "history": {"channel": channel, "limit": -1}})
            answer = await ws.receive_one()
            assert answer == {"id": cid, "error": {"code": 108, "message": "not available"}}


def test_an_unknown_channel_mode_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="channel_mode"):
        Emulator(channel_mode="sometimes")  # type: ignore[arg-type]
