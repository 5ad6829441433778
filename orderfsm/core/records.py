"""The records the core reads and returns: observations and outcomes."""

from __future__ import annotations

import math
from typing import Any

import attrs

from orderfsm.core.status import FINAL_STATUSES, Status, parse_status
from orderfsm.errors import MalformedObservation


def _check_order_id(_: object, __: attrs.Attribute[int], value: object) -> None:
    if type(value) is not int or value <= 0:
        raise MalformedObservation(f"order_id must be a positive int, got {value!r}")


def _check_source(_: object, __: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise MalformedObservation(f"source must be a non-empty str, got {value!r}")


def _check_at(_: object, __: attrs.Attribute[float], value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise MalformedObservation(f"at must be a finite number, got {value!r}")


def _check_position(_: object, __: attrs.Attribute[Position | None], value: object) -> None:
    if value is not None and not isinstance(value, Position):
        raise MalformedObservation(f"position must be a Position or None, got {value!r}")


@attrs.frozen
class Position:
    """Where the observation sits in the server's own sequence, when it has one.

    ``offset`` and ``epoch`` come from a Centrifuge stream, ``event_id`` from
    the Event API.  Transports use them to resume; the core only carries them.
    """

    offset: int | None = None
    epoch: str = ""
    event_id: int | None = None


@attrs.frozen
class Observation:
    """One sighting of an order's status by one transport, at one moment.

    ``at`` is a number the caller passes in (the supervisor uses the event
    loop's monotonic clock); the core never reads a clock.  ``raw`` keeps the
    payload as received, for logs and for the application, and takes no part
    in equality.
    """

    order_id: int = attrs.field(validator=_check_order_id)
    status: Status = attrs.field(converter=parse_status)
    source: str = attrs.field(validator=_check_source)
    at: float = attrs.field(validator=_check_at)
    position: Position | None = attrs.field(default=None, validator=_check_position)
    raw: Any = attrs.field(default=None, eq=False, repr=False)

    @classmethod
    def trusted(
        cls,
        order_id: int,
        status: Status,
        source: str,
        at: float,
        position: Position | None = None,
        raw: Any = None,
    ) -> Observation:
        """Build one from fields the caller has already checked, skipping the checks.

        For a protocol engine's hot path only (every WebSocket status passes
        here): the fields must be what the validators would accept.
        """
        observation = _new(cls)
        _set(observation, "order_id", order_id)
        _set(observation, "status", status)
        _set(observation, "source", source)
        _set(observation, "at", at)
        _set(observation, "position", position)
        _set(observation, "raw", raw)
        return observation


_new = object.__new__
_set = object.__setattr__


# Outcomes hold no reference to the observation that caused them: the caller
# has it in hand.  That lets the compiled table hold one immutable outcome per
# (current, observed) pair, so applying an observation allocates nothing.


@attrs.frozen
class Advanced:
    """The order moved forward; this is what an application acts on.

    ``previous`` is ``None`` for the first status seen; ``skipped`` lists the
    statuses the order must have passed through unseen (``new`` -> ``done``
    skips ``paid``).
    """

    previous: Status | None
    status: Status
    skipped: tuple[Status, ...] = ()

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


@attrs.frozen
class Duplicate:
    """The order already had this status; nothing to do."""

    status: Status


@attrs.frozen
class Stale:
    """A status from before the current one arrived late; nothing to do."""

    current: Status
    observed: Status


@attrs.frozen
class Conflict:
    """The observation contradicts what is known; the state is kept.

    For example ``canceled`` after ``done``.  It is reported rather than
    dropped because it means one of the sources is wrong, and money may be
    involved.
    """

    current: Status
    observed: Status


Outcome = Advanced | Duplicate | Stale | Conflict
