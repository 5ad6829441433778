"""``EmulatorProcess``: the emulator in a child process, and the CLI's ``--gc`` modes."""

from __future__ import annotations

import subprocess
import sys

import anyio
import pytest

from transports.emulator import EmulatorError, EmulatorProcess
from transports.emulator.raw import raw_socket

pytestmark = pytest.mark.anyio


async def test_process_serves_and_stops_cleanly() -> None:
    process = EmulatorProcess(project_id=4242, secret="S", ping_interval=0.5, seed=3, gc="frozen")
    async with process as emu:
        info = await emu.info()
        assert (info["project_id"], info["secret"], info["ping_interval"]) == (4242, "S", 0.5)
        user = await emu.create_user("p-1")
        await emu.create_order(user)
        async with raw_socket(emu.ws_url) as ws:
            reply = await ws.connect(user.token, 4242)
            assert reply["connect"]["subs"][user.channel]["offset"] == 1
        pid = process.pid
    assert pid > 0 and process.returncode == 0
    with pytest.raises(EmulatorError):
        await emu.info()  # it is gone


async def test_process_that_cannot_start_raises() -> None:
    with pytest.raises(EmulatorError, match="exited before serving"):
        async with EmulatorProcess(extra_args=["--no-such-option"]):
            pass  # pragma: no cover


async def test_process_stops_when_the_body_is_cancelled() -> None:
    process = EmulatorProcess()
    with anyio.CancelScope() as scope:
        async with process as emu:
            await emu.info()
            scope.cancel()
            await anyio.sleep(10)
    assert scope.cancelled_caught
    assert process.returncode == 0


@pytest.mark.parametrize(
    ("mode", "check"),
    [
        ("default", "gc.isenabled() and gc.get_freeze_count() == 0"),
        ("frozen", "gc.isenabled() and gc.get_freeze_count() > 0 "
                   "and gc.get_threshold() == FROZEN_THRESHOLDS"),
        ("off", "not gc.isenabled()"),
    ],
)  # fmt: skip
def test_gc_modes(mode: str, check: str) -> None:
    # In a child interpreter: the test process's own collector must stay as it is.
    code = (
        "import gc; from orderfsm.cli.emulator_cmd import tune_gc, FROZEN_THRESHOLDS; "
        f"tune_gc({mode!r}); assert {check}"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
