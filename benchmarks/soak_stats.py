"""Check ``tracker.stats()`` against what the soak's application counted itself.

Pure and cheap: one pass over the orders of a schedule once its tracker has
closed.  The application side is independent of the counters: the results
``wait`` returned, the errors it raised, and every change a
``watch(follow=True)`` delivered.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import attrs

from orderfsm.errors import OrderFsmError
from orderfsm.metrics.counters import outcome, unsettled_reason
from orderfsm.metrics.records import TrackerStats
from orderfsm.supervisor.records import Change, ConflictSeen, FinalResult, StatusChange


@attrs.frozen
class Counted:
    """What the application saw of one order."""

    result: FinalResult | None
    error: BaseException | None
    followed: Sequence[Change]


def stats_mismatches(stats: TrackerStats, orders: Sequence[Counted]) -> list[str]:
    """Each number of ``stats`` the application's own count disagrees with."""
    settled = Counter(outcome(o.result.status, o.result.until) for o in orders if o.result)
    unsettled = Counter(
        unsettled_reason(o.error) if isinstance(o.error, OrderFsmError) else "error"
        for o in orders
        if o.result is None and o.error is not None
    )
    changes = Counter(c.source for o in orders for c in o.followed if type(c) is StatusChange)
    conflicts = sum(type(c) is ConflictSeen for o in orders for c in o.followed)
    expected = {
        "orders_tracked": len(orders),
        "orders_active": 0,
        "settled": dict(settled),
        "unsettled": dict(unsettled),
        "changes": dict(changes),
        "conflicts": conflicts,
        "polling": 0,
    }
    found = {name: getattr(stats, name) for name in expected}
    return [
        f"tracker.stats().{name} is {found[name]}, the application counted {want}"
        for name, want in expected.items()
        if found[name] != want
    ]
