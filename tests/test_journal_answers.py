"""The answer's side of the journal: once a handler has run, its answer is worth
waiting for.  A claim gives up after ``wait`` (nothing ran yet; Xsolla retries), but
an answer not recorded is a handler run again on the retry, so passing trouble is
waited out until the lease runs out; a refusal is not, and nothing hangs."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from support_journal import (
    DatabaseHold,
    accept_answers,
    create_grants,
    grants,
    mark,
    on_databases,
    refuse_answers,
    url_for,
)
from support_webhook import SECRET, order_paid, signed

from orderfsm.errors import JournalUnavailable
from orderfsm.journal import Answer, JournalSettings, NewDelivery, Reply
from transports.journal import Taken, open_journal
from transports.journal.sqlite import SqliteStore
from transports.webhook import Notification, OrderPaid, WebhookReceiver

BUSY = Answer(503)


class HeldGrant:
    """A handler that grants, says so (``holding``), and returns once the test has taken
    hold of the database (``held``): its answer then waits for the database."""

    def __init__(self) -> None:
        self.handled: list[int] = []
        self.holding = anyio.Event()
        self.held = anyio.Event()

    async def handler(self, notification: object) -> None:
        self.handled.append(1)
        self.holding.set()
        await self.held.wait()

    async def database_held(self, url: str, key: str) -> DatabaseHold:
        """Once the handler granted, the test holds the database; then the handler returns
        and its answer waits (on PostgreSQL, until it is seen waiting)."""
        await self.holding.wait()
        hold = DatabaseHold(url, key)
        self.held.set()
        await hold.blocking_someone()
        return hold


@pytest.mark.anyio
@on_databases
async def test_an_answer_held_up_past_the_wait_is_recorded_once_the_database_frees_it(
    backend: str, tmp_path: Path
) -> None:
    """Another program holds the database (SQLite's write lock, PostgreSQL's claim row)
    from the moment the handler runs until well past ``wait``: the answer is still
    recorded and given, and Xsolla's retry is answered from it, the handler not run
    again (before, the answer gave up after ``wait``: 500, then a second grant)."""
    url = url_for(backend, tmp_path)
    grant = HeldGrant()
    handled = grant.handled
    async with open_journal(url, JournalSettings(wait=0.3, lease=30.0)) as journal:
        receiver = WebhookReceiver(SECRET, grant.handler, store=journal)
        answers: list[int] = []

        async def deliver() -> None:
            payload = order_paid(1)
            answers.append((await receiver.handle(signed(payload), payload)).status)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(deliver)
            hold = await grant.database_held(url, "order_paid:1")
            await anyio.sleep(1.0)  # over three times the wait
            assert answers == []  # still waiting for the database, not answered 5xx
            hold.release()
        await deliver()  # Xsolla's retry
    assert answers == [204, 204] and len(handled) == 1


@pytest.mark.anyio
@on_databases
async def test_a_request_cancelled_after_its_handler_ran_still_records_the_answer(
    backend: str, tmp_path: Path
) -> None:
    """The handler granted; the request is cancelled while its answer waits for the
    database (the server stopping, a framework cancelling on a client gone): the
    answer is still recorded, so Xsolla's retry gets it and the grant is not run
    again (the claim stayed running, and the retry after its lease granted twice)."""
    url = url_for(backend, tmp_path)
    grant = HeldGrant()
    handled = grant.handled
    async with open_journal(url, JournalSettings(wait=0.3, lease=30.0)) as journal:
        receiver = WebhookReceiver(SECRET, grant.handler, store=journal)
        payload = order_paid(1)
        request = anyio.CancelScope()

        async def deliver() -> None:
            with request:
                await receiver.handle(signed(payload), payload)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(deliver)
            hold = await grant.database_held(url, "order_paid:1")
            request.cancel()  # the request is given up while its answer waits
            await anyio.sleep(0.3)
            hold.release()
        with anyio.fail_after(10):
            retry = await receiver.handle(signed(payload), payload)
    assert retry.status == 204 and len(handled) == 1


@pytest.mark.anyio
@on_databases
async def test_an_answer_the_database_refuses_is_answered_5xx_at_once(
    backend: str, tmp_path: Path
) -> None:
    """A refusal (here a trigger) would be refused again: it is not retried for the
    lease's 30 s, the delivery gets its 500 now, and the next order is not held up."""
    url = url_for(backend, tmp_path)
    async with open_journal(url, JournalSettings(wait=0.5, lease=30.0)) as journal:
        receiver = WebhookReceiver(SECRET, None, store=journal)
        refuse_answers(url, "order_paid:1")
        started = anyio.current_time()
        refused = await receiver.handle(signed(order_paid(1)), order_paid(1))
        elapsed = anyio.current_time() - started
        fine = await receiver.handle(signed(order_paid(2)), order_paid(2))
    assert (refused.status, fine.status) == (500, 204)
    assert elapsed < 10.0  # a retried refusal would take the whole lease


