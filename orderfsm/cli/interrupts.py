"""Ctrl-C as an event on the loop, so a command stops the way it stops on its own.

Left to Python, SIGINT raises ``KeyboardInterrupt`` wherever the main
thread happens to be; under trio that can be inside trio's own machinery,
which then ends with "internal error in Trio" instead of a quiet exit 130
(the CLI's Ctrl-C test saw it about once in six runs).  Received on the
loop, it cancels the command's work like any cancellation: the tracker
closes, the view restores the terminal.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable

import anyio

from orderfsm.cli.failures import EXIT_INTERRUPTED


async def unless_interrupted(work: Callable[[], Awaitable[int]]) -> int:
    """``work()``'s exit code, or 130 once SIGINT cancelled it.  What ``work`` raises
    comes out as it was raised (not in an exception group), for the CLI to name."""
    codes: list[int] = []
    errors: list[Exception] = []
    with anyio.open_signal_receiver(signal.SIGINT) as signals:
        async with anyio.create_task_group() as tasks:

            async def run() -> None:
                try:
                    codes.append(await work())
                except Exception as exc:
                    errors.append(exc)
                finally:
                    tasks.cancel_scope.cancel()

            tasks.start_soon(run)
            async for _ in signals:
                tasks.cancel_scope.cancel()
                break
    if errors:
        raise errors[0]
    return codes[0] if codes else EXIT_INTERRUPTED
