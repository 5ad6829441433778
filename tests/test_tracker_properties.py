"""The tracker's promise under any interleaving of its sources, stated as properties.

A true life cycle is drawn (expired then paid, refunds after delivery
included); four sources (WebSocket, polling, the Event API, webhooks) each
see some of it, in order, with repeats; their reports reach the tracker in
any interleaving, so a late one is stale by the time it arrives.  Whatever
the draw, the application hears a legal sequence, each change once, nothing
lost; every ``wait`` gets the same one settled result; and a refund after
delivery is heard once.  The sources feed a real ``Tracker`` through
``observe``, the way a webhook receiver does; each example runs on asyncio
and on trio.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orderfsm import Change, FinalResult, Observation, Status, StatusChange
from orderfsm.core import verdict
from orderfsm.errors import OrderFsmError, TrackingTimeout
from orderfsm.supervisor.policy import DefaultPolicy
from orderfsm.supervisor.tracker import Tracker

PATHS = [
    ("new", "paid", "done"),
    ("new", "paid", "canceled"),
    ("new", "expired"),
    ("new", "expired", "paid", "done"),
    ("new", "paid", "done", "canceled"),
    ("new", "expired", "paid", "done", "canceled"),
]
SOURCES = ("websocket", "polling", "events", "webhook")
SEES = {"events": {"paid", "canceled"}, "webhook": {"paid", "canceled"}}
"""What a source can report at all (the Event API and webhooks know payments and refunds)."""
GRACE, DEADLINE = 0.2, 0.4
ORDER = 4242


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[tuple[str, ...], list[tuple[str, str, bool]]]:
    """A true path, and (source, status, checkpoint before it) in arrival order."""
    path = draw(st.sampled_from(PATHS))
    queues = []
    for source in SOURCES:
        seen = [s for s in path if s in SEES.get(source, set(path)) and draw(st.booleans())]
        queues.append([(source, s) for s in seen for _ in range(draw(st.integers(1, 2)))])
    arrivals: list[tuple[str, str, bool]] = []
    while any(queues):
        queue = draw(st.sampled_from([q for q in queues if q]))
        source, status = queue.pop(0)
        arrivals.append((source, status, draw(st.booleans())))
    return path, arrivals


def expected_settlement(path: tuple[str, ...], heard: list[str], until: Status) -> str | None:
    """What the tracker must settle on: the first heard status that answers, else
    ``expired`` if that is where it stands, else nothing (a timeout)."""
    for status in heard:
        if verdict(Status(status), until).settled:
            return status
    return "expired" if heard and heard[-1] == "expired" else None


async def follow(
    arrivals: list[tuple[str, str, bool]], until: Status
) -> tuple[list[Change], list[FinalResult | OrderFsmError]]:
    heard: list[Change] = []
    results: list[FinalResult | OrderFsmError] = []
    policy = DefaultPolicy(deadline=DEADLINE, expired_grace=GRACE)
    async with Tracker(
        project_id=1,
        transports=("webhook",),
        fetch_details=False,
        policy=policy,
        until=until,
        on_change=heard.append,
    ) as tracker:

        async def wait() -> None:
            try:
                results.append(await tracker.wait(ORDER))
            except OrderFsmError as exc:
                results.append(exc)

        tracker.track(ORDER)
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            tg.start_soon(wait)
            for source, status, checkpoint in arrivals:
                if checkpoint:
                    await anyio.lowlevel.checkpoint()
                tracker.observe(Observation(ORDER, status, source, anyio.current_time()))
    return heard, results


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=deliveries(), until=st.sampled_from([Status.DONE, Status.PAID]))
def test_any_interleaving_is_heard_once_in_order_and_settles_once(
    backend: str, drawn: tuple[tuple[str, ...], list[tuple[str, str, bool]]], until: Status
) -> None:
    path, arrivals = drawn
    heard, results = anyio.run(follow, arrivals, until, backend=backend)
    changes = [c for c in heard if isinstance(c, StatusChange)]
    statuses = [c.status.value for c in changes]
    reported = {status for _, status, _ in arrivals}

    # a legal sequence, each change once, chained, and nothing reported is lost
    assert len(changes) == len(heard), "no conflict can arise from the documented life cycle"
    assert statuses == sorted(set(statuses), key=path.index)
    assert [c.previous for c in changes] == [None, *(c.status for c in changes)][: len(changes)]
    assert set(statuses) <= reported
    if reported:
        assert statuses[-1] == max(reported, key=path.index)

    # every wait gets the same, one, settled result
    settled = expected_settlement(path, statuses, until)
    assert len(results) == 2 and results[0] is results[1]
    result = results[0]
    if settled is None:
        assert isinstance(result, TrackingTimeout)
    else:
        assert isinstance(result, FinalResult) and result.status.value == settled
        settling = [c for c in changes if c.settled]
        assert [c.status.value for c in settling] == ([] if settled == "expired" else [settled])
        assert list(result.changes) == changes[: len(result.changes)]

    # a refund after delivery is heard once, as a change from done
    if "canceled" in statuses and "done" in statuses:
        refund = changes[statuses.index("canceled")]
        assert statuses.count("canceled") == 1 and refund.previous is Status.DONE
