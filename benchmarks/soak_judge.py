"""Compare what the application received for one order with the emulator's truth.

Pure.  The tracker answers "did this purchase succeed?" for its goal
(``until``): the order *settles* on the first status that answers it (the goal
reached, or a refund), or as ``expired`` once an expired order's grace is over.
It may settle on a later status of the true path than the first that answers
(it looked late: a refund already happened), never on an earlier one.  The
rules, per order:

* lost: the order never settled (``wait`` raised, or ``watch`` ended without
  settling), or a change after the settlement that a webhook announced never
  reached a ``watch(follow=True)``;
* duplicated: one status change delivered twice (by a ``watch``, or listed
  twice in the result);
* wrong: a status the order never had, statuses in an order the order did not
  go through, a change whose ``previous`` is not the change before it, a
  conflict reported although every source told the truth, a settlement the
  truth does not allow, ``watch`` and ``wait`` disagreeing, a following watch
  that does not start with what ``watch`` saw, or Get order details older
  than the settlement.

Intermediate statuses may be skipped (a transport can see ``new`` then
``done``); that is not a loss.  Each category counts an order at most once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import attrs

from orderfsm.core import Status
from orderfsm.core import verdict as answer
from orderfsm.supervisor.records import Change, ConflictSeen, FinalResult, StatusChange


@attrs.frozen
class Truth:
    path: tuple[str, ...]
    """Every status the emulator gave the order, in order."""
    final: str
    """What the emulator says the order ended as."""
    until: str = "done"
    """The tracker's goal."""
    webhooked: frozenset[str] = frozenset()
    """Statuses a (real, well signed) webhook announced."""
    asked_at: Mapping[str, float] = attrs.field(factory=dict)
    """When (event loop clock) the emulator was asked for each status."""
    expired_grace: float = 0.0

    def settlements(self, expired_seen_at: float | None = None) -> tuple[str, ...]:
        """The statuses the tracker may settle on.

        ``expired`` too when the tracker saw the order expire (at
        ``expired_seen_at``) and the payment came only after its grace: under
        load the harness can be that late, and then expired is the right answer.
        """
        goal = Status(self.until)
        allowed: tuple[str, ...] = ()
        for i, status in enumerate(self.path):
            if answer(Status(status), goal).settled:
                allowed = self.path[i:]
                break
        if self.path[-1] == "expired":
            return ("expired",)
        if expired_seen_at is not None and "expired" in self.path:
            after = self.path[self.path.index("expired") + 1]
            if expired_seen_at + self.expired_grace <= self.asked_at.get(after, -math.inf):
                allowed = ("expired", *allowed)
        return allowed


@attrs.frozen
class Seen:
    """Everything the application got for one order."""

    watched: tuple[Change, ...]
    watch_error: str | None
    """``repr`` of the exception ``watch`` raised, if any."""
    result: FinalResult | None
    wait_error: str | None
    followed: tuple[Change, ...] | None = None
    """What a ``watch(follow=True)`` got until the tracker closed (``None``: not run)."""


@attrs.frozen
class Verdict:
    lost: bool = False
    duplicated: bool = False
    wrong: bool = False
    reasons: tuple[str, ...] = ()
    final_source: str | None = None

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.wrong)


def expired_at(seen: Seen) -> float | None:
    """When the tracker first saw the order expire (``None``: never)."""
    for change in seen.watched:
        if isinstance(change, StatusChange) and change.status is Status.EXPIRED:
            return change.at
    return None


def judge(truth: Truth, seen: Seen, fleet_expired_at: float | None = None) -> Verdict:
    """``fleet_expired_at``: when another instance of a fleet saw the order expire.
    The grace is the fleet's: its owner judges it over, the others follow that
    verdict, so it runs from the first instance that saw ``expired``."""
    lost: list[str] = []
    duplicated: list[str] = []
    wrong: list[str] = []
    if truth.path[-1] != truth.final:
        wrong.append(f"harness: emulator says {truth.final}, the plan ended {truth.path[-1]}")
    seen_at = [at for at in (expired_at(seen), fleet_expired_at) if at is not None]
    allowed = truth.settlements(min(seen_at) if seen_at else None)

    changes = _check_changes("watch", seen.watched, truth, duplicated, wrong)
    statuses = [c.status.value for c in changes]
    settling = [c for c in changes if c.settled]
    if len(settling) > 1 or (settling and settling[-1] is not changes[-1]):
        wrong.append(f"watch: {statuses} settles more than once, or goes on after it")
    settled_by_watch = settling[-1].status.value if settling else None
    if settled_by_watch is None and statuses[-1:] == ["expired"] and seen.watch_error is None:
        settled_by_watch = "expired"  # settled by the end of its grace, not by a change
    if settled_by_watch is None:
        lost.append(f"watch ended unsettled ({seen.watch_error or 'no error'})")
    elif settled_by_watch not in allowed:
        wrong.append(f"watch settled {settled_by_watch}, the truth allows {list(allowed)}")

    result = seen.result
    if result is None:
        lost.append(f"wait raised {seen.wait_error}")
    else:
        settled = result.status.value
        if settled not in allowed:
            wrong.append(f"wait: settled {settled}, the truth allows {list(allowed)}")
        if settled_by_watch is not None and settled != settled_by_watch:
            wrong.append(f"wait settled {settled}, watch {settled_by_watch}")
        listed = [c.status.value for c in result.changes]
        _check_sequence("result", listed, truth, duplicated, wrong)
        if tuple(result.changes) != tuple(changes):
            wrong.append(f"watch saw {statuses}, the result lists {listed}")
        if result.conflicts:
            wrong.append(f"result lists conflicts {list(result.conflicts)}")
        details = result.details
        if details is not None and details.status not in truth.path[_index(truth, settled) :]:
            wrong.append(f"details say {details.status}, settled {settled}, truth {truth.path}")
        if seen.followed is not None:
            _check_followed(seen.followed, changes, settled, truth, lost, duplicated, wrong)

    return Verdict(
        lost=bool(lost),
        duplicated=bool(duplicated),
        wrong=bool(wrong),
        reasons=(*lost, *duplicated, *wrong),
        final_source=None if result is None else result.source,
    )


