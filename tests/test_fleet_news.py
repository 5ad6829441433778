"""A receiver writes an order's news as a change only once an instance tracks the order;
the first track reads what came before from the webhook deliveries.

A webhook-only fleet (no tracker on the journal) then pays for no order row, change
or NOTIFY per delivery.  Nothing is lost on the way: a delivery told before the
track is in the deliveries the track reads, and on PostgreSQL the orders' news
locks order a track and a receiver's claim (each interleaving is forced here).
Both databases, both event loops.
"""

from __future__ import annotations

import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import anyio
import psycopg
import pytest
from support_journal import (
    PausedBefore,
    begin_writing,
    connect,
    deliveries_of,
    dialect_of,
    is_postgres,
    on_databases,
    url_for,
)
from support_webhook import SECRET, order_paid, signed

from orderfsm import Status
from orderfsm.journal import NewDelivery
from transports.journal import open_journal
from transports.journal import orders as sql
from transports.journal.base import Work
from transports.journal.order_log import OrderLog
from transports.journal.order_rows import in_dialect
from transports.journal.orders import Note
from transports.journal.postgres_sql import DIALECT
from transports.journal.sql_shared import run_in_transaction
from transports.webhook import WebhookReceiver
from transports.webhook.answers import ACCEPTED

pytestmark = pytest.mark.anyio

P, C = Status.PAID, Status.CANCELED


ISOLATION_LEVELS = ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"]


def assert_paid_once_by_webhook(url: str, order_id: int) -> None:
    """The order's row says ``paid``, its one change, written from the webhook."""
    row, changes = rows_of(url, order_id)
    assert row == ("paid", 1)
    assert [c[:3] for c in changes] == [(1, "paid", "webhook")]


def rows_of(url: str, order_id: int) -> tuple[Any, list[tuple[Any, ...]]]:
    """The order's row (status, version; ``None``: no row) and its changes."""
    db = connect(url)
    try:
        row = db.execute(
            f"SELECT status, version FROM orderfsm_orders WHERE order_id = {order_id}"
        ).fetchone()
        changes = db.execute(
            "SELECT version, status, source, at FROM orderfsm_changes"
            f" WHERE order_id = {order_id} ORDER BY version"
        ).fetchall()
    finally:
        db.close()
    return (None if row is None else tuple(row)), [tuple(c) for c in changes]


@on_databases
async def test_news_of_an_order_nobody_tracks_waits_in_its_deliveries_for_its_first_track(
    backend: str, tmp_path: Path
) -> None:
    """Order 80, nobody tracks it: paid and refunded, no row and no change written.
    Order 81, tracked: its payment is a change at once, from the claim's transaction.
    Then 80's first track writes both, as the receiver would have, at their
    deliveries' times; a second track writes nothing more."""
    url = url_for(backend, tmp_path)
    async with open_journal(url) as journal:
        log = OrderLog(journal)
        await log.track(81, P, None)
        receiver = WebhookReceiver(SECRET, store=journal)
        for body in (order_paid(80), order_paid(80, kind="order_canceled"), order_paid(81)):
            assert (await receiver.handle(signed(body), body)).status == 204
        assert rows_of(url, 80) == (None, [])
        row81, changes81 = rows_of(url, 81)
        assert row81 == ("paid", 1)
        assert [c[:3] for c in changes81] == [(1, "paid", "webhook")]

        first = await log.track(80, P, None)
        again = await log.track(80, P, None)
    assert (first.status, first.version) == (C, 2)
    assert (again.status, again.version) == (C, 2)
    row, changes = rows_of(url, 80)
    assert row == ("canceled", 2)
    assert changes == [
        (1, "paid", "webhook", deliveries_of(url, 80)[0][2]),
        (2, "canceled", "webhook", deliveries_of(url, 80)[1][2]),
    ]