@pytest.mark.anyio
@on_databases
async def test_a_transactional_answer_the_database_refuses_is_500_and_the_retry_grants_once(
    backend: str, tmp_path: Path
) -> None:
    """The transactional handler granted, then the database refuses the answer written in
    the same transaction (a trigger): the grant is rolled back with it and the delivery
    gets a 500, never the 4xx that Xsolla does not retry (and refunds).  Nothing of the
    attempt committed, so Xsolla's retry runs the handler at once, and the order is
    granted once; the answer is then repeated."""
    url = url_for(backend, tmp_path)
    create_grants(url)
    insert = f"INSERT INTO grants (order_id) VALUES ({mark(url)})"
    ran: list[int] = []

    def grant(notification: Notification, connection: Any) -> None:
        assert isinstance(notification, OrderPaid)
        ran.append(notification.order_id)
        connection.execute(insert, (notification.order_id,))

    payload = order_paid(1)
    async with open_journal(url, JournalSettings(wait=0.5, lease=30.0)) as journal:
        receiver = WebhookReceiver(SECRET, transactional=grant, store=journal)
        refuse_answers(url, "order_paid:1")
        refused = await receiver.handle(signed(payload), payload)
        ran_when_refused, granted_when_refused = list(ran), grants(url)
        accept_answers(url)
        retries = [await receiver.handle(signed(payload), payload) for _ in range(2)]
    assert refused.status == 500 and (ran_when_refused, granted_when_refused) == ([1], [])
    assert [r.status for r in retries] == [204, 204] and ran == [1, 1] and grants(url) == [1]


@pytest.mark.anyio
async def test_a_duplicate_that_waited_out_its_wait_answers_within_xsollas_3_s(
    tmp_path: Path,
) -> None:
    """The key's owner is still at work, so a duplicate waits its ``wait`` (2 s) and
    answers 5xx; its own record then meets a write lock another program holds.  That
    record is bookkeeping: it gets what is left of the wait (at least half a second),
    not a fresh wait, so the answer comes before Xsolla's 3 s (before: about 4 s).
    SQLite only: on PostgreSQL the record is a row nobody else ever locks."""
    path = tmp_path / "journal.sqlite3"
    delivery = NewDelivery("order_paid", "order_paid:1", 1, order_paid(1), (), None, time.time())
    async with open_journal(path, JournalSettings(wait=2.0)) as journal:
        owner = await journal.begin(delivery, BUSY)
        assert isinstance(owner, Taken)  # its handler never finishes in this test
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            async with anyio.create_task_group() as tasks:
                answered: list[tuple[Answer, float]] = []

                async def duplicate() -> None:
                    started = anyio.current_time()
                    reply = await journal.begin(delivery, BUSY)
                    assert isinstance(reply, Reply)
                    answered.append((reply.answer, anyio.current_time() - started))

                tasks.start_soon(duplicate)
                with anyio.fail_after(10):
                    while True:
                        if len(await journal.deliveries()) == 2:  # its claim is written
                            break
                        await anyio.sleep(0.01)
                other.execute("BEGIN EXCLUSIVE")
        finally:
            other.execute("ROLLBACK")
            other.close()
    ((answer, elapsed),) = answered
    assert answer == BUSY and elapsed < 3.0


def test_a_write_batched_with_one_past_its_deadline_still_commits(tmp_path: Path) -> None:
    """SQLite commits a process's concurrent writes together.  Another program holds the
    write lock a little longer than one queued write may wait: that one gives up,
    and only that one; an answer queued beside it, with seconds left, commits (before,
    the batch began with its earliest deadline and every write in it failed)."""
    path = tmp_path / "journal.sqlite3"
    store = SqliteStore(path)
    store.open()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    results: dict[str, str] = {}

    def write(name: str, budget: float) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute("CREATE TABLE IF NOT EXISTS marks (name TEXT)")
            db.execute("INSERT INTO marks VALUES (?)", (name,))

        try:
            store.write(work, time.monotonic() + budget)
            results[name] = "committed"
        except JournalUnavailable:
            results[name] = "gave up"

    group = store._group  # its lock held here: a batch of this process in flight
    assert group is not None
    try:
        other.execute("BEGIN EXCLUSIVE")
        with group._lock:
            writers = [
                threading.Thread(target=write, args=("claim", 0.3)),
                threading.Thread(target=write, args=("answer", 10.0)),
            ]
            for writer in writers:
                writer.start()
            deadline = time.monotonic() + 10
            while len(group._queue) < 2 and time.monotonic() < deadline:
                time.sleep(0.005)
        time.sleep(0.6)  # the next batch, both writes, waits on the other program's lock
        other.execute("COMMIT")
        for writer in writers:
            writer.join(20)
        marks = {name for (name,) in other.execute("SELECT name FROM marks")}
    finally:
        other.close()
        store.close()
    assert results == {"claim": "gave up", "answer": "committed"}
    assert marks == {"answer"}