def _check_changes(
    label: str,
    watched: Sequence[Change],
    truth: Truth,
    duplicated: list[str],
    wrong: list[str],
) -> list[StatusChange]:
    """Each change true, once, in order, chained to the one before it; no conflicts."""
    changes = [c for c in watched if isinstance(c, StatusChange)]
    _check_sequence(label, [c.status.value for c in changes], truth, duplicated, wrong)
    previous = None
    for change in changes:
        if change.previous is not previous:
            wrong.append(
                f"{label}: {change.status} says it came after {change.previous}, not {previous}"
            )
        previous = change.status
        for skipped in change.skipped:
            if skipped.value not in truth.path:
                wrong.append(f"{label}: {change.status} skipped {skipped}, never a status")
    for conflict in watched:
        if isinstance(conflict, ConflictSeen):
            wrong.append(f"{label}: conflict {conflict.current} then {conflict.observed}")
    return changes


def _check_followed(
    followed: Sequence[Change],
    changes: Sequence[StatusChange],
    settled: str,
    truth: Truth,
    lost: list[str],
    duplicated: list[str],
    wrong: list[str],
) -> None:
    """What comes after the settlement is heard once; a refund announced by webhook, surely."""
    after = _check_changes("follow", followed, truth, duplicated, wrong)
    if after[: len(changes)] != list(changes):
        wrong.append(f"follow began {after[: len(changes)]}, watch saw {list(changes)}")
    heard = {c.status.value for c in after}
    for status in truth.path[_index(truth, settled) + 1 :]:
        if status in truth.webhooked and status not in heard:
            lost.append(f"follow: {status} came by webhook after the settlement, never heard")


def _index(truth: Truth, status: str) -> int:
    return truth.path.index(status) if status in truth.path else len(truth.path)


def _check_sequence(
    label: str,
    statuses: Sequence[str],
    truth: Truth,
    duplicated: list[str],
    wrong: list[str],
) -> None:
    """Each status once, each a true one, in the order the order went through them."""
    if len(set(statuses)) != len(statuses):
        duplicated.append(f"{label}: {statuses} repeats a change")
    positions = []
    for status in statuses:
        if status not in truth.path:
            wrong.append(f"{label}: {status} was never a status (truth {list(truth.path)})")
        else:
            positions.append(truth.path.index(status))
    if positions != sorted(positions):
        wrong.append(f"{label}: {statuses} goes against the truth {list(truth.path)}")


def fleet_verdict(truth: Truth, mine: Verdict, seen: Seen, peer: Seen) -> Verdict:
    """``--fleet``: another instance followed the order through the journal alone.

    It is judged against the truth by the same rules, and must settle as this
    instance did: the journal carries every change one instance applies to all.
    An expired order's grace runs from when either saw it expire: the peer hears
    ``expired`` through the journal, later, and follows the owner's last look
    rather than a grace of its own (soak seed 3 under load: a payment asked
    between the two graces' ends, after the owner's look; both settled expired).
    """
    theirs = judge(truth, peer, expired_at(seen))
    reasons = [f"peer: {r}" for r in theirs.reasons]
    here, there = seen.result, peer.result
    differ = False
    if here is not None and there is not None and here.status is not there.status:
        differ = True
        reasons.append(f"peer: settled {there.status}, this instance {here.status}")
    return Verdict(
        lost=mine.lost or theirs.lost,
        duplicated=mine.duplicated or theirs.duplicated,
        wrong=mine.wrong or theirs.wrong or differ,
        reasons=(*mine.reasons, *reasons),
        final_source=mine.final_source,
    )
