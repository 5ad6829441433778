"""The SQLite journal: several processes on one host share one file.

* WAL mode, so readers never wait for the writer and the writer never waits
  for readers.
* ``synchronous=FULL``: a commit returns only once it is on disk, so an
  answer given after it (a 2xx to Xsolla, a grant committed by the
  transactional handler) survives a power loss, not only a crash.  Its cost
  (one fsync per commit) is paid once per *batch*: concurrent deliveries
  of a process are committed together (:mod:`transports.journal.groupcommit`).
* Writers queue on one lock, and SQLite's busy handler is unfair (a waiter
  sleeps and polls, and can miss every opening for seconds): the writer does
  not use it, it retries ``BEGIN IMMEDIATE`` itself every fraction of a
  millisecond until the operation's deadline, after which the delivery is
  answered 5xx.  Nothing
  ever hangs past the answer's deadline.
* The plain handler runs with no lock held; the transactional handler runs
  inside the write transaction, so it should be short.

How each connection is opened and configured, and the writer's retried
``BEGIN IMMEDIATE``, are :mod:`transports.journal.sqlite_connections`'; the
fleet tracker's wait for another process's commit is
:mod:`transports.journal.sqlite_watcher`'s.  Every use of a connection holds
the fork gate (:mod:`transports.journal.fork_gate`): ``os.fork()`` waits for
the uses under way, and a forked child closes its copies of the connections
before it opens its own.
"""

from __future__ import annotations

import os
import queue
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from orderfsm.errors import JournalClosed
from orderfsm.journal import Answer, Claim, Delivery, DeliveryFilter, NewDelivery, Outcome
from transports.journal import readiness
from transports.journal import sqlite_sql as sql
from transports.journal.base import Claimed, ClaimRequest, SettleRequest, Work, Worked
from transports.journal.fork_gate import GATE
from transports.journal.groupcommit import GroupCommit
from transports.journal.orders import Note, record
from transports.journal.sql_shared import (
    DELIVERY_COLUMNS,
    PRUNE_CHUNK,
    claim_from_row,
    delivery_from_row,
    error_text,
    filter_sql,
    prune_in_chunks,
    renew_in,
    run_in_transaction,
)
from transports.journal.sqlite_connections import (
    INHERITED,
    begin_immediate,
    connect,
    open_writer,
    unavailable,
)
from transports.journal.sqlite_watcher import CommitWatcher

T = TypeVar("T")


class _GoAlone(Exception):
    """A batch failed on one request's data: each of its requests goes alone."""


