"""The backends under the exactly-once path: leases, fencing, the schema, start-up errors,
outages and pruning, on SQLite and PostgreSQL (and memory where it applies).

The synchronous journal (what a WSGI view or a script uses) is driven here with a
clock of the test's own, so a lease runs out without waiting for it.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support_journal import (
    BACKENDS,
    backlog_left,
    connect,
    is_postgres,
    mark,
    old_backlog,
    on_databases,
    on_every_backend,
    track_orders,
    url_for,
)
from support_postgres import postgres_server
from support_webhook import SECRET, order_paid, signed

from orderfsm.core import Status
from orderfsm.errors import (
    JournalCorrupt,
    JournalError,
    JournalOpenFailed,
    JournalUnavailable,
    SchemaTooNew,
)
from orderfsm.journal import (
    DAY,
    SCHEMA_VERSION,
    Answer,
    Claim,
    ClaimState,
    JournalSettings,
    NewDelivery,
    Outcome,
    Reply,
    may_take,
    take,
)
from transports.journal import SyncJournal, Taken, open_journal, store_for
from transports.journal.orders import Note, record
from transports.journal.postgres_tuning import ANALYZED_TABLES, STATISTICS_TARGET
from transports.webhook import WebhookReceiver

OK = Answer(204)
BUSY = Answer(500, b"busy")


class Clock:
    """Real time passing, plus whatever the test adds to ``now`` to skip ahead."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.start = start
        self.began = time.monotonic()
        self.skipped = 0.0

    @property
    def now(self) -> float:
        return self.start + self.skipped + (time.monotonic() - self.began)

    @now.setter
    def now(self, value: float) -> None:
        self.skipped += value - self.now

    def __call__(self) -> float:
        return self.now


def sync_journal(url: str, clock: Clock, **settings: float) -> SyncJournal:
    config = JournalSettings(**{"lease": 10.0, "wait": 0.3, **settings})  # type: ignore[arg-type]
    journal = SyncJournal(store_for(url, config), config, clock=clock)
    journal.open()
    return journal


_ids = itertools.count(1)


def delivery(order_id: int, clock: Clock) -> NewDelivery:
    body = order_paid(order_id)
    return NewDelivery(
        "order_paid", f"order_paid:{order_id}", order_id, body, (), "test", clock.now
    )


@on_every_backend
def test_an_abandoned_claim_is_taken_over_after_its_lease_and_its_owner_is_fenced(
    backend: str, tmp_path: Path
) -> None:
    url = url_for(backend, tmp_path)
    clock = Clock()
    first = sync_journal(url, clock)
    second = first if backend == "memory" else sync_journal(url, clock)
    try:
        taken = first.begin(delivery(1, clock), BUSY)
        assert isinstance(taken, Taken) and taken.attempt == 1
        # The owner goes quiet (dies, or hangs).  Within its lease a duplicate waits, then 5xx.
        clock.now += 5
        assert second.begin(delivery(1, clock), BUSY) == Reply(BUSY)
        clock.now += 6  # the lease ran out: judged from the row, no sweeper
        again = second.begin(delivery(1, clock), BUSY)
        assert isinstance(again, Taken) and again.attempt == 2
        # The old owner comes back: its answer is refused; it repeats the newer one
        # once there is one, and asks for a retry before.
        assert first.settle(taken, Answer(202), None, BUSY) == BUSY
        assert second.settle(again, OK, None, BUSY) == OK
        assert first.settle(taken, Answer(202), None, BUSY) == OK
        assert second.begin(delivery(1, clock), BUSY) == Reply(OK)
        outcomes = [d.outcome for d in first.deliveries()]
        assert outcomes.count(Outcome.FENCED) == 1 and outcomes.count(Outcome.HANDLED) == 1
        assert outcomes.count(Outcome.BUSY) == 1
    finally:
        first.close()
        if second is not first:
            second.close()


