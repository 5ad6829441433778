"""Reading an order id the way every transport must agree on.

Xsolla documents order ids as integers; a JSON string of its digits has been
seen in other Xsolla bodies, so every reader takes both.  Anything else (a
float, a bool, "²", which ``str.isdigit`` accepts and ``int`` refuses, or thousands
of digits, which ``int`` refuses past 4,300) is not an order id: the caller
ignores or refuses its message, and nothing raises past it.
"""

from __future__ import annotations

MAX_ORDER_ID = 2**63 - 1
"""A database's BIGINT: the journal stores ids as such."""


def order_id_of(value: object) -> int | None:
    """The order id in ``value``, or ``None`` when it is not one."""
    if type(value) is int:
        number = value
    elif type(value) is str and value.isascii() and value.isdigit() and len(value) <= 19:
        number = int(value)
    else:
        return None
    return number if 0 < number <= MAX_ORDER_ID else None
