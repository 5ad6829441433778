"""The live view of ``watch`` and ``demo`` on a terminal (``pip install 'orderfsm[cli]'``).

One row per order, redrawn in place: its status path, the transport that
saw the last change, each transport's state, and how it ended; below, the
latest events.  Everything is drawn from the event loop's thread (rich's own
refresh thread is off), so the state needs no lock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from types import TracebackType

import anyio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from orderfsm.cli.timeline import health_text, progress, summary
from orderfsm.core import Status
from orderfsm.errors import OrderFsmError
from orderfsm.interface import Health, HealthReport
from orderfsm.supervisor.records import Change, ConflictSeen, FinalResult

EVENTS_SHOWN = 8
REDRAW_EVERY = 0.25
"""Seconds between redraws when nothing happens (the clock column moves)."""
STATUS_STYLE = {
    Status.DONE: "bold green",
    Status.PAID: "green",
    Status.CANCELED: "bold red",
    Status.EXPIRED: "yellow",
}
HEALTH_STYLE = {
    Health.HEALTHY: "green",
    Health.CONNECTING: "cyan",
    Health.DEGRADED: "yellow",
    Health.FAILED: "red",
    Health.STOPPED: "dim",
}


class _Order:
    __slots__ = ("ended", "ended_style", "reached", "transports", "via")

    def __init__(self) -> None:
        self.reached: list[Status] = []
        self.via = ""
        self.transports: dict[str, Health] = {}
        self.ended = ""
        self.ended_style = ""


class LiveView:
    """Use as ``with LiveView(...) as view:`` around the tracking, and run
    :meth:`animate` beside it; what is on screen at the end stays there."""

    def __init__(self, order_ids: Sequence[int], title: str, console: Console | None = None):
        self._title = title
        self._orders = {order_id: _Order() for order_id in order_ids}
        self._transports: list[str] = []
        self._events: deque[Text] = deque(maxlen=EVENTS_SHOWN)
        self._start = anyio.current_time()
        self._console = console or Console()
        self._live = Live(console=self._console, auto_refresh=False, transient=False)

    def __enter__(self) -> LiveView:
        self._live.start()
        self._redraw()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._redraw()
        self._live.stop()

    async def animate(self) -> None:
        while True:
            await anyio.sleep(REDRAW_EVERY)
            self._redraw()

    # --- the view's events --------------------------------------------------------

    def note(self, order_id: int, message: str) -> None:
        self._event(anyio.current_time(), order_id, Text(message, style="italic"))

    def report(self, order_id: int, report: HealthReport) -> None:
        order = self._orders.get(order_id)
        if order is None:
            return
        if report.source not in self._transports:
            self._transports.append(report.source)
        order.transports[report.source] = report.health
        style = HEALTH_STYLE.get(report.health, "")
        self._event(report.at, order_id, Text(f"{report.source} {health_text(report)}", style))

    def change(self, change: Change) -> None:
        order = self._orders.get(change.order_id)
        if order is None:
            return
        if isinstance(change, ConflictSeen):
            said = f"CONFLICT: {change.source} says {change.observed} after {change.current}"
            self._event(change.at, change.order_id, Text(said, "bold red"))
            return
        order.reached.append(change.status)
        order.via = change.source
        style = STATUS_STYLE.get(change.status, "bold")
        text = Text.assemble((change.status.value.upper(), style), f" via {change.source}")
        self._event(change.at, change.order_id, text)

    def final(self, result: FinalResult) -> None:
        order = self._orders[result.order_id]
        self._stopped(order)
        order.ended = f"{'succeeded' if result.succeeded else 'ended'}: {result.status}"
        order.ended_style = "bold green" if result.succeeded else "bold red"
        self._event(result.at, result.order_id, Text(f"final: {result.status}; {summary(result)}"))

    def failed(self, order_id: int, error: OrderFsmError) -> None:
        order = self._orders[order_id]
        self._stopped(order)
        order.ended = f"failed: {type(error).__name__}"
        order.ended_style = "bold red"
        self._redraw()

    @staticmethod
    def _stopped(order: _Order) -> None:
        """The tracker stops an order's transports when it ends, and their own last
        reports (a poller cancelled) come after the end, which the tracker no longer
        tells: without this the row showed a poller ``healthy`` under ``done``."""
        for name, health in order.transports.items():
            if health is not Health.FAILED:
                order.transports[name] = Health.STOPPED

    # --- drawing --------------------------------------------------------------------

    def _event(self, at: float, order_id: int, text: Text) -> None:
        tag = f"{order_id}  " if len(self._orders) > 1 else ""
        self._events.append(Text.assemble((f"{at - self._start:7.2f}s  {tag}", "dim"), text))
        self._redraw()

    def _redraw(self) -> None:
        self._live.update(self._render(), refresh=True)

    def _render(self) -> RenderableType:
        elapsed = anyio.current_time() - self._start
        title = Text(f"{self._title}  ({elapsed:.1f} s)", "bold")
        table = Table(title=title, title_justify="left")
        table.add_column("order", justify="right")
        table.add_column("status")
        table.add_column("path", no_wrap=True)
        table.add_column("via")
        for name in self._transports:
            table.add_column(name)
        table.add_column("outcome")
        for order_id, order in self._orders.items():
            status = Text("-")
            if order.reached:
                last = order.reached[-1]
                status = Text(last.value.upper(), STATUS_STYLE.get(last, ""))
            cells: list[RenderableType] = [
                Text(str(order_id)),
                status,
                Text(progress(order.reached)),  # Text: "[x]" is not markup
                Text(order.via),
            ]
            for name in self._transports:
                health = order.transports.get(name)
                cells.append(
                    Text("") if health is None else Text(health.value, HEALTH_STYLE[health])
                )
            cells.append(Text(order.ended or "following", order.ended_style or "dim"))
            table.add_row(*cells)
        return Group(table, Text("latest events:", "bold"), *self._events)