@st.composite
def rows(draw: st.DrawFn) -> Claim:
    state = draw(st.sampled_from(ClaimState))
    answer = Answer(draw(st.sampled_from([204, 400]))) if state is ClaimState.ANSWERED else None
    lease_until = draw(st.floats(0, 100, allow_nan=False))
    return Claim("k", draw(st.integers(1, 9)), state, "o", lease_until, 0.0, None, answer)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_sql_takes_a_key_exactly_when_the_pure_decision_says(
    backend: str, tmp_path: Path
) -> None:
    url = url_for(backend, tmp_path)
    clock = Clock()
    journal = sync_journal(url, clock)
    db = connect(url)
    m = mark(url)
    insert = (
        "INSERT INTO orderfsm_claims (key, attempt, state, owner, lease_until, claimed_at, "
        f"answered_at, status, body, content_type) VALUES ({', '.join([m] * 10)})"
    )

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(prior=st.none() | rows(), now=st.floats(0, 100, allow_nan=False))
    def agree(prior: Claim | None, now: float) -> None:
        key = f"order_paid:{next(_ids)}"
        if prior is not None:
            answer = prior.answer
            db.execute(
                insert,
                (key, prior.attempt, prior.state.value, "o", prior.lease_until, 0.0, None,
                 None if answer is None else answer.status, None if answer is None else b"",
                 None),
            )  # fmt: skip
        new = NewDelivery("order_paid", key, 1, b"{}", (), None, now)
        claimed = journal.store.claim(new, "me", now, 5.0, 10**9)
        assert (claimed.attempt is not None) == may_take(prior, now)
        if claimed.attempt is not None:
            assert claimed.attempt == take(prior, key, "me", now, 5.0).attempt

    try:
        agree()
    finally:
        db.close()
        journal.close()


