"""Running the ``orderfsm`` command as a new user does: a real process, real exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from transports.emulator import Emulator

COMMAND = [sys.executable, "-m", "orderfsm"]


def watch_args(emu: Emulator, order_id: int, *extra: str) -> list[str]:
    """``watch`` on the emulator, fast polling, JSON lines (arguments after ``COMMAND``)."""
    return [
        "watch",
        "--project-id",
        str(emu.project_id),
        "--order-id",
        str(order_id),
        "--ws-url",
        emu.ws_url,
        "--api-url",
        emu.api_url,
        "--poll-interval",
        "0.1",
        "--json",
        *extra,
    ]


def start(args: list[str], **env: str) -> subprocess.Popen[str]:
    """``orderfsm ARGS`` with its output piped and ``env`` added to this environment.

    Ctrl-C acts as in a terminal even when the suite runs as a background job
    (whose shell ignores SIGINT, which its children would inherit)."""
    return spawn([*COMMAND, *args], **env)


def spawn(command: list[str], **env: str) -> subprocess.Popen[str]:
    """Any command, as :func:`start` starts ``orderfsm``."""
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """``orderfsm ARGS`` to its end, output captured, ``env`` added to this environment."""
    return subprocess.run(
        [*COMMAND, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )
