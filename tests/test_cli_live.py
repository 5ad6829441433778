"""The live view in a real terminal: ``orderfsm watch`` runs inside tmux, and the test
reads the screen (``capture-pane``) as a person would see it."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import anyio
import pytest

from transports.emulator import Emulator

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(
    TMUX is None and not os.environ.get("CI"), reason="tmux is not installed (.ci/run installs it)"
)


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(seed=43, ping_interval=2.0) as emulator:
        yield emulator


class Terminal:
    """A tmux server of its own (``-L``), one window of a fixed size."""

    def __init__(self, name: str) -> None:
        assert TMUX is not None, "tmux is needed for this test"
        self.base = [TMUX, "-L", name]

    def start(self, command: str, **env: str) -> None:
        options = [f"-e{key}={value}" for key, value in env.items()]
        # The size is the terminal's, as for a person: not COLUMNS/LINES inherited from pytest.
        command = f"unset COLUMNS LINES; {command}"
        subprocess.run(
            [*self.base, "new-session", "-d", "-x", "150", "-y", "40", *options, command],
            check=True,
            timeout=30,
        )

    def screen(self) -> str:
        result = subprocess.run(
            [*self.base, "capture-pane", "-p"], capture_output=True, text=True, timeout=30
        )
        return result.stdout

    def wait_for(self, seen: Callable[[str], bool], timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if seen(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"not on the screen after {timeout} s:\n{screen}")
            time.sleep(0.1)

    def close(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=30)


def row(screen: str, order_id: int) -> str:
    """The table row of an order (the line that starts with its id)."""
    lines = [line for line in screen.splitlines() if line.strip("│ ").startswith(str(order_id))]
    assert len(lines) == 1, screen
    return lines[0]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_watch_shows_each_order_live_in_a_terminal(emu: Emulator, backend: str) -> None:
    async def prepare() -> tuple[int, int, str]:
        user = await emu.create_user()
        return await emu.create_order(user), await emu.create_order(user), user.token

    done, refunded, token = anyio.run(prepare)
    command = [
        sys.executable, "-m", "orderfsm", "watch",
        "--project-id", str(emu.project_id),
        "--order-id", str(done), "--order-id", str(refunded),
        "--token-env", "ORDERFSM_TOKEN",
        "--ws-url", emu.ws_url, "--api-url", emu.api_url,
        "--backend", backend,
    ]  # fmt: skip
    terminal = Terminal(f"orderfsm-test-{os.getpid()}-{backend}")
    terminal.start(
        f"{shlex.join(command)}; echo EXIT=$?; sleep 600",
        ORDERFSM_TOKEN=token,
    )
    try:
        # Both orders on screen, followed, their socket healthy: nothing paid yet.
        screen = terminal.wait_for(
            lambda s: f"{done}" in s and "healthy" in s and s.count("following") == 2
        )
        assert "orderfsm watch: 2 orders of project" in screen
        assert "[x] new -> [ ] paid -> [ ] done" in row(screen, done)
        assert "websocket" in screen  # the transport column
        anyio.run(emu.run_script, done, [(0.1, "paid"), (0.1, "done")])
        anyio.run(emu.run_script, refunded, [(0.1, "paid"), (0.1, "canceled")])
        screen = terminal.wait_for(lambda s: "EXIT=" in s)
    finally:
        terminal.close()
    first, second = row(screen, done), row(screen, refunded)
    assert "DONE" in first and "[x] new -> [x] paid -> [x] done" in first
    assert "succeeded: done" in first and "websocket" in first
    assert "stopped" in first and "healthy" not in first  # the tracker stopped its transports
    assert "CANCELED" in second and "[x] new -> [x] paid -> [x] canceled" in second
    assert "ended: canceled" in second
    assert "latest events:" in screen and f"{refunded}  CANCELED via websocket" in screen
    assert "EXIT=3" in screen  # one order refunded
