"""Conformance: the official Centrifuge JavaScript client against the emulator.

Installs the npm packages ``centrifuge`` and ``ws`` once into a cached folder
(``$ORDERFSM_NPM_CACHE`` or ``~/.cache/orderfsm/npm``) and runs
``tests/emulator_js/conformance.cjs`` with node.  It never skips: a machine
without node and npm fails this test, as CI must run it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import ByteReceiveStream

from transports.emulator import Emulator

PACKAGES = ("centrifuge@5.8.0", "ws@8.23.0")
SCRIPT = Path(__file__).parent / "emulator_js" / "conformance.cjs"


def npm_folder() -> Path:
    """Install the pinned packages once (atomically, so parallel runs are safe)."""
    root = Path(os.environ.get("ORDERFSM_NPM_CACHE", Path.home() / ".cache" / "orderfsm" / "npm"))
    folder = root / "-".join(p.replace("@", "-") for p in PACKAGES)
    if (folder / "node_modules" / "centrifuge" / "package.json").exists():
        return folder
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.fail("node and npm are required for the Centrifuge conformance tests")
    staging = root / f"{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    subprocess.run(
        [
            npm,
            "install",
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            "--prefix",
            str(staging),
            *PACKAGES,
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    try:
        staging.rename(folder)
    except OSError:  # another run won the race
        shutil.rmtree(staging, ignore_errors=True)
    return folder


@pytest.fixture(scope="session")
def node_modules() -> Path:
    return npm_folder() / "node_modules"


class Events:
    """JSON lines from the node script, with waiting by predicate."""

    def __init__(self, stream: ByteReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""
        self.seen: list[dict[str, Any]] = []

    async def until(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        with anyio.fail_after(15):
            while True:
                while b"\n" in self._buffer:
                    line, self._buffer = self._buffer.split(b"\n", 1)
                    event: dict[str, Any] = json.loads(line)
                    self.seen.append(event)
                    if predicate(event):
                        return event
                self._buffer += await self._stream.receive()

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.seen if e["event"] == name]


def is_pub(order: int, status: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: (
        e["event"] == "publication"
        and e["data"]
        == {
            "order_id": order,
            "status": status,
        }
    )


@pytest.mark.anyio
async def test_official_js_client_history_publications_and_recovery(node_modules: Path) -> None:
    async with Emulator(ping_interval=1.0, pong_timeout=1.0, seed=7) as emu:
        user = await emu.create_user("js-user")
        first = await emu.create_order(user)
        await emu.set_status(first, "paid")
        env = {**os.environ, "NODE_PATH": str(node_modules)}
        command = ["node", str(SCRIPT), emu.ws_url, user.token, str(emu.project_id)]
        async with await anyio.open_process(command, env=env) as proc:
            assert proc.stdout is not None and proc.stdin is not None
            events = Events(proc.stdout)

            # connect with data, server-side subscription, then history as Xsolla documents
            subscribed = await events.until(lambda e: e["event"] == "subscribed")
            assert subscribed["channel"] == user.channel
            assert subscribed["recoverable"] is True and subscribed["positioned"] is True
            assert subscribed["offset"] == 2
            hist = await events.until(lambda e: e["event"] == "history")
            assert [(p["offset"], p["data"]) for p in hist["publications"]] == [
                (1, {"order_id": first, "status": "new"}),
                (2, {"order_id": first, "status": "paid"}),
            ]
            assert hist["offset"] == 2 and hist["epoch"] == subscribed["epoch"]

            # a live server-side publication
            second = await emu.create_order(user)
            live = await events.until(is_pub(second, "new"))
            assert live["offset"] == 3 and live["channel"] == user.channel

            # the client answers server pings (pong: true), so the connection survives them
            with anyio.fail_after(5):
                # the emulator runs elsewhere: polling its control surface is the only way
                while not any(c.pongs_received >= 2 for c in await emu.connections(user)):  # noqa: ASYNC110
                    await anyio.sleep(0.05)

            # forced reconnect; what is published meanwhile arrives through recovery
            assert await emu.close_connections(user, 3011, "force reconnect") == 1
            await emu.set_status(second, "paid")
            await emu.set_status(first, "done")
            connecting = await events.until(lambda e: e["event"] == "connecting")
            assert connecting["code"] == 3011
            again = await events.until(lambda e: e["event"] == "subscribed")
            assert again["wasRecovering"] is True and again["recovered"] is True
            recovered_second = await events.until(is_pub(second, "paid"))
            recovered_first = await events.until(is_pub(first, "done"))
            assert (recovered_second["offset"], recovered_first["offset"]) == (4, 5)

            # and live publications keep flowing on the new connection
            await emu.set_status(second, "done")
            assert (await events.until(is_pub(second, "done")))["offset"] == 6

            await proc.stdin.send(b"quit\n")
            await events.until(lambda e: e["event"] == "bye")
            with anyio.fail_after(10):
                assert await proc.wait() == 0

        assert not events.named("error") and not events.named("history_error")
        assert [e["offset"] for e in events.named("publication")] == [3, 4, 5, 6]
        assert (await emu.stats()).connects == 2


@pytest.mark.anyio
async def test_official_js_client_stops_on_3500_for_a_bad_token(node_modules: Path) -> None:
    async with Emulator(ping_interval=1.0, seed=7) as emu:
        env = {**os.environ, "NODE_PATH": str(node_modules)}
        command = ["node", str(SCRIPT), emu.ws_url, "not-a-token", str(emu.project_id)]
        async with await anyio.open_process(command, env=env) as proc:
            assert proc.stdout is not None and proc.stdin is not None
            events = Events(proc.stdout)
            disconnected = await events.until(lambda e: e["event"] == "disconnected")
            assert disconnected == {
                "event": "disconnected",
                "code": 3500,
                "reason": "invalid token",
            }
            await proc.stdin.send(b"quit\n")
            with anyio.fail_after(10):
                await proc.wait()
        assert not events.named("connected") and (await emu.stats()).connects == 0
        assert [c.close_code for c in await emu.connections()] == [3500]
