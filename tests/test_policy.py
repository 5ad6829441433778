"""The default failover policy, driven with plain numbers instead of sleeps."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orderfsm.interface import Health
from orderfsm.supervisor.policy import DefaultPolicy, Plan, Situation

POLICY = DefaultPolicy()  # 300 s lifespan, 600 s deadline, 3 s polling, 10 s connect grace


def plan(health: Health | None, now: float, since: float = 0.0, **kw: object) -> Plan:
    return POLICY.plan(
        Situation(started_at=0.0, websocket=health, websocket_since=since, **kw), now
    )  # type: ignore[arg-type]


def test_websocket_first_without_polling_while_it_connects() -> None:
    p = plan(Health.CONNECTING, now=1.0)
    assert p == Plan(websocket=True, poll_interval=None, review_at=10.0)


def test_polling_joins_a_connection_that_takes_too_long() -> None:
    p = plan(Health.CONNECTING, now=10.0)
    assert p.websocket and p.poll_interval == 3.0 and p.review_at == 300.0


def test_healthy_websocket_needs_no_polling() -> None:
    assert plan(Health.HEALTHY, now=5.0) == Plan(True, None, review_at=300.0)


@pytest.mark.parametrize("health", [Health.DEGRADED, Health.FAILED, Health.STOPPED])
def test_polling_as_soon_as_the_websocket_has_problems(health: Health) -> None:
    p = plan(health, now=20.0, since=19.0)
    assert p.poll_interval == 3.0
    assert p.websocket == (health is Health.DEGRADED)  # keep reconnecting unless it gave up


def test_polling_stops_again_when_the_websocket_is_back_and_caught_up() -> None:
    assert plan(Health.DEGRADED, now=30.0).poll_interval == 3.0
    assert plan(Health.HEALTHY, now=31.0, since=31.0).poll_interval is None


def test_websocket_lifespan_ends_in_polling() -> None:
    assert plan(Health.HEALTHY, now=299.9).poll_interval is None
    p = plan(Health.HEALTHY, now=300.0)
    assert p == Plan(websocket=False, poll_interval=3.0, review_at=600.0)


def test_deadline_times_out() -> None:
    assert plan(Health.DEGRADED, now=599.9).timed_out is False
    assert plan(Health.DEGRADED, now=600.0) == Plan(False, None, timed_out=True)


def test_optional_safety_poll_while_healthy() -> None:
    policy = DefaultPolicy(safety_poll_interval=30.0)
    situation = Situation(started_at=0.0, websocket=Health.HEALTHY, websocket_since=0.0)
    assert policy.plan(situation, 1.0).poll_interval == 30.0


def test_no_limits_mean_no_reviews() -> None:
    policy = DefaultPolicy(websocket_lifespan=None, deadline=None)
    situation = Situation(started_at=0.0, websocket=Health.HEALTHY, websocket_since=0.0)
    assert policy.plan(situation, 1e9) == Plan(True, None, review_at=None)


def test_webhook_only_tracking_neither_connects_nor_polls() -> None:
    p = plan(None, now=1.0, can_poll=False)
    assert p == Plan(websocket=False, poll_interval=None, review_at=600.0)


healths = st.sampled_from([None, *Health])
times = st.floats(min_value=0, max_value=2000, allow_nan=False)


@given(health=healths, since=times, now=times, can_poll=st.booleans())
def test_never_left_without_news_before_the_deadline(
    health: Health | None, since: float, now: float, can_poll: bool
) -> None:
    """Until it times out, an order always has a live source: a caught-up
    WebSocket, or polling; a connecting one only for ``connect_grace``, with a
    review planned for when that is over.

    Breakage it is named after: a policy that never polls while the socket is
    still connecting leaves an order without news forever (a socket that never
    connects); it fails here because CONNECTING past the grace is not a source.
    """
    since = min(since, now)
    p = POLICY.plan(Situation(0.0, health, since, can_poll), now)
    if p.timed_out:
        assert now >= 600.0
        return
    grace_ends = since + POLICY.connect_grace
    live_websocket = p.websocket and (
        health is Health.HEALTHY
        or (health is Health.CONNECTING and now < grace_ends and p.review_at is not None)
    )
    assert live_websocket or p.poll_interval is not None or not can_poll
    if p.websocket and health is Health.CONNECTING and p.poll_interval is None and can_poll:
        assert p.review_at is not None and p.review_at <= grace_ends
    assert p.review_at is None or p.review_at > now


@given(health=healths, now=times, later=times)
def test_a_timeout_is_final(health: Health | None, now: float, later: float) -> None:
    first = POLICY.plan(Situation(0.0, health, 0.0), now)
    if first.timed_out:
        assert POLICY.plan(Situation(0.0, health, 0.0), now + later).timed_out


# --- an expired order: a grace, on the cheapest sources --------------------------


def test_an_expired_order_is_followed_through_its_grace() -> None:
    p = plan(Health.HEALTHY, now=100.0, lapsed_since=50.0)
    assert p == Plan(websocket=True, poll_interval=None, review_at=300.0)
    p = plan(Health.HEALTHY, now=400.0, lapsed_since=50.0)  # past the socket's lifespan
    assert p == Plan(websocket=False, poll_interval=15.0, review_at=600.0)


def test_polling_slows_down_during_the_grace() -> None:
    assert plan(Health.DEGRADED, now=20.0, since=19.0, lapsed_since=10.0).poll_interval == 15.0
    assert plan(Health.DEGRADED, now=20.0, since=19.0).poll_interval == 3.0


def test_the_grace_ends_in_expired_not_in_a_timeout() -> None:
    policy = DefaultPolicy(expired_grace=60.0)
    situation = Situation(0.0, Health.HEALTHY, 0.0, lapsed_since=30.0)
    assert policy.plan(situation, 89.9).lapsed is False
    assert policy.plan(situation, 90.0) == Plan(False, None, lapsed=True)


def test_the_deadline_bounds_the_grace_and_still_ends_in_expired() -> None:
    """``orderfsm watch --timeout`` while still expired exits 4 (expired), not 5."""
    situation = Situation(0.0, Health.HEALTHY, 0.0, lapsed_since=500.0)
    assert POLICY.plan(situation, 599.9).review_at == 600.0
    assert POLICY.plan(situation, 600.0) == Plan(False, None, lapsed=True)


def test_no_deadline_and_the_grace_alone_ends_it() -> None:
    policy = DefaultPolicy(deadline=None, websocket_lifespan=None, expired_grace=100.0)
    situation = Situation(0.0, Health.HEALTHY, 0.0, lapsed_since=1000.0)
    assert policy.plan(situation, 1099.0).review_at == 1100.0
    assert policy.plan(situation, 1100.0).lapsed


@given(
    health=healths,
    lapsed_since=times,
    now=times,
    grace=st.floats(min_value=0, max_value=1000),
    deadline=st.none() | st.floats(min_value=0, max_value=2000, exclude_min=True),
)
def test_an_expired_order_settles_once_its_grace_or_the_deadline_is_over(
    health: Health | None, lapsed_since: float, now: float, grace: float, deadline: float | None
) -> None:
    """Never a timeout while expired, never settled early, and a review at the end."""
    policy = DefaultPolicy(expired_grace=grace, deadline=deadline)
    lapsed_since = min(lapsed_since, now)
    p = policy.plan(Situation(0.0, health, 0.0, lapsed_since=lapsed_since), now)
    ends = lapsed_since + grace if deadline is None else min(lapsed_since + grace, deadline)
    assert not p.timed_out
    assert p.lapsed == (now >= ends)
    if not p.lapsed:
        assert p.review_at is not None and now < p.review_at <= ends
        assert p.poll_interval is None or p.poll_interval >= policy.expired_poll_interval
