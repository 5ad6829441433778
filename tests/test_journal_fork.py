"""A SQLite journal across ``os.fork()``: real forks of a process that writes.

SQLite keeps, per process, its record of the locks the process holds on a file; a
child gets the record but not the locks.  The journal's fork gate
(``transports.journal.fork_gate``) makes every fork wait for the journal's SQLite
work under way, and a child close its copies of the parent's connections before it
opens its own.  Plain functions: the synchronous receiver needs no event loop.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from support_fork import exit_code, fork
from support_journal import connect, create_grants, grants
from support_webhook import SECRET, order_paid, signed

from orderfsm.journal import JournalSettings
from transports.journal import open_journal
from transports.webhook import Notification
from transports.webhook.sync import SyncWebhookReceiver


def delivered(receiver: SyncWebhookReceiver, order_id: int) -> int:
    body = order_paid(order_id)
    return receiver.handle(signed(body), body).status


def journaled(url: str) -> list[int]:
    """The orders of the deliveries in the journal's file, as any process reads it."""
    db = connect(url)
    try:
        rows = db.execute("SELECT order_id FROM orderfsm_deliveries ORDER BY order_id").fetchall()
    finally:
        db.close()
    return [int(row[0]) for row in rows]


def test_workers_forked_while_the_parent_delivers_write_to_the_journal(tmp_path: Path) -> None:
    """A process delivers on two threads while it forks workers (a pre-fork server whose
    master writes, the background prune, ``multiprocessing``): a worker forked while a
    thread was inside a transaction inherited SQLite's record of that thread's locks,
    not the locks, and its own journal on the file answered "database is locked" for
    good (40 forks in 100 never wrote within 5 s, measured).  Every worker writes now:
    the fork waits for the transactions under way."""
    receiver = SyncWebhookReceiver(SECRET, lambda notification: None, store=tmp_path / "j")
    stopping = threading.Event()

    def deliver(order_id: int) -> None:
        while not stopping.is_set():
            order_id += 1
            delivered(receiver, order_id)

    codes: list[int] = []
    with receiver:
        threads = [threading.Thread(target=deliver, args=(n * 10**6,)) for n in (1, 2)]
        for thread in threads:
            thread.start()
        try:
            for worker in range(1, 13):
                time.sleep(0.01)
                pid = fork(lambda order_id=worker: delivered(receiver, order_id) // 100)
                codes.append(exit_code(pid, within=5.0))
        finally:
            stopping.set()
            for thread in threads:
                thread.join()
    assert codes == [2] * 12


def test_a_fork_waits_for_a_read_under_way(tmp_path: Path) -> None:
    """Reads hold the gate too: a thread reading the file holds, for moments, the mutex
    of SQLite's WAL index, and a child forked then inherited it held: its own first
    statement on the file waited forever (13 forks in 200 with two threads only
    reading, measured).  A fork waits for the read under way (here one kept open
    0.3 s), and the child writes."""
    url = str(tmp_path / "journal.sqlite3")
    journal = open_journal(url).sync
    journal.open()
    inside, ended = threading.Event(), threading.Event()

    def slow(db: Any) -> None:
        inside.set()
        time.sleep(0.3)
        db.execute("SELECT count(*) FROM orderfsm_claims").fetchone()
        ended.set()

    reader = threading.Thread(target=journal.store.read, args=(slow, time.monotonic() + 5.0))
    reader.start()
    try:
        inside.wait()
        receiver = SyncWebhookReceiver(SECRET, lambda notification: None, store=url)
        pid = fork(lambda: 0 if ended.is_set() and delivered(receiver, 1) == 204 else 1)
    finally:
        reader.join()
        journal.close()
    assert exit_code(pid, within=10.0) == 0


def test_a_workers_answered_deliveries_outlive_its_parent_closing_the_journal(
    tmp_path: Path,
) -> None:
    """A worker writes through a journal of its own, beside its copies of the parent's
    connections.  Those copies were left open: SQLite keeps one record of a process's
    locks per file, so the worker's connection joined theirs and took no lock on the
    file itself, and the parent closing its last connection checkpointed and deleted
    the WAL under the worker: deliveries it answered 204 after that were lost.  The
    copies are closed before the worker's own connection opens, which holds its
    locks: every delivery answered is in the journal."""
    url = str(tmp_path / "journal.sqlite3")
    receiver = SyncWebhookReceiver(SECRET, lambda notification: None, store=url)
    go, went = os.pipe()
    ready, readied = os.pipe()
    with receiver:
        assert delivered(receiver, 1) == 204

        def worker() -> int:
            first = delivered(receiver, 2)
            os.write(readied, b"1")
            os.read(go, 1)  # the parent has closed its journal
            later = [delivered(receiver, order_id) for order_id in (3, 4)]
            return 0 if [first, *later] == [204] * 3 else 1

        pid = fork(worker)
        assert os.read(ready, 1) == b"1"
    os.write(went, b"1")
    assert exit_code(pid, within=10.0) == 0
    assert journaled(url) == [1, 2, 3, 4]


def test_a_fork_inside_a_transaction_waits_for_nothing_and_its_child_commits_nothing(
    tmp_path: Path,
) -> None:
    """A transactional handler that forks (a ``multiprocessing`` worker started from the
    grant, say): the fork does not wait for the transaction it is made in (it would
    wait for itself).  The child gets a copy of that transaction; one that returned
    into it committed it beside the parent, with writes of its own (two processes
    writing one transaction into the WAL: a grant the parent never made).  The copy's
    commit is refused in the child now: it answers 500, and only the parent's grant
    is in the journal."""
    url = str(tmp_path / "journal.sqlite3")
    create_grants(url)
    parent = os.getpid()
    children: list[int] = []

    def grant(notification: Notification, connection: Any) -> None:
        with warnings.catch_warnings():  # a fork beside the journal's threads: the point
            warnings.simplefilter("ignore", DeprecationWarning)
            children.append(os.fork())  # the child returns from here into the transaction
        connection.execute("INSERT INTO grants VALUES (?, ?)", (os.getpid(), "sku"))

    settings = JournalSettings(wait=1.0)
    with SyncWebhookReceiver(SECRET, transactional=grant, store=url, settings=settings) as receiver:
        status = delivered(receiver, 7)
        if os.getpid() != parent:
            os._exit(0 if status == 500 else 1)
    (child,) = children
    assert exit_code(child, within=10.0) == 0
    assert (status, grants(url)) == (204, [parent])
