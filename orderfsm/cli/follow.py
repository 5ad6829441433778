"""Follow one order on a tracker and print it: shared by ``watch`` and ``demo``."""

from __future__ import annotations

from orderfsm.cli.timeline import Timeline, exit_code
from orderfsm.errors import OrderFsmError
from orderfsm.supervisor.records import FinalResult
from orderfsm.supervisor.tracker import Tracker


async def follow(tracker: Tracker, order_id: int, timeline: Timeline) -> int:
    """Print every change as it comes, then the final result; return the exit code."""
    result: FinalResult | None = None
    error: OrderFsmError | None = None
    try:
        async for change in tracker.watch(order_id):
            timeline.change(change)
        result = await tracker.wait(order_id)
    except OrderFsmError as exc:
        error = exc
        timeline.failed(order_id, exc)
    else:
        timeline.final(result)
    return exit_code(result, error)
