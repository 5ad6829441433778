"""Follow orders on a tracker and show them: shared by ``watch`` and ``demo``.

Each order is watched in its own task; what happens goes to a view (the
live view, plain lines or JSON lines).  A misconfiguration that a transport
reports (a URL that does not lead to Xsolla) ends every order at once: the
command names it instead of waiting for a timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

import anyio

from orderfsm.cli.failures import CommandError, describe, leaves
from orderfsm.cli.interrupts import stopped_by_signal
from orderfsm.core import Status
from orderfsm.errors import (
    OrderFsmError,
    OrderNotFound,
    TokenRejected,
    TrackingTimeout,
    WrongEndpoint,
)
from orderfsm.interface import Health, HealthReport
from orderfsm.supervisor.records import Change, FinalResult
from orderfsm.supervisor.tracker import Tracker

EXIT_DONE, EXIT_ERROR, EXIT_CANCELED, EXIT_EXPIRED, EXIT_TIMEOUT = 0, 1, 3, 4, 5
EXIT_CODES = {Status.DONE: EXIT_DONE, Status.CANCELED: EXIT_CANCELED, Status.EXPIRED: EXIT_EXPIRED}

Outcome = FinalResult | OrderFsmError


class Interrupted(OrderFsmError):
    """The command was stopped (Ctrl-C or SIGTERM) before the order settled: every
    order followed gets a last word, so a program reading ``--json`` knows none is
    still to come."""


class CommandFailed(OrderFsmError):
    """The command ended on an error of its own before the order settled (the same
    last word as :class:`Interrupted`, naming the error instead of a signal)."""


def cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` is a cancellation (possibly in exception groups) and nothing else."""
    return all(isinstance(leaf, anyio.get_cancelled_exc_class()) for leaf in leaves(exc))


class View(Protocol):
    """Where the story of the orders is told."""

    def note(self, order_id: int, message: str) -> None: ...

    def report(self, order_id: int, report: HealthReport) -> None: ...

    def change(self, change: Change) -> None: ...

    def final(self, result: FinalResult) -> None: ...

    def failed(self, order_id: int, error: OrderFsmError) -> None: ...

    async def animate(self) -> None:
        """Redraw now and then while the orders are followed (or return at once)."""


def exit_code(outcome: Outcome) -> int:
    if isinstance(outcome, FinalResult):
        return EXIT_DONE if outcome.succeeded else EXIT_CODES.get(outcome.status, EXIT_ERROR)
    return EXIT_TIMEOUT if isinstance(outcome, TrackingTimeout) else EXIT_ERROR


class Misconfiguration:
    """Watches health reports for a transport that failed because it was pointed at
    the wrong place; the command then ends at once, naming it."""

    def __init__(self, view: View) -> None:
        self._view = view
        self.error: OrderFsmError | None = None
        self.found = anyio.Event()

    def report(self, order_id: int, report: HealthReport) -> None:
        self._view.report(order_id, report)
        if report.health is Health.FAILED and isinstance(report.error, WrongEndpoint):
            if self.error is None:
                self.error = report.error
            self.found.set()


def hint(error: OrderFsmError, project_id: int) -> str:
    """What to check, for the errors a mistake on the command line causes."""
    if isinstance(error, TokenRejected):
        return f" (check the token, and that it is a token of project {project_id})"
    if isinstance(error, OrderNotFound) and "project id" not in str(error):
        return f" (check the order id, and that the token's user made it in project {project_id})"
    return ""


def ending(exc: BaseException) -> OrderFsmError:
    """The last word for the orders not settled when ``exc`` ended :func:`follow`."""
    if stopped_by_signal():
        return Interrupted("stopped (Ctrl-C or SIGTERM) before the order settled")
    if cancelled(exc):  # a failure outside, which the command reports on stderr
        return CommandFailed("the command ended on an error before the order settled")
    return CommandFailed(f"the command ended before the order settled: {describe(exc)[0]}")


async def follow(
    tracker: Tracker,
    order_ids: Sequence[int],
    view: View,
    misconfigured: Misconfiguration,
    alongside: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> int:
    """Show every order's changes as they come, then how each ended; return the exit code.

    ``alongside`` runs beside the orders until they end (the demo's story): run
    here, its failure is an error this function sees and names on each order
    not yet settled, not an anonymous cancellation.

    Raises :class:`CommandError` (one line per order that ended in an error) when
    an order ended in an error, with the exit code of the first order that did
    not succeed.
    """
    outcomes: dict[int, Outcome] = {}

    async def one(order_id: int) -> None:
        try:
            async for change in tracker.watch(order_id):
                view.change(change)
            result = await tracker.wait(order_id)
        except OrderFsmError as exc:
            outcomes[order_id] = exc
            view.failed(order_id, exc)
        else:
            outcomes[order_id] = result
            view.final(result)

    async def stop_if_misconfigured(scope: anyio.CancelScope) -> None:
        await misconfigured.found.wait()
        scope.cancel()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_if_misconfigured, tg.cancel_scope)
            tg.start_soon(view.animate)
            if alongside is not None:
                tg.start_soon(alongside)
            async with anyio.create_task_group() as orders:
                for order_id in order_ids:
                    orders.start_soon(one, order_id)
            tg.cancel_scope.cancel()
    except BaseException as exc:
        stopped = ending(exc)
        for order_id in order_ids:
            if order_id not in outcomes:
                view.failed(order_id, stopped)
        raise
    if misconfigured.error is not None:
        for order_id in order_ids:
            if order_id not in outcomes:
                outcomes[order_id] = misconfigured.error
                view.failed(order_id, misconfigured.error)
    codes = [exit_code(outcomes[order_id]) for order_id in order_ids]
    code = next((c for c in codes if c != EXIT_DONE), EXIT_DONE)
    errors = [o for o in (outcomes[i] for i in order_ids) if isinstance(o, OrderFsmError)]
    if misconfigured.error is not None:
        errors = [misconfigured.error]
    if errors:
        lines = [f"{type(e).__name__}: {e}{hint(e, tracker.project_id)}" for e in errors]
        raise CommandError(*lines, code=code)
    return code
