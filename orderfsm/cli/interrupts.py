"""Ctrl-C and SIGTERM as events on the loop, so a command stops the way it stops on its own.

Left to Python, SIGINT raises ``KeyboardInterrupt`` wherever the main
thread happens to be; under trio that can be inside trio's own machinery,
which then ends with "internal error in Trio" instead of a quiet exit 130
(the CLI's Ctrl-C test saw it about once in six runs).  SIGTERM (a deploy,
``docker stop``, systemd) Python leaves to the OS, which ends the process at
once: its tracker never closes, and what it has not yet written to a fleet's
journal never reaches the others.  Received on the loop, either cancels the
command's work like any cancellation: the tracker closes, the view restores
the terminal.  Whether a signal did is recorded (:func:`stopped_by_signal`):
a cancellation can also come from a failing sibling task, and ``watch
--json`` must not tell a program "Ctrl-C or SIGTERM" for that.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

import anyio

from orderfsm.cli.failures import EXIT_INTERRUPTED

STOPS = (signal.SIGINT, signal.SIGTERM)


class _Stop:
    asked = False


_STOP: ContextVar[_Stop] = ContextVar("orderfsm_cli_stop")


def stopped_by_signal() -> bool:
    """Whether SIGINT or SIGTERM is what cancels the work of :func:`unless_interrupted`
    that calls this (any other cancellation is some failure's)."""
    stop = _STOP.get(None)
    return stop is not None and stop.asked


async def stop_asked() -> None:
    """Return at the first SIGINT or SIGTERM.  From then on, while the command stops
    cleanly, a second one stops the process at once: SIGTERM's default does;
    Ctrl-C's would raise ``KeyboardInterrupt`` into the loop, whose tasks then die
    printing their tracebacks."""
    with anyio.open_signal_receiver(*STOPS) as signals:
        async for _ in signals:
            break
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def unless_interrupted(work: Callable[[], Awaitable[int]]) -> int:
    """``work()``'s exit code, or 130 once SIGINT or SIGTERM cancelled it.  What
    ``work`` raises comes out as it was raised (not in an exception group), for the
    CLI to name."""
    codes: list[int] = []
    errors: list[Exception] = []
    stop = _Stop()
    _STOP.set(stop)  # before the task starts: its context is a copy holding this object
    async with anyio.create_task_group() as tasks:

        async def run() -> None:
            try:
                codes.append(await work())
            except Exception as exc:
                errors.append(exc)
            finally:
                tasks.cancel_scope.cancel()

        tasks.start_soon(run)
        await stop_asked()  # cancelled if the work ends first
        stop.asked = True
        tasks.cancel_scope.cancel()
    if errors:
        raise errors[0]
    return codes[0] if codes else EXIT_INTERRUPTED
