"""Applying one observation to one order's status: a pure function."""

from __future__ import annotations

from orderfsm.core.graph import TABLE
from orderfsm.core.records import Observation, Outcome
from orderfsm.core.status import Status
from orderfsm.errors import UnknownStatus


def apply(current: Status | None, observation: Observation) -> Outcome:
    """What ``observation`` means for an order whose status is ``current``.

    ``current`` is ``None`` when nothing has been observed yet.  The new
    status, if any, is ``outcome.status`` of an :class:`Advanced`; every other
    outcome leaves the order as it was.  The outcome is a shared, immutable
    object from the compiled table: nothing is allocated or mutated here, so
    the caller decides where state lives (see :class:`OrderBook`).
    """
    outcome = TABLE[current].get(observation.status)
    if outcome is None:
        raise UnknownStatus(observation.status)
    return outcome