@on_databases
def test_a_newer_schema_refuses_to_start(backend: str, tmp_path: Path) -> None:
    url = url_for(backend, tmp_path)
    sync_journal(url, Clock()).close()
    db = connect(url)
    db.execute(f"UPDATE orderfsm_schema SET version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(SchemaTooNew, match="upgrade orderfsm"):
        sync_journal(url, Clock())


@on_databases
def test_concurrent_first_starts_create_the_schema_once(backend: str, tmp_path: Path) -> None:
    url = url_for(backend, tmp_path)
    errors: list[BaseException] = []
    journals: list[SyncJournal] = []
    start = threading.Barrier(6)

    def open_one() -> None:
        try:
            start.wait()
            journals.append(sync_journal(url, Clock()))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for journal in journals:
        journal.close()
    assert errors == [] and len(journals) == 6
    db = connect(url)
    assert db.execute("SELECT version FROM orderfsm_schema").fetchall() == [(SCHEMA_VERSION,)]
    db.close()


def _statistics_targets(db: Any) -> dict[tuple[str, str], int]:
    """Every column of the journal's growing tables, and its statistics target."""
    rows = db.execute(
        "SELECT c.relname, a.attname, coalesce(a.attstattarget, -1) FROM pg_attribute a"
        " JOIN pg_class c ON c.oid = a.attrelid"
        " WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'"
        " AND c.relname LIKE 'orderfsm%' AND c.relname <> 'orderfsm_schema'"
        " AND a.attnum > 0 AND NOT a.attisdropped"
    ).fetchall()
    return {(table, column): target for table, column, target in rows}


def test_postgres_analyzes_a_small_sample_of_every_journal_column() -> None:
    """Autovacuum's ANALYZE of a fast-growing journal at PostgreSQL's default sample
    took a 500/s p99 from 6 to 25 ms: every column of every table that grows keeps the
    small target, set at start on a database made before it (or by hand) too, without
    a schema version (a release before it must still start on the journal)."""
    url = postgres_server().url()
    sync_journal(url, Clock()).close()
    db = connect(url)
    try:
        made = _statistics_targets(db)
        assert {table for table, _ in made} == set(ANALYZED_TABLES)
        assert set(made.values()) == {STATISTICS_TARGET}, made
        for table, column in made:  # as a database made before the tuning has them
            db.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STATISTICS -1")
        db.execute("ALTER TABLE orderfsm_orders ADD COLUMN later_version INTEGER")
        sync_journal(url, Clock()).close()
        assert set(_statistics_targets(db).values()) == {STATISTICS_TARGET}
        assert db.execute("SELECT version FROM orderfsm_schema").fetchall() == [(SCHEMA_VERSION,)]
    finally:
        db.close()


def test_a_start_does_not_wait_for_a_table_a_vacuum_holds_to_tune_it() -> None:
    """An anti-wraparound vacuum holds its table for as long as it runs and does not
    yield: the start, holding the lock every other instance's start waits for, gives
    the tuning of that table up after 3 s, and tunes the rest."""
    url = postgres_server().url()
    sync_journal(url, Clock()).close()
    db, vacuum = connect(url), connect(url)
    try:
        for table, column in _statistics_targets(db):
            db.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STATISTICS -1")
        vacuum.execute("BEGIN")
        vacuum.execute("LOCK TABLE orderfsm_deliveries IN SHARE UPDATE EXCLUSIVE MODE")
        # A start that waited for the lock would wait for good: this lets it go, late.
        letting_go = threading.Timer(15, vacuum.execute, ("ROLLBACK",))
        letting_go.start()
        try:
            started = time.monotonic()
            sync_journal(url, Clock()).close()
            assert time.monotonic() - started < 10
        finally:
            letting_go.cancel()
            letting_go.join()
        targets = _statistics_targets(db)
        held = {target for (table, _), target in targets.items() if table == "orderfsm_deliveries"}
        rest = {target for (table, _), target in targets.items() if table != "orderfsm_deliveries"}
        assert held == {-1} and rest == {STATISTICS_TARGET}
        vacuum.execute("ROLLBACK")
        sync_journal(url, Clock()).close()  # the next start, with the table free
        assert set(_statistics_targets(db).values()) == {STATISTICS_TARGET}
    finally:
        vacuum.close()
        db.close()


def test_sqlite_start_up_problems_are_typed_and_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(JournalOpenFailed, match="does not exist"):
        sync_journal(str(tmp_path / "missing" / "j.db"), Clock())
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database, but a text file of some length" * 100)
    with pytest.raises(JournalCorrupt, match="not a database"):
        sync_journal(str(corrupt), Clock())


def test_postgres_start_up_problems_are_typed_and_say_what_is_wrong() -> None:
    server = postgres_server()
    with pytest.raises(JournalOpenFailed, match="cannot connect"):
        sync_journal(f"postgresql://postgres@127.0.0.1:{_closed_port()}/postgres", Clock())
    stranger = f"postgresql://stranger:wrong@127.0.0.1:{server.port}/postgres"
    with pytest.raises(JournalOpenFailed, match="stranger") as caught:
        sync_journal(stranger, Clock())
    assert "wrong" not in str(caught.value)  # the password never shows


def _closed_port() -> int:
    from support_postgres import free_port

    return free_port()


def test_an_old_sqlite_store_file_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "seen.sqlite"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE webhook_answers (key TEXT PRIMARY KEY, status INTEGER NOT NULL, "
        "body BLOB NOT NULL, content_type TEXT, stored_at REAL NOT NULL)"
    )
    old.execute("INSERT INTO webhook_answers VALUES ('order_paid:5', 204, x'', NULL, 1.0)")
    old.commit()
    old.close()
    clock = Clock()
    journal = sync_journal(str(path), clock)
    try:
        assert journal.begin(delivery(5, clock), BUSY) == Reply(OK)
    finally:
        journal.close()


@on_every_backend
def test_pruning_forgets_what_is_older_than_the_retention(backend: str, tmp_path: Path) -> None:
    url = url_for(backend, tmp_path)
    clock = Clock()
    journal = sync_journal(url, clock, retention=100.0, lease=10.0)
    try:
        old = journal.begin(delivery(1, clock), BUSY)
        assert isinstance(old, Taken)
        journal.settle(old, OK, None, BUSY)
        held = journal.begin(delivery(2, clock), BUSY)  # never settled: held until its lease
        clock.now += 50
        young = journal.begin(delivery(3, clock), BUSY)
        assert isinstance(young, Taken) and isinstance(held, Taken)
        journal.settle(young, OK, None, BUSY)
        clock.now += 60
        assert journal.prune() == (2, 2, 0)  # 1 (answered) and 2 (lease long gone), with deliveries
        assert sorted(journal.claims(["order_paid:1", "order_paid:2", "order_paid:3"])) == [
            "order_paid:3"
        ]
        assert [d.order_id for d in journal.deliveries()] == [3]
    finally:
        journal.close()


def test_sqlite_prunes_in_small_transactions_and_forgets_everything_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write lock is the whole file's: pruning deletes a chunk per transaction
    (two rows here) and goes on until nothing old is left."""
    import transports.journal.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "PRUNE_CHUNK", 2)
    clock = Clock()
    journal = sync_journal(str(tmp_path / "journal.sqlite3"), clock, retention=100.0)
    try:
        for order_id in range(1, 6):
            taken = journal.begin(delivery(order_id, clock), BUSY)
            assert isinstance(taken, Taken)
            journal.settle(taken, OK, None, BUSY)
        clock.now += 50
        young = journal.begin(delivery(9, clock), BUSY)
        assert isinstance(young, Taken)
        journal.settle(young, OK, None, BUSY)
        clock.now += 60
        assert journal.prune() == (5, 5, 0)
        assert [d.order_id for d in journal.deliveries()] == [9]
        assert sorted(journal.claims([f"order_paid:{i}" for i in (1, 2, 3, 4, 5, 9)])) == [
            "order_paid:9"
        ]
    finally:
        journal.close()


def test_a_prune_pauses_between_chunks_the_database_refuses() -> None:
    """A database that refuses at once (stopped, no connection free) was asked again
    at once for the rest of the round: thousands of tries a second from the pruner's
    thread.  Now the tries back off, and the round still ends by its deadline with
    the refusal, and goes on once a chunk succeeds."""
    from orderfsm.errors import JournalUnavailable
    from transports.journal.sql_shared import prune_in_chunks

    tries: list[float] = []

    def refused(until: float) -> tuple[int, int]:
        tries.append(until)
        raise JournalUnavailable("connection refused")

    started = time.monotonic()
    with pytest.raises(JournalUnavailable):
        prune_in_chunks(refused, started + 0.5, size=10)
    assert 0.5 <= time.monotonic() - started < 1.0
    assert 3 <= len(tries) <= 6  # 0.05, 0.1, 0.2 s pauses, then the deadline

    answers: list[tuple[int, int]] = [(10, 10), (3, 0)]

    def back(until: float) -> tuple[int, int]:
        if len(tries) < 3:
            return refused(until)
        return answers.pop(0)

    tries.clear()
    assert prune_in_chunks(back, time.monotonic() + 5, size=10) == (13, 10)


@pytest.mark.anyio
async def test_postgres_prunes_more_than_a_statement_may_delete_while_deliveries_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An hour of a busy fleet's deliveries is more than one DELETE deletes within the
    statement timeout (``wait`` + 1 s): it was cancelled, every hour again, and the
    tables grew until the disk was full.  Here each old delivery's delete costs 2.5 ms
    (a trigger), so 800 take 2 s in one statement, past the 1.5 s timeout of a 0.5 s
    wait, and 0.25 s in a chunk of 100.  The background prune that the deliveries
    start deletes every old row while they go on being answered, each within its wait."""
    import transports.journal.postgres as postgres_store

    monkeypatch.setattr(postgres_store, "PRUNE_CHUNK", 100)
    url = postgres_server().url()
    settings = JournalSettings(wait=0.5)
    old = time.time() - settings.retention - DAY
    db = connect(url)
    async with open_journal(url, settings) as journal:
        old_backlog(db, 800, old)
        receiver = WebhookReceiver(SECRET, store=journal)
        answers: list[tuple[int, float]] = []
        with anyio.fail_after(30):
            for order_id in itertools.count(1000):  # the first answer starts the prune
                started = anyio.current_time()
                answer = await receiver.handle(signed(order_paid(order_id)), order_paid(order_id))
                answers.append((answer.status, anyio.current_time() - started))
                if backlog_left(db, old) == 0:
                    break
                await anyio.sleep(0.05)
    db.close()
    assert {status for status, _ in answers} == {204}
    assert max(took for _, took in answers) < settings.wait, answers
    assert len(answers) > 10  # answered all along the prune's 2 s and more


def test_a_failing_changes_pass_holds_up_no_claim_or_delivery(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The fleet tracker's changes are pruned in the same rounds as the claims and
    deliveries.  A pass over them that fails (here the database refuses every delete of
    a change: a trigger) failed the whole prune, logged as an exception, after its first
    round: a backlog of claims and deliveries went one round an hour.  Now that pass is
    given up for this prune with a warning, and the rounds go on until every old claim
    and delivery is gone (800, a chunk of 100 deliveries taking 0.25 s, in rounds of
    0.2 s); the change stays for a later prune."""
    import transports.journal.postgres as postgres_store
    from transports.journal import pruning

    monkeypatch.setattr(postgres_store, "PRUNE_CHUNK", 100)
    monkeypatch.setattr(pruning, "PRUNE_ROUND", 0.2)
    url = postgres_server().url()
    clock = Clock(time.time())
    journal = sync_journal(url, clock, wait=1.0)
    old = clock.now - journal.settings.retention - DAY
    db = connect(url)
    try:
        notes = [Note(1, status, "webhook", old) for status in (Status.NEW, Status.PAID)]
        work = functools.partial(record, dialect="postgresql", notes=notes, now=old)
        journal.store.write(work, time.monotonic() + 5)  # type: ignore[attr-defined]
        db.execute(
            "CREATE FUNCTION refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " RAISE EXCEPTION 'changes are kept'; END $$"
        )
        db.execute(
            "CREATE TRIGGER refuse_delete BEFORE DELETE ON orderfsm_changes"
            " FOR EACH ROW EXECUTE FUNCTION refuse_delete()"
        )
        old_backlog(db, 800, old)
        with caplog.at_level(logging.WARNING, logger="orderfsm.journal"):
            pruned = journal.prune()
        left = backlog_left(db, old)
        changes = db.execute("SELECT count(*) FROM orderfsm_changes").fetchone()[0]
    finally:
        db.close()
        journal.close()
    assert pruned == (800, 800, 0) and left == 0
    assert changes == 2  # order 1's first change, prunable, stays for a later prune
    assert [(r.event, r.exc_info) for r in caplog.records] == [  # type: ignore[attr-defined]
        ("journal.changes_prune_failed", None)
    ]
    assert "changes are kept" in caplog.records[0].getMessage()


# --- outages: 5xx within the wait, no hang, recovery by itself --------------------------


@pytest.mark.anyio
async def test_a_sqlite_file_locked_by_another_program_answers_5xx_then_recovers(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.sqlite3"
    handled: list[int] = []

    async def handler(notification: object) -> None:
        handled.append(1)

    settings_ = JournalSettings(wait=0.3)
    async with open_journal(path, settings_) as journal:
        receiver = WebhookReceiver(SECRET, handler, store=journal)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # another program holds the write lock
        start = anyio.current_time()
        locked = [await receiver.handle(signed(order_paid(i)), order_paid(i)) for i in (1, 2)]
        elapsed = anyio.current_time() - start
        other.execute("ROLLBACK")
        other.close()
        after = [await receiver.handle(signed(order_paid(i)), order_paid(i)) for i in (1, 2)]
    assert [a.status for a in locked] == [500, 500] and elapsed < 2.0
    assert [a.status for a in after] == [204, 204] and len(handled) == 2


@pytest.mark.anyio
async def test_postgres_stopped_answers_5xx_and_the_journal_recovers_by_itself(
    tmp_path: Path,
) -> None:
    server = postgres_server()
    url = server.url()
    handled: list[int] = []

    async def handler(notification: object) -> None:
        handled.append(1)

    async with open_journal(url, JournalSettings(wait=0.5)) as journal:
        receiver = WebhookReceiver(SECRET, handler, store=journal)
        assert (await receiver.handle(signed(order_paid(1)), order_paid(1))).status == 204
        await anyio.to_thread.run_sync(server.stop)
        try:
            start = anyio.current_time()
            down = [await receiver.handle(signed(order_paid(i)), order_paid(i)) for i in (2, 3)]
            elapsed = anyio.current_time() - start
        finally:
            await anyio.to_thread.run_sync(server.start)
        assert [a.status for a in down] == [500, 500] and elapsed < 4.0
        with anyio.fail_after(30):  # as Xsolla would: retry until answered 2xx
            for _ in itertools.count():
                if (await receiver.handle(signed(order_paid(2)), order_paid(2))).status == 204:
                    break
                await anyio.sleep(0.1)
        assert (await receiver.handle(signed(order_paid(3)), order_paid(3))).status == 204
    assert len(handled) == 3


@pytest.mark.anyio
async def test_a_receiver_whose_database_is_down_at_start_answers_5xx_then_opens(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "later"
    receiver = WebhookReceiver(SECRET, store=missing / "journal.sqlite3")
    try:
        assert (await receiver.handle(signed(order_paid(1)), order_paid(1))).status == 500
        missing.mkdir()
        assert (await receiver.handle(signed(order_paid(1)), order_paid(1))).status == 204
    finally:
        await receiver.aclose()


def test_the_store_errors_are_journal_errors() -> None:
    assert issubclass(JournalUnavailable, Exception)
    assert is_postgres("postgresql://x") and not is_postgres("x.db")


@on_databases
def test_an_orders_status_commits_with_the_claim_or_not_at_all(
    backend: str, tmp_path: Path
) -> None:
    """A webhook's order status is written in its claim's transaction (the orders tracked
    by the fleet): a failure of that write (here a database trigger refusing order
    2's change) keeps neither."""
    url = url_for(backend, tmp_path)
    clock = Clock()
    journal = sync_journal(url, clock)
    db = connect(url)
    try:
        journal.open()
        track_orders(url, [1, 2], journal.store)
        if backend == "sqlite":
            db.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON orderfsm_changes WHEN NEW.order_id = 2"
                " BEGIN SELECT RAISE(ABORT, 'order 2 refused'); END"
            )
        else:
            db.execute(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                " IF NEW.order_id = 2 THEN RAISE EXCEPTION 'order 2 refused'; END IF;"
                " RETURN NEW; END $$"
            )
            db.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON orderfsm_changes"
                " FOR EACH ROW EXECUTE FUNCTION refuse()"
            )
        taken = journal.begin(delivery(1, clock), BUSY, [Note(1, Status.PAID, "webhook", 1.0)])
        assert isinstance(taken, Taken)
        with pytest.raises(JournalError):
            journal.begin(delivery(2, clock), BUSY, [Note(2, Status.PAID, "webhook", 1.0)])
        rows = db.execute("SELECT order_id, status FROM orderfsm_orders ORDER BY 1").fetchall()
        assert [tuple(row) for row in rows] == [(1, "paid"), (2, None)]
        assert sorted(journal.claims(["order_paid:1", "order_paid:2"])) == ["order_paid:1"]
    finally:
        journal.close()
        db.close()


def test_a_postgres_transaction_whose_statement_failed_does_not_pass_for_committed() -> None:
    """The server answers COMMIT in a failed transaction with ROLLBACK, not an error:
    a caller that swallowed the statement's error must not take its work for kept."""
    import psycopg

    from transports.journal.postgres_session import transaction

    server = postgres_server()
    db = psycopg.connect(server.url(), autocommit=True)
    try:
        db.execute("CREATE TEMPORARY TABLE kept (n integer PRIMARY KEY)")
        with (
            pytest.raises(psycopg.errors.InFailedSqlTransaction),
            transaction(db, "BEGIN"),
        ):
            db.execute("INSERT INTO kept VALUES (1)")
            with contextlib.suppress(psycopg.errors.UniqueViolation):
                db.execute("INSERT INTO kept VALUES (1)")
        assert db.execute("SELECT count(*) FROM kept").fetchone() == (0,)
        with transaction(db, "BEGIN"):
            db.execute("INSERT INTO kept VALUES (2)")
        assert db.execute("SELECT n FROM kept").fetchall() == [(2,)]
    finally:
        db.close()
