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
    """``work()``'s exit code, or 130 once SIGINT cancelled it."""
    code = EXIT_INTERRUPTED
    with anyio.open_signal_receiver(signal.SIGINT) as signals:
        async with anyio.create_task_group() as tasks:

            async def cancel_on_signal() -> None:
                async for _ in signals:
                    tasks.cancel_scope.cancel()
                    return

            tasks.start_soon(cancel_on_signal)
            code = await work()
            tasks.cancel_scope.cancel()
    return code