@on_databases
async def test_a_track_and_a_claim_of_the_same_order_at_once_lose_no_news(
    backend: str, tmp_path: Path
) -> None:
    """The claim's transaction has asked whether order 90 is tracked (no) and holds its
    delivery, uncommitted, when a first track of 90 begins: the track waits for it and
    reads the delivery.  Without the news locks the track read no delivery and the
    claim wrote no change: a waiter on 90 never heard of its payment.  SQLite's
    writers take turns: there the track comes after the claim."""
    url = url_for(backend, tmp_path)
    dialect = dialect_of(url)
    async with open_journal(url) as journal:
        log = OrderLog(journal)
        channel = log.channel
        claimer = connect(url)
        tracked = threading.Event()
        try:
            begin_writing(claimer, url)
            claimer.execute(
                in_dialect(
                    dialect,
                    "INSERT INTO orderfsm_deliveries (kind, key, order_id, body, headers,"
                    " received_at) VALUES ('order_paid', 'order_paid:90', 90, %s, '[]', %s)",
                ),
                (order_paid(90), time.time()),
            )
            note = Note(90, P, "webhook", time.time())
            assert (
                sql.record(claimer, dialect, [note], time.time(), channel, tracked_only=True) == []
            )

            async def first_track() -> None:
                await log.track(90, P, None)
                tracked.set()

            async with anyio.create_task_group() as tg:
                if is_postgres(url):
                    tg.start_soon(first_track)
                    await anyio.sleep(0.5)
                    assert not tracked.is_set()  # waiting for the claim's news lock
                claimer.execute("COMMIT")
                if not is_postgres(url):
                    tg.start_soon(first_track)
        finally:
            claimer.close()
    assert_paid_once_by_webhook(url, 90)


@on_databases
@pytest.mark.parametrize("held", [0.1, 0.5])
async def test_a_claim_that_comes_while_a_first_track_is_written_writes_its_change(
    backend: str, held: float, tmp_path: Path
) -> None:
    """A first track of order 91 has taken its news lock and read 91's deliveries (none
    yet) when a delivery of 91 comes: the receiver's claim waits for the track, then
    finds 91 tracked and writes the change in its own transaction, and the delivery is
    answered 2xx.  Without the lock the claim found 91 untracked and the track read no
    delivery: the payment was lost to every waiter.  The track held for ``held`` s:
    0.1, within the batch's lock wait (its statement asks after the wait); 0.5, past
    it (the claim goes alone, and waits there).  SQLite: the claim comes after."""
    url = url_for(backend, tmp_path)
    dialect = dialect_of(url)
    async with open_journal(url) as journal:
        log = OrderLog(journal)
        tracker = PausedBefore(connect(url), "SELECT order_id, status, version")

        def first_track() -> None:
            begin_writing(tracker, url)
            sql.track(tracker, dialect, 91, P, None, time.time(), channel=log.channel)
            tracker.execute("COMMIT")

        receiver = WebhookReceiver(SECRET, store=journal)
        body = order_paid(91)
        try:
            async with anyio.create_task_group() as tg:
                if is_postgres(url):
                    tg.start_soon(anyio.to_thread.run_sync, first_track)
                    assert await anyio.to_thread.run_sync(tracker.reached.wait, 10)

                    async def release() -> None:
                        await anyio.sleep(held)
                        tracker.go.set()

                    tg.start_soon(release)
                    answer = await receiver.handle(signed(body), body)
                    assert tracker.go.is_set()  # the claim waited for the track
                else:
                    tracker.go.set()
                    first_track()
                    answer = await receiver.handle(signed(body), body)
        finally:
            tracker.db.close()
    assert answer.status == 204
    assert_paid_once_by_webhook(url, 91)


@pytest.mark.parametrize("level", ISOLATION_LEVELS)
def test_a_first_track_reads_a_claim_it_waited_for_whatever_the_isolation(
    level: str, tmp_path: Path
) -> None:
    """PostgreSQL: a first track of order 96 in a transaction begun at ``level`` (a
    role's or a URL's default) waits for a claim's news lock.  The track reads the
    deliveries after the wait: under REPEATABLE READ its snapshot was taken before it
    (at the lock's statement), and the claim's payment was lost (a review found it)."""
    url = url_for("postgresql", tmp_path)
    with closing(open_journal(url).sync) as journal:
        journal.open()
        channel = journal.store.channel
        claimer = connect(url)
        done = threading.Event()

        def first_track() -> None:
            tracker = connect(url)
            try:
                tracker.execute(f"BEGIN ISOLATION LEVEL {level}")
                sql.track(tracker, "postgresql", 96, P, None, time.time(), channel=channel)
                tracker.execute("COMMIT")
            finally:
                tracker.close()
            done.set()

        try:
            claimer.execute("BEGIN")
            claimer.execute(
                "INSERT INTO orderfsm_deliveries (kind, key, order_id, body, headers,"
                " received_at) VALUES ('order_paid', 'order_paid:96', 96, %s, '[]', %s)",
                (order_paid(96), time.time()),
            )
            note = Note(96, P, "webhook", time.time())
            assert (
                sql.record(claimer, "postgresql", [note], time.time(), channel, tracked_only=True)
                == []
            )
            thread = threading.Thread(target=first_track)
            thread.start()
            time.sleep(0.5)
            assert not done.is_set()  # waiting for the claim's news lock
            claimer.execute("COMMIT")
            thread.join(10)
        finally:
            claimer.close()
    assert done.is_set()
    assert_paid_once_by_webhook(url, 96)


