"""Applying one observation to one order's status: a pure function."""

from __future__ import annotations

from orderfsm.core.graph import TABLE, Verdict
from orderfsm.core.records import Advanced, Conflict, Duplicate, Observation, Outcome, Stale
from orderfsm.core.status import Status
from orderfsm.errors import UnknownStatus


def apply(current: Status | None, observation: Observation) -> Outcome:
    """What ``observation`` means for an order whose status is ``current``.

    ``current`` is ``None`` when nothing has been observed yet.  The new
    status, if any, is ``outcome.status`` of an :class:`Advanced`; every other
    outcome leaves the order as it was.  Nothing is mutated here, so the
    caller decides where state lives (see :class:`~orderfsm.core.book.OrderBook`).
    """
    observed = observation.status
    rule = TABLE[current].get(observed)
    if rule is None:
        raise UnknownStatus(observed)
    verdict = rule.verdict
    if verdict is Verdict.ADVANCED:
        return Advanced(observation, current, observed, rule.skipped)
    assert current is not None  # only the "nothing seen yet" row lacks a status, and it only advances
    if verdict is Verdict.DUPLICATE:
        return Duplicate(observation, observed)
    if verdict is Verdict.STALE:
        return Stale(observation, current, observed)
    return Conflict(observation, current, observed)
