"""Compare what the application received for one order with the emulator's truth.

Pure.  The rules, per order:

* lost: the true final status never reached the application (``wait`` raised,
  or ``watch`` ended without a final change);
* duplicated: one status change delivered twice (by ``watch``, or listed twice
  in the result);
* wrong: a status the order never had, statuses in an order the order did not
  go through, a change whose ``previous`` is not the change before it, a
  conflict reported although every source told the truth, a final status other
  than the true one, ``watch`` and ``wait`` disagreeing, or Get order details
  that contradict the final status.

Intermediate statuses may be skipped (a transport can see ``new`` then
``done``); that is not a loss.  Each category counts an order at most once.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from orderfsm.supervisor.records import Change, ConflictSeen, FinalResult, StatusChange


@attrs.frozen
class Truth:
    path: tuple[str, ...]
    """Every status the emulator gave the order, in order."""
    final: str
    """What the emulator says the order ended as."""


@attrs.frozen
class Seen:
    """Everything the application got for one order."""

    watched: tuple[Change, ...]
    watch_error: str | None
    """``repr`` of the exception ``watch`` raised, if any."""
    result: FinalResult | None
    wait_error: str | None


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


def judge(truth: Truth, seen: Seen) -> Verdict:
    lost: list[str] = []
    duplicated: list[str] = []
    wrong: list[str] = []
    if truth.path[-1] != truth.final:
        wrong.append(f"harness: emulator says {truth.final}, the plan ended {truth.path[-1]}")

    changes = [c for c in seen.watched if isinstance(c, StatusChange)]
    conflicts = [c for c in seen.watched if isinstance(c, ConflictSeen)]
    statuses = [c.status.value for c in changes]
    _check_sequence("watch", statuses, truth, duplicated, wrong)
    previous = None
    for change in changes:
        if change.previous is not previous:
            wrong.append(
                f"watch: {change.status} says it came after {change.previous}, not {previous}"
            )
        previous = change.status
        for skipped in change.skipped:
            if skipped.value not in truth.path:
                wrong.append(f"watch: {change.status} skipped {skipped}, never a status")
    for conflict in conflicts:
        wrong.append(f"conflict reported: {conflict.current} then {conflict.observed}")

    finals = [c for c in changes if c.final]
    if not finals:
        lost.append(f"watch ended without a final status ({seen.watch_error or 'no error'})")
    elif finals[-1].status.value != truth.final:
        wrong.append(f"watch: final {finals[-1].status}, truth {truth.final}")

    result = seen.result
    if result is None:
        lost.append(f"wait raised {seen.wait_error}")
    else:
        if result.status.value != truth.final:
            wrong.append(f"wait: final {result.status}, truth {truth.final}")
        listed = [c.status.value for c in result.changes]
        _check_sequence("result", listed, truth, duplicated, wrong)
        if tuple(result.changes) != tuple(changes):
            wrong.append(f"watch saw {statuses}, the result lists {listed}")
        if result.conflicts:
            wrong.append(f"result lists conflicts {list(result.conflicts)}")
        details = result.details
        if details is not None and details.status != truth.final:
            wrong.append(f"details say {details.status}, truth {truth.final}")

    return Verdict(
        lost=bool(lost),
        duplicated=bool(duplicated),
        wrong=bool(wrong),
        reasons=(*lost, *duplicated, *wrong),
        final_source=None if result is None else result.source,
    )


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
