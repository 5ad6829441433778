"""What the tracker tells an application: changes, conflicts and final results."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from orderfsm.core import FINAL_STATUSES, Status
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
    external_id: str | None = None


@attrs.frozen
class StatusChange:
    """An order's status moved forward; each one is delivered exactly once.

    ``at`` is on the event loop's clock (``anyio.current_time()``); ``source``
    names the transport that saw it first.
    """

    order_id: int
    status: Status
    previous: Status | None
    skipped: tuple[Status, ...]
    source: str
    at: float

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


@attrs.frozen
class ConflictSeen:
    """A source contradicted a final status (e.g. ``canceled`` after ``done``).

    The order keeps its status; this is reported once per contradicting status
    so that someone looks at it: money may be involved.
    """

    order_id: int
    current: Status
    observed: Status
    source: str
    at: float


Change = StatusChange | ConflictSeen


@attrs.frozen
class FinalResult:
    """How an order ended, with its details from Get order when they could be had."""

    order_id: int
    status: Status
    source: str
    at: float
    changes: tuple[StatusChange, ...]
    conflicts: tuple[ConflictSeen, ...] = ()
    details: OrderDetails | None = None
    details_error: OrderFsmError | None = attrs.field(default=None, eq=False)

    @property
    def succeeded(self) -> bool:
        return self.status is Status.DONE

    def to_json(self) -> dict[str, Any]:
        details = self.details
        return {
            "order_id": self.order_id,
            "status": self.status.value,
            "source": self.source,
            "final": True,
            "details": None if details is None else details_to_json(details),
        }


def details_to_json(details: OrderDetails) -> dict[str, Any]:
    return attrs.asdict(details, filter=lambda a, _: a.name != "raw")
