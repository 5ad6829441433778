"""Many orders' statuses, kept in one dict.

An order's whole state is its latest status (``None`` until one is seen), so
the book stores exactly that: no per-order object, no per-order machine.  That
keeps an order at about a hundred bytes and every operation a single dict
operation, whatever the number of orders.
"""

from __future__ import annotations

from collections.abc import Iterator

from orderfsm.core.graph import TABLE
from orderfsm.core.records import Advanced, Observation, Outcome
from orderfsm.core.status import FINAL_STATUSES, Status
from orderfsm.errors import OrderAlreadyTracked, OrderNotTracked, UnknownStatus

_UNSEEN = object()


class OrderBook:
    __slots__ = ("_status",)

    def __init__(self) -> None:
        self._status: dict[int, Status | None] = {}

    def track(self, order_id: int, status: Status | None = None) -> None:
        """Start following an order, optionally from a status already known.

        Passing ``Status.NEW`` for an order the caller just created means a
        later ``new`` observation is a duplicate rather than news.
        """
        if order_id in self._status:
            raise OrderAlreadyTracked(order_id)
        self._status[order_id] = status

    def forget(self, order_id: int) -> None:
        try:
            del self._status[order_id]
        except KeyError:
            raise OrderNotTracked(order_id) from None

    def status(self, order_id: int) -> Status | None:
        status = self._status.get(order_id, _UNSEEN)
        if status is _UNSEEN:
            raise OrderNotTracked(order_id)
        return status  # type: ignore[return-value]

    def is_final(self, order_id: int) -> bool:
        return self.status(order_id) in FINAL_STATUSES

    def apply(self, observation: Observation) -> Outcome:
        """Apply an observation and keep the new status if the order advanced."""
        order_id = observation.order_id
        current = self._status.get(order_id, _UNSEEN)
        if current is _UNSEEN:
            raise OrderNotTracked(order_id)
        # apply() inlined: this is the hot path of every transport
        outcome = TABLE[current].get(observation.status)  # type: ignore[index]
        if outcome is None:
            raise UnknownStatus(observation.status)
        if type(outcome) is Advanced:
            self._status[order_id] = outcome.status
        return outcome

    def __len__(self) -> int:
        return len(self._status)

    def __contains__(self, order_id: object) -> bool:
        return order_id in self._status

    def __iter__(self) -> Iterator[int]:
        return iter(self._status)
