"""When an order is settled: the answer to "did this purchase succeed?".

Settled and final are not the same.  Only ``canceled`` is final (nothing
follows a refund), but the question a waiter asks is answered earlier:
reaching its goal (``done`` for a client, as Xsolla's SDKs wait for; ``paid``
for a server that grants on payment) settles it as a success, ``canceled`` as
a failure.  ``expired`` is a failure that may still be undone, because a
payment under way when the order expired can still move it to ``paid``: it
is *lapsed*, and the supervisor's policy decides how long to wait before it
counts (time lives there, not here).  A success can also be followed later
by a refund (``done`` -> ``canceled``): a change to report, not a contradiction.

The verdicts are computed once from the graph, like the transition table.
"""

from __future__ import annotations

import enum

from orderfsm.core.graph import GRAPH, Graph, reachable_from
from orderfsm.core.status import FINAL_STATUSES, LAPSED_STATUSES, Status


class Verdict(enum.Enum):
    PENDING = "pending"
    """Not decided yet: keep following the order."""
    SUCCEEDED = "succeeded"
    """The goal was reached (a later refund is a follow-up change)."""
    FAILED = "failed"
    """Refunded: the purchase did not stand."""
    LAPSED = "lapsed"
    """Expired: a failure once the grace is over, unless a payment completes first."""

    settled: bool
    """Succeeded or failed: the order has its answer.  An attribute of each member,
    not a property: the supervisor reads it on every status change."""

    def __init__(self, value: str) -> None:
        self.settled = value in ("succeeded", "failed")


GOALS = (Status.PAID, Status.DONE)
"""What a waiter may wait for: payment (a server granting on ``order_paid``) or delivery."""


def compile_verdicts(graph: Graph) -> dict[Status, dict[Status | None, Verdict]]:
    """For each goal, the verdict on every status (``None``: nothing seen yet)."""
    verdicts: dict[Status, dict[Status | None, Verdict]] = {}
    for goal in GOALS:
        beyond = reachable_from(graph, goal)
        row: dict[Status | None, Verdict] = {None: Verdict.PENDING}
        for status in Status:
            if status in FINAL_STATUSES:
                row[status] = Verdict.FAILED
            elif status in beyond:
                row[status] = Verdict.SUCCEEDED
            elif status in LAPSED_STATUSES:
                row[status] = Verdict.LAPSED
            else:
                row[status] = Verdict.PENDING
        verdicts[goal] = row
    return verdicts


VERDICTS = compile_verdicts(GRAPH)


def check_goal(until: object) -> Status:
    """``until`` as a goal, or a ``ValueError`` naming the ones there are."""
    if until not in GOALS:
        goals = ", ".join(g.value for g in GOALS)
        raise ValueError(f"until must be one of {goals}, got {until!r}")
    return Status(until)


def verdict(status: Status | None, until: Status = Status.DONE) -> Verdict:
    """What ``status`` answers for a waiter whose goal is ``until``."""
    return VERDICTS[until][status]
