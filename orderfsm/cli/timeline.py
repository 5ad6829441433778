"""How ``watch`` and ``demo`` tell an order's life as lines: a timeline, or JSON lines.

Plain lines are for a pipe or a log file (the live view is for a terminal);
JSON lines for programs: a status change ``{"order_id", "status", "source",
"at"}``, a transport's health ``{"order_id", "transport", "health",
"reason", "at"}``, a note ``{"order_id", "note", "at"}``, and per order a
last line with ``"final": true`` (or ``"final": false`` and the error, also
``Interrupted`` when a signal stops the command before the order settled,
``CommandFailed`` when an error of its own ends it).  An order that ends in
an error is told on stderr by the command, so the plain timeline does not
repeat it.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import anyio

from orderfsm.core import Status
from orderfsm.errors import OrderFsmError
from orderfsm.interface import HealthReport
from orderfsm.supervisor.records import Change, ConflictSeen, FinalResult, StatusChange

PATH = (Status.NEW, Status.PAID, Status.DONE)


def progress(reached: Sequence[Status]) -> str:
    """``[x] new -> [x] paid -> [ ] done``, bent to show an expired or refunded order."""
    path = list(PATH)
    last = reached[-1] if reached else None
    if last is not None and last not in path:
        path = [s for s in path if s in reached or s is Status.NEW] + [last]
    return " -> ".join(f"[{'x' if s in reached else ' '}] {s}" for s in path)


def health_text(report: HealthReport) -> str:
    reason = f": {report.reason}" if report.reason not in ("", report.health.value) else ""
    return f"{report.health.value}{reason}"


def summary(result: FinalResult) -> str:
    details = result.details
    if details is None:
        return f"no details ({result.details_error})"
    items = ", ".join(f"{i.quantity} x {i.sku}" for i in details.items) or "no items"
    price = details.price
    return items + (f" for {price.amount} {price.currency}" if price else "")


class Timeline:
    """Prints each event as it happens; ``at`` values are on the loop's clock."""

    def __init__(
        self, *, as_json: bool, orders: Sequence[int] = (), out: TextIO | None = None
    ) -> None:
        self.as_json = as_json
        self.out = out or sys.stdout
        self._start = anyio.current_time()
        self._wall_offset = time.time() - self._start
        self._reached: dict[int, list[Status]] = {}
        self._tagged = len(orders) > 1
        """Several orders: each plain line names its order."""

    def _iso(self, at: float) -> str:
        wall = dt.datetime.fromtimestamp(at + self._wall_offset, tz=dt.timezone.utc)
        return wall.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def _emit(self, record: dict[str, Any], text: str | None) -> None:
        if self.as_json:
            print(json.dumps(record), file=self.out, flush=True)
        elif text is not None:
            print(text, file=self.out, flush=True)

    def _line(self, order_id: int, at: float, what: str, text: str) -> str:
        tag = f"{order_id}  " if self._tagged else ""
        return f"  {at - self._start:6.2f}s  {tag}{what:10} {text}".rstrip()

    def note(self, order_id: int, message: str) -> None:
        now = anyio.current_time()
        self._emit(
            {"order_id": order_id, "note": message, "at": self._iso(now)},
            self._line(order_id, now, "", message),
        )

    def report(self, order_id: int, report: HealthReport) -> None:
        self._emit(
            {
                "order_id": order_id,
                "transport": report.source,
                "health": report.health.value,
                "reason": report.reason,
                "at": self._iso(report.at),
            },
            self._line(order_id, report.at, report.source, health_text(report)),
        )

    def change(self, change: Change) -> None:
        if isinstance(change, ConflictSeen):
            self._emit(
                {
                    "order_id": change.order_id,
                    "conflict": change.observed.value,
                    "status": change.current.value,
                    "source": change.source,
                    "at": self._iso(change.at),
                },
                self._line(
                    change.order_id,
                    change.at,
                    "CONFLICT",
                    f"{change.source} says {change.observed} after {change.current}",
                ),
            )
            return
        reached = self._reached.setdefault(change.order_id, [])
        reached.append(change.status)
        self._emit(
            {
                "order_id": change.order_id,
                "status": change.status.value,
                "source": change.source,
                "at": self._iso(change.at),
            },
            self._line(change.order_id, change.at, change.status.value.upper(), _via(change))
            + f"   {progress(reached)}",
        )

    def final(self, result: FinalResult) -> None:
        tag = f"order {result.order_id} " if self._tagged else ""
        self._emit(
            {**result.to_json(), "at": self._iso(result.at)},
            f"{tag}final: {result.status} (seen first by {result.source}); {summary(result)}",
        )

    async def animate(self) -> None:
        """Lines need no redrawing."""

    def failed(self, order_id: int, error: OrderFsmError) -> None:
        self._emit(
            {
                "order_id": order_id,
                "final": False,
                "error": type(error).__name__,
                "message": str(error),
            },
            None,
        )


def _via(change: StatusChange) -> str:
    skipped = f" (skipped {', '.join(map(str, change.skipped))})" if change.skipped else ""
    return f"via {change.source}{skipped}"