class SqliteStore:
    kind = "sqlite"
    blocking = True

    def __init__(
        self, path: str | os.PathLike[str], *, threads: int = 8, read_timeout: float = 2.0
    ) -> None:
        self.path = os.fspath(path)
        self.display = f"sqlite:///{self.path}"
        self.threads = threads
        self._writer: sqlite3.Connection | None = None
        self._group: GroupCommit | None = None
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._closed = False
        self._forked = False
        self._durable = True
        self.read_timeout = read_timeout
        self._watcher = CommitWatcher(self.path, self.display, read_timeout)
        GATE.tell_at_fork(self)

    # --- connections ---------------------------------------------------------------------

    def open(self, patience: float | None = None) -> None:
        if self._writer is not None:
            return
        if self._forked:
            raise self._closed_error()
        with GATE.held():
            writer = open_writer(self.path, self.display, patience)
        self._writer = writer
        self._group = GroupCommit(self._begin, self._on_writer, GATE.held)

    def _on_writer(self, statement: str) -> object:
        """A batch's savepoints, commit and rollback; refused in a forked child, where a
        transaction is the parent's, copied by a fork made inside it: the parent commits it."""
        writer = self._writer
        if writer is None:
            raise self._closed_error()
        return writer.execute(statement)

    def _closed_error(self) -> JournalClosed:
        if self._forked:
            return JournalClosed(
                f"{self.display} was opened by the process this one was forked from:"
                " open a journal in this process"
            )
        return JournalClosed(f"{self.display} is closed")

    def forked_away(self, inside: bool) -> None:
        """In a child forked from this process, at the fork: its connections are the
        parent's.  They go to :data:`~transports.journal.sqlite_connections.INHERITED`,
        closed before this process opens one of its own, and this store is closed here
        for good (each process opens its own journal).  A store that had opened
        nothing stays as it was: the child may open it."""
        taken = [self._writer, self._watcher.hand_over()]
        while True:
            try:
                taken.append(self._readers.get_nowait())
            except queue.Empty:
                break
        connections = [connection for connection in taken if connection is not None]
        if not connections:
            return
        self._closed = self._forked = True
        self._writer = self._group = None
        self._watcher.close()
        INHERITED.take(connections, inside)

    def _begin(self, deadline: float, durable: bool) -> None:
        """Open a batch's transaction.  Only batches that record an answer (or run the
        transactional handler) wait for the disk at commit (``FULL``); a batch of
        claims alone commits with ``NORMAL``, visible to every process at once and
        made durable by the next ``FULL`` commit, which writes the log in order.
        A claim lost to a power cut costs nothing: the handler it was for had not
        answered, and runs again on the retry."""
        assert self._writer is not None
        try:
            if durable != self._durable:
                mode = "FULL" if durable else "NORMAL"
                self._writer.execute(f"PRAGMA synchronous={mode}")
                self._durable = durable
            begin_immediate(self._writer, deadline)
        except sqlite3.Error as exc:
            raise unavailable(self.display, exc) from None

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        with GATE.held():
            if self._closed or self._writer is None:
                raise self._closed_error()
            try:
                connection = self._readers.get_nowait()
            except queue.Empty:
                try:
                    connection = connect(self.path, self.display, self.read_timeout)
                except sqlite3.Error as exc:
                    raise unavailable(self.display, exc) from None
            try:
                yield connection
            except sqlite3.Error as exc:
                connection.close()
                raise unavailable(self.display, exc) from None
            except BaseException:
                connection.close()
                raise
            self._readers.put(connection)
            if self._closed:
                self._close_readers()  # close() ran during this read: it must not stay open

    def _close_readers(self) -> None:
        while True:
            try:
                self._readers.get_nowait().close()
            except queue.Empty:
                break

    def _write(
        self, work: Callable[[sqlite3.Connection], T], deadline: float, durable: bool = True
    ) -> T:
        if self._closed or self._group is None or self._writer is None:
            raise self._closed_error()
        writer = self._writer
        try:
            return self._group.run(lambda: work(writer), deadline, durable)
        except sqlite3.Error as exc:
            raise unavailable(self.display, exc) from None

    # --- for other tables of the journal (the fleet tracker's orders) ----------------

    def write(
        self, work: Callable[[sqlite3.Connection], T], deadline: float, durable: bool = True
    ) -> T:
        """Run ``work`` in a write transaction (committed with others of this process)."""
        return self._write(work, deadline, durable)

    def read(self, work: Callable[[sqlite3.Connection], T], deadline: float) -> T:
        with self._reader() as db:
            return work(db)

    def wait_for_commit(
        self,
        seen: int | None,
        timeout: float,
        then: Callable[[sqlite3.Connection], T] | None = None,
    ) -> tuple[int, T | None]:
        """Block until another connection commits (``PRAGMA data_version`` moves from
        ``seen``) or ``timeout`` s pass; returns the version now, and what ``then``
        read on the same connection after a commit (``None`` without one): the
        fleet tracker's read of the news in this thread, not a hop to another.
        Checked every few ms on a connection of its own
        (:mod:`~transports.journal.sqlite_watcher`).  One caller at a time."""
        return self._watcher.wait(seen, timeout, then)

    def close(self) -> None:
        self._closed = True
        self._watcher.close()
        with GATE.held():
            if self._writer is not None and self._group is not None:
                # Wait for a batch in flight, then close.
                with self._group._lock:
                    self._writer.close()
            self._close_readers()

    # --- operations --------------------------------------------------------------------

    def claim(
        self,
        delivery: NewDelivery,
        owner: str,
        now: float,
        lease: float,
        deadline: float,
        logged: int | None = None,
        notes: Sequence[Note] = (),
    ) -> Claimed:
        def work(db: sqlite3.Connection) -> Claimed:
            claimed = sql.claim(db, delivery, owner, now, lease, logged)
            if notes:
                record(db, self.kind, notes, now, tracked_only=True)
            return claimed

        return self._write(work, deadline, durable=False)

    def read_claim(self, key: str, deadline: float) -> Claim | None:
        with self._reader() as db:
            return claim_from_row(db.execute(sql.READ_CLAIM, (key,)).fetchone())

    def settle(
        self,
        key: str | None,
        attempt: int,
        answer: Answer,
        delivery_id: int,
        error: str | None,
        now: float,
        deadline: float,
    ) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            return sql.settle(db, key, attempt, answer, delivery_id, error, now)

        return self._write(work, deadline)

    def renew(self, key: str, attempt: int, until: float, deadline: float) -> bool:
        return renew_in(self, key, attempt, until, deadline)

    def finish(
        self,
        delivery_id: int,
        answer: Answer,
        outcome: Outcome,
        error: str | None,
        now: float,
        deadline: float,
    ) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute(
                sql.FINISH, (answer.status, outcome.value, error_text(error), now, delivery_id)
            )

        # What a duplicate was answered: a record only, the answer it repeats is durable.
        self._write(work, deadline, durable=False)

    def claim_many(
        self,
        requests: Sequence[ClaimRequest],
        owner: str,
        now: float,
        lease: float,
        deadline: float,
    ) -> list[Claimed] | None:
        """The claims of deliveries that arrived together, then their orders' statuses,
        as one unit of work: one trip to a worker thread and one turn at the writer for
        the batch, not one each.  A request failing on its data (a trigger's refusal,
        say; not the file) rolls the unit back whole: ``None``, every request goes
        alone, so only that one fails."""

        def work(db: sqlite3.Connection) -> list[Claimed]:
            claimed = [sql.claim(db, r.delivery, owner, now, lease, None) for r in requests]
            notes = [note for request in requests for note in request.notes]
            if notes:
                record(db, self.kind, notes, now, tracked_only=True)
            return claimed

        return self._together(work, deadline, durable=False)

    def settle_many(
        self, requests: Sequence[SettleRequest], now: float, deadline: float
    ) -> list[bool] | None:
        """The answers as one unit of work, committed durably (``FULL``) before any of
        them is given."""

        def work(db: sqlite3.Connection) -> list[bool]:
            return [
                sql.settle(db, r.key, r.attempt, r.answer, r.delivery_id, r.error, now)
                for r in requests
            ]

        return self._together(work, deadline, durable=True)

    def _together(
        self, work: Callable[[sqlite3.Connection], list[T]], deadline: float, durable: bool
    ) -> list[T] | None:
        def unit(db: sqlite3.Connection) -> list[T]:
            try:
                return work(db)
            except sqlite3.OperationalError:
                raise  # the file itself (locked, full, failing): every request meets it
            except Exception as exc:
                raise _GoAlone from exc  # rolled back by the group commit, like any failure

        try:
            return self._write(unit, deadline, durable)
        except _GoAlone:
            return None

    def run_in_claim(
        self,
        delivery: NewDelivery,
        work: Work,
        owner: str,
        now: float,
        lease: float,
        deadline: float,
        logged: int | None = None,
    ) -> Worked:
        def unit(db: sqlite3.Connection) -> Worked:
            return run_in_transaction(db, sql.DIALECT, delivery, work, owner, now, lease, logged)

        return self._write(unit, deadline)

    def reopen(self, key: str, attempt: int, deadline: float) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            return db.execute(sql.REOPEN, (key, attempt)).rowcount == 1

        return self._write(work, deadline)

    def deliveries(self, selection: DeliveryFilter, deadline: float) -> list[Delivery]:
        where, args = filter_sql(selection, "?")
        sql = f"SELECT {DELIVERY_COLUMNS} FROM orderfsm_deliveries{where} ORDER BY id DESC LIMIT ?"
        with self._reader() as db:
            rows = db.execute(sql, (*args, selection.limit)).fetchall()
        return [delivery_from_row(row) for row in rows]

    def delivery(self, delivery_id: int, deadline: float) -> Delivery | None:
        sql = f"SELECT {DELIVERY_COLUMNS} FROM orderfsm_deliveries WHERE id = ?"
        with self._reader() as db:
            row = db.execute(sql, (delivery_id,)).fetchone()
        return None if row is None else delivery_from_row(row)

    def ready(self, deadline: float, record_orders: bool) -> None:
        """One read, then room on the disk and the writer's right to write
        (:mod:`~transports.journal.readiness`), whatever it writes (``record_orders``:
        a file's permissions are its tables').  The writer is probed only once this
        process's batches let it go within the probe's patience: a batch under way is
        busy, not broken."""
        self.delivery(0, deadline)
        readiness.sqlite_room(self.path, self.display)
        group, writer = self._group, self._writer
        if group is None or writer is None:
            raise self._closed_error()
        with GATE.held():
            if not group._lock.acquire(timeout=readiness.SQLITE_PROBE_PATIENCE):
                return
            try:
                if self._closed:
                    raise self._closed_error()
                readiness.sqlite_writer_may_write(writer, self.display)
            finally:
                group._lock.release()

    def claims(self, keys: Sequence[str], deadline: float) -> dict[str, Claim]:
        found: dict[str, Claim] = {}
        with self._reader() as db:
            for key in keys:
                claim = claim_from_row(db.execute(sql.READ_CLAIM, (key,)).fetchone())
                if claim is not None:
                    found[key] = claim
        return found

    def prune(self, cutoff: float, deadline: float) -> tuple[int, int]:
        """In transactions of :data:`PRUNE_CHUNK` rows (:func:`prune_in_chunks`)."""

        def chunk(db: sqlite3.Connection) -> tuple[int, int]:
            claims = db.execute(sql.PRUNE_CLAIMS_CHUNK, (cutoff, cutoff, PRUNE_CHUNK)).rowcount
            deliveries = db.execute(sql.PRUNE_DELIVERIES_CHUNK, (cutoff, PRUNE_CHUNK)).rowcount
            return claims, deliveries

        return prune_in_chunks(lambda until: self._write(chunk, until), deadline, PRUNE_CHUNK)
