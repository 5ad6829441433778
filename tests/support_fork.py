"""Real forks for the tests: a child that exits with a code, never returning into
pytest, and a parent that waits for it within a bound."""

from __future__ import annotations

import os
import signal
import time
import warnings
from collections.abc import Callable


def fork(child: Callable[[], int]) -> int:
    """Fork; the child runs ``child`` and exits with what it returns (9 if it raises)."""
    with warnings.catch_warnings():  # a fork beside threads: what the tests are about
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 9
        try:
            code = child()
        finally:
            os._exit(code)
    return pid


def waited(pid: int, within: float) -> int:
    """The child's wait status; a child still running after ``within`` s is killed, and
    the test fails."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"the forked child was still running after {within:g} s")


def exit_code(pid: int, within: float) -> int:
    """The child's exit code, once it exits within ``within`` s (see :func:`waited`)."""
    return os.waitstatus_to_exitcode(waited(pid, within))
