"""Xsolla's order life cycle (xsolla.md §1): the checked moves and the limited-item rules.

Pure (no I/O, no clock), over one user's orders.  ``set_status`` stays the raw
tool that moves anything anywhere; these rules are what the checked operations
(``pay``, ``deliver``, ``refund``, ``expire``) and order creation obey:

* creating an order with a limited item expires the user's earlier ``new``
  orders with that item: only the newest can be paid;
* paying (``new`` or ``expired`` -> ``paid``) is refused with Xsolla's error
  2002 when the user already holds the item's limit in ``paid``/``done`` orders.
"""

from __future__ import annotations

from collections.abc import Iterable

from transports.emulator.state import Item, Order, StateError

MOVES: dict[str, tuple[frozenset[str], str]] = {
    "pay": (frozenset({"new", "expired"}), "paid"),
    "deliver": (frozenset({"paid"}), "done"),
    "refund": (frozenset({"paid", "done"}), "canceled"),
    "expire": (frozenset({"new"}), "expired"),
}
"""action -> (the statuses it may start from, the status it moves to)."""

HELD = frozenset({"paid", "done"})
"""Statuses that count against a purchase limit (a refund, ``canceled``, frees it)."""

PAYMENT_REFUSED = 2002
"""The payment UI's error for paying an order that may no longer be paid."""

ILLEGAL_MOVE = 409
LIMIT_REACHED = 422


def target(action: str, order: Order, siblings: Iterable[Order]) -> str:
    """The status ``action`` moves ``order`` to; ``siblings`` are its user's orders.

    Raises :class:`StateError`: 400 for an unknown action, 409 for a move the
    life cycle does not allow from the order's status, 422 with error code 2002
    for a payment over the purchase limit.
    """
    if action not in MOVES:
        raise StateError(f"unknown action {action!r}; one of {sorted(MOVES)}")
    sources, status = MOVES[action]
    if order.status not in sources:
        raise StateError(
            f"cannot {action} order {order.order_id}: its status is {order.status!r}, "
            f"{action} needs one of {sorted(sources)}",
            ILLEGAL_MOVE,
        )
    if action == "pay":
        item = over_limit(order, siblings)
        if item is not None:
            raise StateError(
                f"payment refused (error {PAYMENT_REFUSED}): order {order.order_id} is "
                f"{order.status!r} and user {order.user!r} already holds {item.limit} "
                f"paid order(s) with the limited item {item.sku!r} (limit {item.limit})",
                LIMIT_REACHED,
                PAYMENT_REFUSED,
            )
    return status


def over_limit(order: Order, siblings: Iterable[Order]) -> Item | None:
    """The first limited item of ``order`` whose limit its user's held orders already reach."""
    others = [o for o in siblings if o is not order and o.status in HELD]
    for item in order.items:
        if item.limit is not None:
            held = sum(item.sku in o.skus for o in others)
            if held >= item.limit:
                return item
    return None


def superseded(order: Order, siblings: Iterable[Order]) -> list[Order]:
    """The earlier ``new`` orders a freshly created ``order`` expires, oldest first."""
    limited = {item.sku for item in order.items if item.limit is not None}
    if not limited:
        return []
    return sorted(
        (
            o
            for o in siblings
            if o.order_id < order.order_id and o.status == "new" and limited & o.skus
        ),
        key=lambda o: o.order_id,
    )
