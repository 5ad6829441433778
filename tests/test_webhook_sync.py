"""The synchronous receiver: the async receiver's rules from plain threads, no event loop.

Several ``SyncWebhookReceiver`` objects on one URL are several instances (their
own connections); threads deliver at once, as a threaded WSGI server would.
Every test runs in memory (where it applies), on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from support_fork import waited
from support_journal import (
    accept_answers,
    connect,
    create_grants,
    grants,
    mark,
    on_databases,
    on_every_backend,
    refuse_answers,
    track_orders,
    url_for,
)
from support_webhook import SECRET, order_paid, signed

from orderfsm.journal import JournalSettings, Outcome
from transports.journal import open_journal
from transports.webhook import InvalidUser, Notification, OrderPaid
from transports.webhook.sync import SyncWebhookReceiver

FAST = JournalSettings(lease=5.0, wait=1.0)


@contextmanager
def receivers(url: str, count: int = 3, **kwargs: Any) -> Iterator[list[SyncWebhookReceiver]]:
    """``count`` instances on ``url`` (sharing one journal when it is in memory)."""
    with ExitStack() as stack:
        if url == "memory:":
            journal = open_journal(url, FAST).sync
            stack.callback(journal.close)
            made = [SyncWebhookReceiver(SECRET, store=journal, **kwargs) for _ in range(count)]
        else:
            made = [
                SyncWebhookReceiver(SECRET, store=url, settings=FAST, **kwargs)
                for _ in range(count)
            ]
        for receiver in made:
            stack.enter_context(receiver)
        yield made


def deliver_all(made: list[SyncWebhookReceiver], bodies: list[bytes], copies: int) -> list[int]:
    """Every body ``copies`` times, all at once, round robin over the instances."""
    jobs = [(made[i % len(made)], body) for body in bodies for i in range(copies)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = pool.map(lambda job: job[0].handle(signed(job[1]), job[1], "185.30.20.1"), jobs)
        return [answer.status for answer in answers]


class Handler:
    """A plain function handler that records what it was handed, from any thread."""

    def __init__(self, fail_first: int = 0) -> None:
        self.lock = threading.Lock()
        self.handled: list[int] = []
        self.fail_first = fail_first
        self.loops: list[bool] = []

    def __call__(self, notification: Notification) -> None:
        try:
            asyncio.get_running_loop()
            self.loops.append(True)
        except RuntimeError:
            self.loops.append(False)
        with self.lock:
            if self.fail_first:
                self.fail_first -= 1
                raise RuntimeError("the game's database hiccuped")
            assert isinstance(notification, OrderPaid)
            self.handled.append(notification.order_id)


@on_every_backend
def test_each_notification_runs_the_plain_handler_once_from_threads_without_a_loop(
    backend: str, tmp_path: Path
) -> None:
    handler = Handler()
    with receivers(url_for(backend, tmp_path), handler=handler) as made:
        answers = deliver_all(made, [order_paid(n) for n in range(1, 11)], copies=4)
        records = made[0].journal.deliveries()
    assert answers == [204] * 40
    assert sorted(handler.handled) == list(range(1, 11))
    assert not any(handler.loops)  # no event loop anywhere on the handler's path
    outcomes = [r.outcome for r in records]
    assert outcomes.count(Outcome.HANDLED) == 10
    assert len(records) == 40


@on_databases
def test_the_transactional_handler_grants_each_order_once(backend: str, tmp_path: Path) -> None:
    url = url_for(backend, tmp_path)
    create_grants(url)
    m = mark(url)

    def grant(notification: Notification, connection: Any) -> None:
        assert isinstance(notification, OrderPaid)
        connection.execute(
            f"INSERT INTO grants (order_id, sku) VALUES ({m}, {m})",
            (notification.order_id, notification.items[0].sku),
        )

    with receivers(url, transactional=grant) as made:
        answers = deliver_all(made, [order_paid(n) for n in range(1, 9)], copies=3)
    assert answers == [204] * 24
    assert sorted(grants(url)) == list(range(1, 9))


@on_every_backend
def test_a_failure_answers_500_and_the_retry_runs_it_a_refusal_is_repeated(
    backend: str, tmp_path: Path
) -> None:
    handler = Handler(fail_first=1)

    def refuse_odd(notification: Notification) -> None:
        assert isinstance(notification, OrderPaid)
        if notification.order_id % 2:
            raise InvalidUser("no such player")
        handler(notification)

    with receivers(url_for(backend, tmp_path), 1, handler=refuse_odd) as (receiver,):
        body = order_paid(2)
        first = receiver.handle(signed(body), body)
        second = receiver.handle(signed(body), body)
        refused = [receiver.handle(signed(order_paid(3)), order_paid(3)) for _ in range(2)]
    assert (first.status, second.status) == (500, 204)
    assert handler.handled == [2]
    assert [a.status for a in refused] == [400, 400]
    assert refused[0] == refused[1] and b"INVALID_USER" in refused[0].body


def test_bad_signatures_and_bodies_are_refused_before_the_journal(tmp_path: Path) -> None:
    handler = Handler()
    store = str(tmp_path / "journal.sqlite3")
    with SyncWebhookReceiver(SECRET, handler, store=store, max_body_size=100_000) as receiver:
        body = order_paid(5)
        forged = receiver.handle({"Authorization": "Signature " + "0" * 40}, body)
        junk = receiver.handle(signed(b"[1, 2]"), b"[1, 2]")
        large = receiver.handle(signed(b"x" * 100_001), b"x" * 100_001)
        kept = receiver.journal.deliveries()
    assert (forged.status, junk.status, large.status) == (400, 400, 413)
    assert handler.handled == [] and kept == []


def test_one_handler_at_most_and_the_transactional_one_needs_a_database() -> None:
    def plain(notification: Notification) -> None: ...

    def transactional(notification: Notification, connection: Any) -> None: ...

    with pytest.raises(ValueError, match="either"):
        SyncWebhookReceiver(SECRET, plain, transactional=transactional, store="x.sqlite3")
    with pytest.raises(ValueError, match="needs a database"):
        SyncWebhookReceiver(SECRET, transactional=transactional)


def test_the_journal_down_answers_500_never_4xx(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "journal.sqlite3"
    handler: Callable[[Notification], None] = Handler()
    receiver = SyncWebhookReceiver(SECRET, handler, store=str(missing))
    body = order_paid(9)
    assert receiver.handle(signed(body), body).status == 500
    receiver.close()


@on_databases
def test_an_answer_the_database_refuses_after_the_handler_ran_is_500_never_4xx(
    backend: str, tmp_path: Path
) -> None:
    """The handler ran, then the database refuses its answer (a trigger): 500, never the
    4xx that Xsolla does not retry (and refunds), as the async receiver answers.  The
    journal still knows the handler may have run: Xsolla's retry within the claim's
    lease is a 500 that does not run it again; once the lease ran out the retry runs it
    (at least once, as the README says) and its answer is recorded and repeated."""
    url = url_for(backend, tmp_path)
    handler = Handler()
    key, body = "order_paid:1", order_paid(1)
    settings = JournalSettings(wait=0.3, lease=3.0)
    with SyncWebhookReceiver(SECRET, handler, store=url, settings=settings) as receiver:
        refuse_answers(url, key)
        refused = receiver.handle(signed(body), body)
        accept_answers(url)
        within_lease = receiver.handle(signed(body), body)
        handled_within_lease = list(handler.handled)
        lease_until = receiver.journal.claims([key])[key].lease_until
        time.sleep(max(0.0, lease_until + 0.1 - time.time()))
        after_lease = [receiver.handle(signed(body), body) for _ in range(2)]
        failed = receiver.stats().deliveries["journal_failed"]
    assert (refused.status, within_lease.status, failed) == (500, 500, 1)
    assert handled_within_lease == [1]
    assert [a.status for a in after_lease] == [204, 204] and handler.handled == [1, 1]


@on_databases
@pytest.mark.parametrize("form", ["plain", "transactional"])
def test_the_order_status_is_recorded_once_in_the_claims_transaction(
    backend: str, form: str, tmp_path: Path
) -> None:
    """As the async receiver does: a fleet's trackers sharing the journal learn of it.
    Order 7 is tracked before (its change written with the claim), 8 after (its first
    track writes it from the delivery): once each, whatever the copies."""
    url = url_for(backend, tmp_path)

    def nothing(notification: Notification, connection: Any = None) -> None: ...

    kind = {"handler": nothing} if form == "plain" else {"transactional": nothing}
    with receivers(url, **kind) as made:
        store = made[0].journal.store
        track_orders(url, [7], store)
        assert deliver_all(made, [order_paid(n) for n in (7, 8)], copies=3) == [204] * 6
        assert changes_in(url) == [(7, "paid")]
        track_orders(url, [8], store)
    assert changes_in(url) == [(7, "paid"), (8, "paid")]


def changes_in(url: str) -> list[tuple[int, str]]:
    db = connect(url)
    try:
        rows = db.execute("SELECT order_id, status FROM orderfsm_changes ORDER BY order_id")
        return [(int(order_id), str(status)) for order_id, status in rows.fetchall()]
    finally:
        db.close()


def test_a_busy_duplicate_is_counted_as_a_duplicate_as_the_async_receiver_does(
    tmp_path: Path,
) -> None:
    """The first delivery's handler is still at work when the duplicate's wait runs out:
    its 500 is a duplicate in ``stats()`` (what metrics and alerts read), not a journal
    failure, on this receiver as on the async one."""
    started, release = threading.Event(), threading.Event()

    def slow(notification: Notification) -> None:
        started.set()
        release.wait(10)

    receiver = SyncWebhookReceiver(
        SECRET,
        slow,
        store=str(tmp_path / "journal.sqlite3"),
        settings=JournalSettings(wait=0.3),
    )
    body = order_paid(31)
    first = threading.Thread(target=receiver.handle, args=(signed(body), body))
    first.start()
    try:
        assert started.wait(10)
        duplicate = receiver.handle(signed(body), body)
    finally:
        release.set()
        first.join(10)
    deliveries = receiver.stats().deliveries
    assert duplicate.status == 500
    assert (deliveries["duplicate"], deliveries["journal_failed"]) == (1, 0)


@on_databases
def test_a_transactional_handler_that_swallows_a_database_error_is_never_2xx_for_lost_writes(
    backend: str, tmp_path: Path
) -> None:
    """The handler catches its database's error (a unique key: the player owns the skin
    already) and returns.  What each database does then decides the answer, and a 2xx
    comes only with the handler's writes committed: SQLite undid the one statement and
    the grant stays (204); PostgreSQL aborted the transaction, so the journal's next
    statement fails and nothing is kept (500, retried).  Django's ORM is the one that
    rolled back quietly (``test_frameworks_wsgi``)."""
    url = url_for(backend, tmp_path)
    create_grants(url)
    m = mark(url)
    db = connect(url)
    try:
        db.execute("CREATE TABLE owned (player TEXT, sku TEXT, UNIQUE (player, sku))")
        db.execute("INSERT INTO owned VALUES ('user-1', 'skin')")
    finally:
        db.close()

    def grant(notification: Notification, connection: Any) -> None:
        assert isinstance(notification, OrderPaid)
        connection.execute(f"INSERT INTO grants VALUES ({m}, 'gems')", (notification.order_id,))
        # sqlite3.IntegrityError, psycopg.errors.UniqueViolation: "owned already, fine"
        with contextlib.suppress(Exception):
            connection.execute("INSERT INTO owned VALUES ('user-1', 'skin')")

    with receivers(url, 1, transactional=grant) as (receiver,):
        body = order_paid(41)
        answers = [receiver.handle(signed(body), body).status for _ in range(2)]
    expected = ([204, 204], [41]) if backend == "sqlite" else ([500, 500], [])
    assert (answers, grants(url)) == expected


@pytest.mark.parametrize("form", ["handler", "transactional"])
@pytest.mark.parametrize("made", ["generator", "coroutine"])
def test_a_handler_that_hands_back_a_generator_or_a_coroutine_answers_500_not_204(
    form: str, made: str, tmp_path: Path
) -> None:
    """A lambda passes the checks made when the receiver is built, and what it hands back
    (a generator, or a coroutine this receiver never awaits) ran none of the grant:
    500, retried, never a stored 204."""
    granted: list[int] = []

    def grant(notification: Notification, connection: Any = None) -> Iterator[None]:
        granted.append(1)
        yield

    async def async_grant(notification: Notification, connection: Any = None) -> None:
        granted.append(2)

    wrapped: Any = grant if made == "generator" else async_grant
    kind = (
        {"handler": lambda n: wrapped(n)}
        if form == "handler"
        else {"transactional": lambda n, c: wrapped(n, c)}
    )
    with receivers(str(tmp_path / "journal.sqlite3"), 1, **kind) as (receiver,):
        body = order_paid(42)
        answers = [receiver.handle(signed(body), body).status for _ in range(2)]
    assert answers == [500, 500] and granted == []


@on_databases
def test_a_forked_worker_neither_closes_nor_shares_the_parents_journal(
    backend: str, tmp_path: Path
) -> None:
    """A preloaded app (gunicorn ``--preload``) opens its receiver in the master; a worker
    that only exits (``atexit`` closing the receiver) closed the master's pool, its
    PostgreSQL sessions ended on the sockets they share; and a receiver given a
    journal object, which it cannot make again, shared the master's connections
    with every worker (replies crossed, grants twice).  Now the first is a no-op and
    the second is refused (5xx), while the master goes on."""
    import os

    url = url_for(backend, tmp_path)
    handled: list[int] = []

    def handler(notification: Notification) -> None:
        assert isinstance(notification, OrderPaid)
        handled.append(notification.order_id)

    body = order_paid(1)
    theirs = open_journal(url).sync
    theirs.open()
    with SyncWebhookReceiver(SECRET, handler, store=url) as mine, contextlib.closing(theirs):
        given = SyncWebhookReceiver(SECRET, handler, store=theirs)
        assert mine.handle(signed(body), body).status == 204
        pid = os.fork()
        if pid == 0:  # the worker: one delivery through the given journal, then exit
            code = 0
            try:
                code = given.handle(signed(order_paid(2)), order_paid(2)).status // 100
                mine.close()
            finally:
                os._exit(code)
        status = waited(pid, within=20.0)
        again = order_paid(3)
        assert mine.handle(signed(again), again).status == 204  # the master's pool lives
    assert os.waitstatus_to_exitcode(status) == 5  # refused with a 5xx, nothing shared
    assert handled == [1, 3]


def test_a_worker_forked_while_a_thread_reads_the_stats_answers_its_first_delivery(
    tmp_path: Path,
) -> None:
    """A thread of the master reads ``stats()`` (a metrics exporter's scrape) while the
    master forks its workers (gunicorn ``--preload``, the journal opened early): a
    worker forked while that thread held the counters' lock inherited it held, by a
    thread that does not exist in the worker, and its first delivery waited forever
    (7 forks in 10, measured).  Each worker answers now, and counts only its own
    deliveries (the master's forged one is not counted again in every worker)."""
    import os
    import warnings

    receiver = SyncWebhookReceiver(SECRET, lambda notification: None, store=str(tmp_path / "j"))
    stopping = threading.Event()

    def scrape() -> None:
        while not stopping.is_set():
            receiver.stats()

    exits: list[int] = []
    with receiver:
        forged = {"Authorization": "Signature " + "0" * 40}
        assert receiver.handle(forged, order_paid(1)).status == 400  # counted in the master
        scraper = threading.Thread(target=scrape, daemon=True)
        scraper.start()
        try:
            for order_id in range(2, 10):
                with warnings.catch_warnings():  # a fork beside a thread: what is tested
                    warnings.simplefilter("ignore", DeprecationWarning)
                    pid = os.fork()
                if pid == 0:  # the worker: its first delivery, and its own counts
                    code = 1
                    try:
                        body = order_paid(order_id)
                        answered = receiver.handle(signed(body), body).status == 204
                        counted = receiver.stats().deliveries
                        own = (counted["handled"], counted["forged"]) == (1, 0)
                        code = 0 if answered and own else 3
                    finally:
                        os._exit(code)
                exits.append(os.waitstatus_to_exitcode(waited(pid, within=10.0)))
        finally:
            stopping.set()
            scraper.join()
    assert exits == [0] * 8


def test_the_fork_hook_keeps_no_receiver_alive() -> None:
    """Every receiver is reset in a forked child, yet the registry that finds them holds
    them weakly: a receiver made per request, or per test, is collected as before."""
    import gc
    import weakref

    receiver = SyncWebhookReceiver(SECRET, lambda notification: None)
    gone = weakref.ref(receiver)
    del receiver
    gc.collect()
    assert gone() is None
