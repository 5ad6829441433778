"""How ``watch`` and ``demo`` show an order's life: a timeline, or JSON lines."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from typing import Any, TextIO

import anyio

from orderfsm.core import Status
from orderfsm.errors import OrderFsmError, TrackingTimeout
from orderfsm.interface import HealthReport
from orderfsm.supervisor.records import Change, ConflictSeen, FinalResult

EXIT_DONE, EXIT_ERROR, EXIT_CANCELED, EXIT_EXPIRED, EXIT_TIMEOUT = 0, 1, 3, 4, 5
EXIT_CODES = {Status.DONE: EXIT_DONE, Status.CANCELED: EXIT_CANCELED, Status.EXPIRED: EXIT_EXPIRED}
PATH = (Status.NEW, Status.PAID, Status.DONE)


def exit_code(result: FinalResult | None, error: BaseException | None) -> int:
    if result is not None:
        return EXIT_DONE if result.succeeded else EXIT_CODES.get(result.status, EXIT_ERROR)
    return EXIT_TIMEOUT if isinstance(error, TrackingTimeout) else EXIT_ERROR


class Timeline:
    """Prints each event as it happens; ``at`` values are on the loop's clock."""

    def __init__(self, *, as_json: bool, out: TextIO | None = None) -> None:
        self.as_json = as_json
        self.out = out or sys.stdout
        self._start = anyio.current_time()
        self._wall_offset = time.time() - self._start
        self._reached: list[Status] = []

    def _iso(self, at: float) -> str:
        wall = dt.datetime.fromtimestamp(at + self._wall_offset, tz=dt.timezone.utc)
        return wall.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def _emit(self, record: dict[str, Any], text: str) -> None:
        print(json.dumps(record) if self.as_json else text, file=self.out, flush=True)

    def note(self, order_id: int, message: str) -> None:
        now = anyio.current_time()
        self._emit(
            {"order_id": order_id, "note": message, "at": self._iso(now)},
            f"  {now - self._start:6.2f}s  {'':10} {message}",
        )

    def report(self, order_id: int, report: HealthReport) -> None:
        reason = f": {report.reason}" if report.reason not in ("", report.health.value) else ""
        self._emit(
            {
                "order_id": order_id,
                "transport": report.source,
                "health": report.health.value,
                "reason": report.reason,
                "at": self._iso(report.at),
            },
            f"  {report.at - self._start:6.2f}s  {report.source:10} {report.health.value}{reason}",
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
                f"  {change.at - self._start:6.2f}s  CONFLICT   {change.source} says "
                f"{change.observed} after {change.current}",
            )
            return
        self._reached.append(change.status)
        skipped = f" (skipped {', '.join(map(str, change.skipped))})" if change.skipped else ""
        self._emit(
            {
                "order_id": change.order_id,
                "status": change.status.value,
                "source": change.source,
                "at": self._iso(change.at),
            },
            f"  {change.at - self._start:6.2f}s  {change.status.value.upper():10} "
            f"via {change.source}{skipped}   {self._progress()}",
        )

    def _progress(self) -> str:
        path = list(PATH)
        last = self._reached[-1] if self._reached else None
        if last is not None and last not in path:
            path = [s for s in path if s in self._reached or s is Status.NEW] + [last]
        return " -> ".join(f"[{'x' if s in self._reached else ' '}] {s}" for s in path)

    def final(self, result: FinalResult) -> None:
        record = {**result.to_json(), "at": self._iso(result.at)}
        details = result.details
        if details is None:
            summary = f"no details ({result.details_error})"
        else:
            items = ", ".join(f"{i.quantity} x {i.sku}" for i in details.items) or "no items"
            price = details.price
            summary = items + (f" for {price.amount} {price.currency}" if price else "")
        self._emit(record, f"final: {result.status} (seen first by {result.source}); {summary}")

    def failed(self, order_id: int, error: OrderFsmError) -> None:
        self._emit(
            {
                "order_id": order_id,
                "final": False,
                "error": type(error).__name__,
                "message": str(error),
            },
            f"tracking ended without a final status: {type(error).__name__}: {error}",
        )
