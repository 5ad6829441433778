"""The statuses an Xsolla order can have."""

from __future__ import annotations

import enum

from orderfsm.errors import UnknownStatus


class Status(str, enum.Enum):
    """An order status, spelled exactly as Xsolla spells it on the wire.

    It subclasses ``str`` so that ``Status.PAID == "paid"`` and both hash the
    same: the transition table is keyed by these strings, so a raw status from
    a frame and an enum member find the same row without a conversion.
    """

    NEW = "new"
    PAID = "paid"
    DONE = "done"
    CANCELED = "canceled"
    EXPIRED = "expired"

    def __str__(self) -> str:
        return self.value


FINAL_STATUSES = frozenset({Status.CANCELED})
"""Statuses an order never leaves.  Only ``canceled`` (a refund): ``done`` can
still be refunded, and ``expired`` can still be paid (``xsolla.md`` §1)."""

LAPSED_STATUSES = frozenset({Status.EXPIRED})
"""A failure only once a grace period is over: a payment already under way when
the order expired can still complete and move it to ``paid``."""


def parse_status(value: object) -> Status:
    """Turn a wire value into a :class:`Status`, or raise ``UnknownStatus``."""
    try:
        return _BY_VALUE[value]
    except (KeyError, TypeError):
        raise UnknownStatus(value) from None


_BY_VALUE: dict[object, Status] = {s.value: s for s in Status}
