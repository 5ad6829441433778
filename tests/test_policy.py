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
    """Until it times out, an order always has a live source: a connected (or
    briefly connecting) WebSocket, or polling."""
    p = POLICY.plan(Situation(0.0, health, min(since, now), can_poll), now)
    if p.timed_out:
        assert now >= 600.0
        return
    websocket_trusted = p.websocket and health in (Health.HEALTHY, Health.CONNECTING)
    assert websocket_trusted or p.poll_interval is not None or not can_poll
    assert p.review_at is None or p.review_at > now


@given(health=healths, now=times, later=times)
def test_a_timeout_is_final(health: Health | None, now: float, later: float) -> None:
    first = POLICY.plan(Situation(0.0, health, 0.0), now)
    if first.timed_out:
        assert POLICY.plan(Situation(0.0, health, 0.0), now + later).timed_out
