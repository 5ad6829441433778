"""What the tracker tells an application: changes, conflicts and final results."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from orderfsm.core import FINAL_STATUSES, Status, Verdict, verdict
from orderfsm.errors import OrderFsmError
from orderfsm.interface import TokenProvider

if TYPE_CHECKING:
    from transports.polling import OrderDetails


@attrs.frozen
class User:
    """Whose orders these are: the token callable and, optionally, the Login user id.

    Orders tracked with the same ``User`` share one WebSocket connection, so
    create one per player and reuse it.
    """

    token: TokenProvider
    external_id: str | None = attrs.field(default=None)

    @external_id.validator
    def _storable(self, _attribute: object, value: str | None) -> None:
        # A fleet writes the id to its journal; PostgreSQL refuses a NUL in text,
        # and a refused write would hold back every later write of the instance.
        if value is not None and "\x00" in value:
            raise ValueError(f"a user id cannot contain a NUL character: {value!r}")


@attrs.frozen
class StatusChange:
    """An order's status moved forward; each one is delivered exactly once.

    ``at`` is on the event loop's clock (``anyio.current_time()``); ``source``
    names the transport that saw it first.  ``settled`` marks the change that
    answered the order's question (its goal reached, or a refund): ``wait``
    returns with it.  Changes can follow it: ``done`` -> ``canceled`` is a
    refund after delivery, and the game must take the item back.
    """

    order_id: int
    status: Status
    previous: Status | None
    skipped: tuple[Status, ...]
    source: str
    at: float
    settled: bool = False

    @property
    def final(self) -> bool:
        """Nothing can follow: the order was refunded."""
        return self.status in FINAL_STATUSES


@attrs.frozen
class ConflictSeen:
    """A source contradicted what is known (a status neither before nor after the
    current one in the graph).

    The order keeps its status; this is reported once per contradicting status
    so that someone looks at it: money may be involved.  Xsolla's documented
    life cycle orders every two statuses, so it does not arise with it; a
    status seen late is stale and dropped, and a refund after ``done`` is a
    change.
    """

    order_id: int
    current: Status
    observed: Status
    source: str
    at: float


Change = StatusChange | ConflictSeen


@attrs.frozen
class FinalResult:
    """How an order settled, with its details from Get order when they could be had.

    ``status`` is ``until`` (or later) for a success, ``canceled`` for a refund,
    ``expired`` for an order that stayed expired through its grace.  Settled is
    not final: a delivered order may still be refunded later (``done`` ->
    ``canceled``), and an expired one may still be paid after the grace.  Hear
    of that through ``Tracker(on_change=...)``, ``watch(..., follow=True)`` or
    the webhook handler (``order_canceled`` / ``order_paid``), which keep
    working after ``wait`` has returned.
    """

    order_id: int
    status: Status
    source: str
    at: float
    changes: tuple[StatusChange, ...]
    conflicts: tuple[ConflictSeen, ...] = ()
    details: OrderDetails | None = None
    details_error: OrderFsmError | None = attrs.field(default=None, eq=False)
    until: Status = Status.DONE
    """The goal the order was tracked for."""

    @property
    def succeeded(self) -> bool:
        return verdict(self.status, self.until) is Verdict.SUCCEEDED

    def to_json(self) -> dict[str, Any]:
        details = self.details
        return {
            "order_id": self.order_id,
            "status": self.status.value,
            "source": self.source,
            "final": True,
            "succeeded": self.succeeded,
            "details": None if details is None else details_to_json(details),
        }


def details_to_json(details: OrderDetails) -> dict[str, Any]:
    return attrs.asdict(details, filter=lambda a, _: a.name != "raw")