@pytest.mark.parametrize("level", ISOLATION_LEVELS)
def test_a_transactional_claim_in_an_apps_transaction_loses_no_news_to_a_track(
    level: str, tmp_path: Path
) -> None:
    """PostgreSQL: a transactional handler's claim runs in the app's transaction, begun at
    ``level`` (Django's ``isolation_level`` option, say); a first track of order 95
    commits between the claim's statement and the order's news.  READ COMMITTED: the
    news sees the track, and is written.  Otherwise its snapshot is older than the
    track: the order's row is locked as every order's then is, which the track's row
    makes a serialization failure (a 5xx, Xsolla retries; the retry writes it).  Before, it
    found the order untracked and wrote nothing: the payment lost (a review found it)."""
    url = url_for("postgresql", tmp_path)
    note = Note(95, P, "webhook", time.time())
    delivery = NewDelivery("order_paid", "order_paid:95", 95, order_paid(95), (), None, time.time())
    with closing(open_journal(url).sync) as journal:
        journal.open()
        channel = journal.store.channel

        def news(connection: Any) -> None:
            sql.record(connection, "postgresql", [note], time.time(), channel, tracked_only=True)

        work = Work(lambda connection, attempt: (ACCEPTED, None), news)
        raw = psycopg.connect(url, autocommit=True)
        app = PausedBefore(raw, "SELECT current_setting('transaction_isolation')")
        failed: list[BaseException] = []

        def claim(connection: Any) -> None:
            raw.execute(f"BEGIN ISOLATION LEVEL {level}")
            try:
                run_in_transaction(connection, DIALECT, delivery, work, "r", time.time(), 30, None)
                raw.execute("COMMIT")
            except psycopg.Error as exc:
                raw.execute("ROLLBACK")
                failed.append(exc)

        try:
            thread = threading.Thread(target=claim, args=(app,))
            thread.start()
            assert app.reached.wait(10)  # claimed, the news not yet written
            tracker = connect(url)
            try:
                tracker.execute("BEGIN")
                sql.track(tracker, "postgresql", 95, P, None, time.time(), channel=channel)
                tracker.execute("COMMIT")
            finally:
                tracker.close()
            app.go.set()
            thread.join(10)
            if failed:  # Xsolla's retry
                assert level != "READ COMMITTED"
                assert isinstance(failed[0], psycopg.errors.SerializationFailure)
                claim(raw)
        finally:
            raw.close()
    assert_paid_once_by_webhook(url, 95)


async def test_news_of_a_repeatable_read_claim_waits_with_the_rest_for_the_first_track(
    tmp_path: Path,
) -> None:
    """PostgreSQL: untracked order 7's payment reaches a plain receiver (it waits in its
    delivery), its refund a transactional one whose sessions default to REPEATABLE READ
    (a role's setting).  That claim locks the order's row without writing its news, as
    the first track then reads both, in order: paid, then canceled.  (Writing the refund
    at once had made the payment stale to the first track: its call lost; a review
    found it.)"""
    url = url_for("postgresql", tmp_path)
    base, options = url.split("?options=")
    repeatable = f"{base}?options=" + quote(
        unquote(options) + r" -c default_transaction_isolation=repeatable\ read"
    )
    paid, canceled = order_paid(7), order_paid(7, kind="order_canceled")
    async with open_journal(url) as journal, open_journal(repeatable) as other:
        plain = WebhookReceiver(SECRET, store=journal)
        transactional = WebhookReceiver(SECRET, store=other, transactional=lambda n, c: None)
        assert (await plain.handle(signed(paid), paid)).status == 204
        assert (await transactional.handle(signed(canceled), canceled)).status == 204
        assert rows_of(url, 7) == ((None, 0), [])  # the row locked, no news written
        row = await OrderLog(journal).track(7, P, None)
    assert (row.status, row.version) == (C, 2)
    assert [c[:3] for c in rows_of(url, 7)[1]] == [
        (1, "paid", "webhook"),
        (2, "canceled", "webhook"),
    ]