def test_a_write_in_a_hurry_gives_up_on_time_whoever_leads_its_batch(tmp_path: Path) -> None:
    """The thread that leads a batch waits for the lock on behalf of all of it.  A
    claim with 0.3 s to wait, queued beside an answer with 10 s, while another program
    holds the lock for 1.5 s: the claim gives up at its own deadline even when its
    thread is the leader (before, it stayed until the answer's commit: a duplicate or
    a claim answered 5xx late, past Xsolla's 3 s), and the answer still commits."""
    path = tmp_path / "journal.sqlite3"
    store = SqliteStore(path)
    store.open()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    group = store._group
    assert group is not None
    other.execute("CREATE TABLE marks (name TEXT)")
    returned: dict[str, tuple[str, float]] = {}

    def write(name: str, budget: float) -> None:
        started = time.monotonic()
        try:
            store.write(
                lambda db: db.execute("INSERT INTO marks VALUES (?)", (name,)), started + budget
            )
            returned[name] = ("committed", time.monotonic() - started)
        except JournalUnavailable:
            returned[name] = ("gave up", time.monotonic() - started)

    try:
        for first in ("claim", "answer", "claim", "answer"):
            returned.clear()
            budgets = {"claim": 0.3, "answer": 10.0}
            other.execute("BEGIN EXCLUSIVE")
            with group._lock:  # both queue up; one of them leads the batch of two
                writers = [
                    threading.Thread(target=write, args=(name, budgets[name]))
                    for name in (first, "answer" if first == "claim" else "claim")
                ]
                for queued, writer in enumerate(writers, 1):
                    writer.start()
                    until = time.monotonic() + 10
                    while len(group._queue) < queued and time.monotonic() < until:
                        time.sleep(0.002)
            time.sleep(1.5)
            other.execute("COMMIT")
            for writer in writers:
                writer.join(20)
            assert returned["answer"][0] == "committed"
            outcome, took = returned["claim"]
            assert outcome == "gave up" and took < 1.2, (first, returned)
    finally:
        other.close()
        store.close()


def test_closing_leaves_no_connection_to_the_file_open(tmp_path: Path) -> None:
    """A read still running when ``close()`` is called hands its connection back after
    the pool was emptied: it must be closed then, not kept (a file handle and a read
    mark that stops SQLite from checkpointing its log)."""
    path = tmp_path / "journal.sqlite3"
    store = SqliteStore(path)
    store.open()
    reading = threading.Event()

    def slow_read(db: sqlite3.Connection) -> int:
        reading.set()
        time.sleep(0.3)
        return int(db.execute("SELECT count(*) FROM orderfsm_claims").fetchone()[0])

    reader = threading.Thread(target=store.read, args=(slow_read, time.monotonic() + 5))
    reader.start()
    assert reading.wait(5)
    store.close()
    reader.join(5)
    assert open_files(path) == []


def open_files(path: Path) -> list[str]:
    """This process's open files that are the journal's database (not its log files)."""
    fds = Path("/proc/self/fd")
    found = [os.path.realpath(fds / fd) for fd in os.listdir(fds)]
    return [f for f in found if f == os.path.realpath(path)]


@pytest.mark.anyio
async def test_a_journal_opened_by_the_first_delivery_waits_only_that_deliverys_wait(
    tmp_path: Path,
) -> None:
    """A receiver given a URL opens its journal on the first delivery.  Another program
    holds the file's write lock then: that delivery gets its 500 within ``wait``, as any
    other would, not after the 30 s a start-up may take (several processes starting)."""
    path = tmp_path / "journal.sqlite3"
    async with open_journal(path):
        pass  # the file and its tables exist
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        receiver = WebhookReceiver(SECRET, None, store=str(path))
        started = anyio.current_time()
        answer = await receiver.handle(signed(order_paid(1)), order_paid(1))
        elapsed = anyio.current_time() - started
    finally:
        other.execute("ROLLBACK")
        other.close()
    async with receiver:
        again = await receiver.handle(signed(order_paid(1)), order_paid(1))
    assert answer.status == 500 and elapsed < 10.0
    assert again.status == 204


def test_a_synchronous_answer_waits_less_than_a_wsgi_workers_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A WSGI worker that blocks past its server's timeout (gunicorn: 30 s) is killed and
    answers nothing: the synchronous answer is retried for ``SYNC_ANSWER_PATIENCE``
    (20 s; half a second here), not the whole lease, then it is a counted 500."""
    import transports.journal.core as core

    monkeypatch.setattr(core, "SYNC_ANSWER_PATIENCE", 0.5)
    path = tmp_path / "journal.sqlite3"
    journal = open_journal(path, JournalSettings(wait=0.2, lease=30.0)).sync
    delivery = NewDelivery("order_paid", "order_paid:1", 1, order_paid(1), (), None, time.time())
    taken = journal.begin(delivery, BUSY)
    assert isinstance(taken, Taken)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    started = time.monotonic()
    try:
        with pytest.raises(JournalUnavailable):
            journal.settle(taken, Answer(204), None, BUSY)
    finally:
        other.execute("ROLLBACK")
        other.close()
        journal.close()
    assert time.monotonic() - started < 5.0
