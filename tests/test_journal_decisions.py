"""The journal's pure decisions, with plain numbers: no database, no clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orderfsm.errors import BadStoreUrl, JournalConfigError, SchemaTooNew
from orderfsm.journal import (
    SCHEMA_VERSION,
    Answer,
    Busy,
    Claim,
    ClaimState,
    JournalSettings,
    MemoryConfig,
    Outcome,
    PostgresConfig,
    Reply,
    SqliteConfig,
    TryAgain,
    Wait,
    after_fencing,
    judge,
    keeps,
    may_record,
    may_take,
    outcome_of,
    parse_store_url,
    plan_replay,
    prunable,
    prune_due,
    renewed,
    reopened,
    schema_plan,
    settled,
    take,
)

OK = Answer(204)
REFUSED = Answer(400, b'{"error": {}}', "application/json")
FAILED = Answer(500)


def running(attempt: int = 1, lease_until: float = 160.0) -> Claim:
    return Claim("order_paid:1", attempt, ClaimState.RUNNING, "a", lease_until, 100.0)


def test_a_key_is_taken_when_free_failed_or_abandoned_and_never_once_answered() -> None:
    assert may_take(None, 0.0)
    first = take(None, "order_paid:1", "a", 100.0, 60.0)
    assert (first.attempt, first.state, first.lease_until) == (1, ClaimState.RUNNING, 160.0)
    assert not may_take(first, 159.999)
    assert may_take(first, 160.0)  # the lease ran out: judged from the row alone
    released = settled(first, FAILED, 101.0)
    assert released.state is ClaimState.RELEASED and may_take(released, 101.0)
    assert take(released, "order_paid:1", "b", 102.0, 60.0).attempt == 2
    answered = settled(first, OK, 101.0)
    assert answered.state is ClaimState.ANSWERED and answered.answer == OK
    assert not may_take(answered, 10**9)


def test_only_the_latest_running_attempt_records() -> None:
    first = running(1)
    assert may_record(first, 1)
    taken_over = take(first, first.key, "b", 200.0, 60.0)
    assert not may_record(taken_over, 1) and may_record(taken_over, 2)
    assert not may_record(settled(taken_over, OK, 201.0), 2)
    assert not may_record(None, 1)


def test_a_renewal_keeps_only_the_latest_running_attempt_and_holds_even_late() -> None:
    """A renewal is fenced as an answer is; one that comes after its lease ran out
    still holds when nobody took the key (the database was down for everyone)."""
    first = running(1)
    kept = renewed(first, 1, first.lease_until + 60.0)
    assert kept is not None and kept.lease_until == first.lease_until + 60.0
    assert not may_take(kept, first.lease_until) and kept.attempt == 1
    late = renewed(first, 1, first.lease_until + 90.0)  # past its lease: nobody took it
    assert late is not None and not may_take(late, first.lease_until + 30.0)
    taken_over = take(first, first.key, "b", first.lease_until, 60.0)
    assert renewed(taken_over, 1, 10**9) is None
    assert renewed(settled(first, OK, 101.0), 1, 10**9) is None
    assert renewed(settled(first, FAILED, 101.0), 1, 10**9) is None
    assert renewed(None, 1, 10**9) is None


def test_answers_kept_released_and_what_they_say() -> None:
    assert keeps(OK) and keeps(REFUSED) and not keeps(FAILED) and not keeps(Answer(503))
    assert outcome_of(OK) is Outcome.HANDLED
    assert outcome_of(REFUSED) is Outcome.REFUSED
    assert outcome_of(FAILED) is Outcome.FAILED


def test_a_duplicate_repeats_the_answer_waits_or_gives_up_in_time() -> None:
    answered = settled(running(), REFUSED, 101.0)
    assert judge(answered, 101.0, 103.0) == Reply(REFUSED)
    verdict = judge(running(), 101.0, 103.0)
    assert isinstance(verdict, Wait) and 0 < verdict.delay <= 0.05
    assert judge(running(), 103.0, 103.0) == Busy()
    assert judge(running(lease_until=102.0), 102.0, 103.0) == TryAgain()
    assert judge(None, 101.0, 103.0) == TryAgain()
    # never waits past the deadline, nor past the lease
    assert judge(running(lease_until=101.01), 101.0, 103.0) == Wait(pytest.approx(0.002))
    assert judge(running(), 102.999, 103.0, polls=10) == Wait(pytest.approx(0.001))


def test_a_fenced_out_owner_repeats_the_newer_answer_or_asks_for_a_retry() -> None:
    newer = take(running(1), "order_paid:1", "b", 200.0, 60.0)
    assert after_fencing(newer) == Busy()
    assert after_fencing(settled(newer, OK, 201.0)) == Reply(OK)
    assert after_fencing(None) == Busy()


def test_pruning_keeps_what_is_held_and_what_is_young() -> None:
    assert prunable(settled(running(), OK, 101.0), cutoff=102.0)
    assert not prunable(settled(running(), OK, 101.0), cutoff=101.0)
    assert not prunable(running(lease_until=200.0), cutoff=150.0)
    assert prunable(running(lease_until=200.0), cutoff=201.0)
    assert prune_due(None, 0.0, 3600.0) and not prune_due(0.0, 3599.0, 3600.0)


def test_replay_reruns_failures_and_needs_force_for_what_was_decided() -> None:
    assert plan_replay(None, False, 0.0).run
    assert plan_replay(settled(running(), FAILED, 101.0), False, 102.0).run
    live = plan_replay(running(), True, 120.0)
    assert not live.run and "at work" in live.reason
    assert plan_replay(running(), False, 170.0).run  # died before answering
    handled = settled(running(3), OK, 101.0)
    plan = plan_replay(handled, False, 102.0)
    assert not plan.run and "--force" in plan.reason and "204" in plan.reason
    forced = plan_replay(handled, True, 102.0)
    assert forced.run and forced.reopen == 3
    assert reopened(handled, 3) == Claim(
        handled.key, 3, ClaimState.RELEASED, "a", 160.0, 100.0, 101.0, None
    )
    assert reopened(handled, 2) is None
    assert not plan_replay(settled(running(), REFUSED, 101.0), False, 102.0).run


@st.composite
def claim_rows(draw: st.DrawFn) -> Claim:
    state = draw(st.sampled_from(ClaimState))
    answer = draw(st.sampled_from([OK, REFUSED])) if state is ClaimState.ANSWERED else None
    lease_until, claimed_at = draw(st.floats(0, 100)), draw(st.floats(0, 100))
    return Claim("k", draw(st.integers(1, 5)), state, "o", lease_until, claimed_at, None, answer)


claims = claim_rows()


@given(claim=st.none() | claims, now=st.floats(0, 200), deadline=st.floats(0, 200))
def test_a_waiting_duplicate_never_waits_past_its_deadline(
    claim: Claim | None, now: float, deadline: float
) -> None:
    verdict = judge(claim, now, deadline)
    if isinstance(verdict, Wait):
        assert 0 <= verdict.delay <= max(deadline - now, 0)
        assert claim is not None and claim.state is ClaimState.RUNNING
    if isinstance(verdict, Reply):
        assert claim is not None and claim.answer == verdict.answer


@given(claim=st.none() | claims, now=st.floats(0, 200), attempt=st.integers(1, 6))
def test_taking_always_fences_every_earlier_attempt(
    claim: Claim | None, now: float, attempt: int
) -> None:
    if not may_take(claim, now):
        return
    after = take(claim, "k", "o", now, 10.0)
    if claim is not None:
        assert after.attempt == claim.attempt + 1
        assert not may_record(after, claim.attempt)
    assert may_record(after, after.attempt)


@pytest.mark.parametrize(
    ("url", "config"),
    [
        (None, MemoryConfig()),
        ("", MemoryConfig()),
        ("memory:", MemoryConfig()),
        ("journal.sqlite3", SqliteConfig("journal.sqlite3")),
        ("/var/lib/app/j.db", SqliteConfig("/var/lib/app/j.db")),
        ("sqlite:///relative.db", SqliteConfig("relative.db")),
        ("sqlite:////abs/j.db", SqliteConfig("/abs/j.db")),
        ("C:\\data\\j.db", SqliteConfig("C:\\data\\j.db")),
        ("postgresql://u:p@h/db", PostgresConfig("postgresql://u:p@h/db")),
        ("postgres://h/db", PostgresConfig("postgres://h/db")),
    ],
)
def test_store_urls(url: str | None, config: object) -> None:
    assert parse_store_url(url) == config


@pytest.mark.parametrize("url", ["mysql://h/db", "sqlite://", "sqlite:/x", "redis://x"])
def test_unknown_store_urls_are_refused_with_the_remedy(url: str) -> None:
    with pytest.raises(BadStoreUrl, match=r"sqlite:///|postgresql://|sqlite"):
        parse_store_url(url)


@pytest.mark.parametrize(
    "dsn", ["host=db.internal dbname=game password=s3cret", "dbname = game password=s3cret"]
)
def test_a_libpq_connection_string_is_refused_not_taken_for_a_file(dsn: str) -> None:
    """Taken for an SQLite path, each host got a journal of its own (grants twice
    across the fleet), and the file, named with the password, showed it."""
    with pytest.raises(BadStoreUrl, match="postgresql://") as refused:
        parse_store_url(dsn)
    assert "s3cret" not in str(refused.value)


def test_a_postgres_password_never_shows() -> None:
    shown = PostgresConfig("postgresql://app:s3cret@db.internal:5432/game").display()
    assert "s3cret" not in shown and shown == "postgresql://app:***@db.internal:5432/game"
    assert "s3cret" not in repr(PostgresConfig("postgresql://app:s3cret@h/db"))


@pytest.mark.parametrize(
    "conninfo",
    [
        "postgresql://app:p%40ss%20word@db/game",
        "postgresql://app@db/game?sslmode=require&password=p@ss word",
        "host=db user=app password='p@ss word'",
    ],
)
def test_a_password_is_scrubbed_from_what_libpq_quotes(conninfo: str) -> None:
    """libpq's parse errors quote the URL; whatever form the password takes, it goes."""
    config = PostgresConfig(conninfo)
    said = f'invalid URI: "{conninfo}"; unexpected spaces found in "p@ss word"'
    for text in (config.display(), config.scrub(said)):
        assert "p@ss" not in text and "p%40ss" not in text and "***" in text


def test_settings_are_checked() -> None:
    for bad in (dict(lease=0), dict(wait=-1), dict(retention=10, lease=60), dict(pool_size=0)):
        with pytest.raises(JournalConfigError):
            JournalSettings(**bad)  # type: ignore[arg-type]


def test_schema_versions() -> None:
    fresh = schema_plan(None)
    assert fresh is not None and list(fresh.steps) == list(range(1, SCHEMA_VERSION + 1))
    assert schema_plan(SCHEMA_VERSION) is None
    with pytest.raises(SchemaTooNew, match="upgrade orderfsm"):
        schema_plan(SCHEMA_VERSION + 1)
