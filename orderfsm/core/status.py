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


FINAL_STATUSES = frozenset({Status.DONE, Status.CANCELED, Status.EXPIRED})


def parse_status(value: object) -> Status:
    """Turn a wire value into a :class:`Status`, or raise ``UnknownStatus``."""
    try:
        return _BY_VALUE[value]
    except (KeyError, TypeError):
        raise UnknownStatus(value) from None


_BY_VALUE: dict[object, Status] = {s.value: s for s in Status}
