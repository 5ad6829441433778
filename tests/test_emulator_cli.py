"""``orderfsm emulator`` as a subprocess: first line is the base URL; HTTP drives it."""

from __future__ import annotations

import signal
import sys

import anyio
import pytest
from anyio.abc import Process

from orderfsm.cli.emulator_cmd import CHANNEL_MODES as CLI_CHANNEL_MODES
from transports.emulator import EmulatorClient
from transports.emulator.raw import raw_socket
from transports.emulator.state import CHANNEL_MODES

pytestmark = pytest.mark.anyio


async def first_line(proc: Process) -> str:
    assert proc.stdout is not None
    buffer = b""
    with anyio.fail_after(15):
        while b"\n" not in buffer:
            buffer += await proc.stdout.receive()
    return buffer.split(b"\n", 1)[0].decode()


def command(*extra: str) -> list[str]:
    return [sys.executable, "-m", "orderfsm", "emulator", "--port", "0", *extra]


async def test_cli_serves_until_shutdown() -> None:
    cmd = command("--secret", "S", "--ping", "0.5", "--project-id", "777", "--seed", "9")
    async with await anyio.open_process(cmd) as proc:
        base_url = await first_line(proc)
        assert base_url.startswith("http://127.0.0.1:")
        client = EmulatorClient(base_url)
        info = await client.info()
        assert (info["secret"], info["project_id"], info["ping_interval"]) == ("S", 777, 0.5)
        user = await client.create_user("cli-user")
        order = await client.create_order(user)
        async with raw_socket(client.ws_url) as ws:
            reply = await ws.connect(user.token, 777)
            assert reply["connect"]["subs"][user.channel]["offset"] == 1
        assert (await client.order(order))["status"] == "new"
        await client.shutdown()
        with anyio.fail_after(10):
            assert await proc.wait() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_cli_stops_on_signals(sig: signal.Signals) -> None:
    async with await anyio.open_process(command()) as proc:
        await EmulatorClient(await first_line(proc)).info()
        proc.send_signal(sig)
        with anyio.fail_after(10):
            assert await proc.wait() == 0


async def test_cli_channel_mode_sets_what_the_channels_offer() -> None:
    assert CLI_CHANNEL_MODES == CHANNEL_MODES  # the CLI's copy, kept free of aiohttp
    async with await anyio.open_process(command("--channel-mode", "none")) as proc:
        client = EmulatorClient(await first_line(proc))
        assert (await client.info())["channel_mode"] == "none"
        user = await client.create_user()
        async with raw_socket(client.ws_url) as ws:
            reply = await ws.connect(user.token, (await client.info())["project_id"])
            assert reply["connect"]["subs"] == {user.channel: {}}
            await ws.send({"id": 2, "history": {"channel": user.channel, "limit": -1}})
            assert (await ws.receive_one())["error"]["code"] == 108
        await client.shutdown()
        with anyio.fail_after(10):
            assert await proc.wait() == 0
