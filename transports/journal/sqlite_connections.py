"""The SQLite journal's connections: opened, configured and migrated, and the writer's
turn at the file's one lock taken by asking again rather than by SQLite's busy handler.

Kept apart from the store (:mod:`transports.journal.sqlite`), which decides what
each connection is for (one writer behind the group commit, a pool of readers, a
commit watcher): how a connection is made fit for the journal, and which SQLite
errors mean what, are the same for all of them.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterable

from orderfsm.errors import (
    JournalCorrupt,
    JournalError,
    JournalOpenFailed,
    JournalUnavailable,
    journal_trouble,
)
from orderfsm.journal import SCHEMA_VERSION, schema_plan
from transports.journal import sqlite_sql as sql
from transports.journal.sql_schema import migrations

BUSY_SLICE = 0.0
"""Seconds SQLite's own busy handler may wait before we try again ourselves: none.
Its sleeps are 1 ms at least and grow (1, 2, 5, 10, 15, 20, 25 ms...), so it
polls ever more slowly and misses the openings other processes leave, while a
batch holds the lock a fraction of a millisecond (an fsync here: 0.3 ms).  The
writer asks again itself every :data:`RETRY_PAUSE` until the operation's
deadline (three receivers: 2,606 -> 2,944 deliveries/s, at the same CPU per
delivery, against 2 ms slices and 0.2-1 ms pauses)."""

RETRY_PAUSE = (0.00005, 0.0003)
"""Seconds between two tries to begin a write, drawn at random in this range (so
processes do not retry in step)."""

MIGRATIONS = migrations("sqlite")

OPEN_PATIENCE = 30.0
"""Seconds an open at start-up waits for the file while other processes start too
(switching a new file to WAL and migrating take its lock); an open on a delivery's
path waits only that delivery's ``wait``."""


def is_busy(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


_REFUSALS = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.ProgrammingError,
    sqlite3.NotSupportedError,
)
"""Errors of the statement itself, not of the file or its lock: trying again is useless."""
_VALUES = (sqlite3.IntegrityError, sqlite3.DataError)
"""Of those, the ones about the values written."""


def unavailable(display: str, exc: sqlite3.Error) -> JournalUnavailable:
    kind = journal_trouble(isinstance(exc, _VALUES), isinstance(exc, _REFUSALS))
    return kind(f"{display}: {exc}")


class _Inherited:
    """A forked child's copies of its parent's connections (see
    :mod:`~transports.journal.fork_gate`), closed before this process opens one of its own.

    Not closed at the fork itself, so a child that never opens the journal makes no
    SQLite call; nor left open: SQLite keeps one record per file of the locks its
    process holds, and a connection opened beside the copies joins theirs, as if it
    held the parent's locks, so it takes none of its own.  Another process closing
    its last connection then checkpoints and deletes the WAL under it, and the
    commits it made since are lost (measured).  Closing the copies is safe as none
    was inside a transaction at the fork (the gate waited).  After a fork from
    inside one, they are kept, never closed: closing a write transaction's copy
    rolls it back, which may rewrite the WAL index the parent's transaction uses."""

    def __init__(self) -> None:
        self._closable: list[sqlite3.Connection] = []
        self._kept: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def take(self, connections: Iterable[sqlite3.Connection], inside: bool) -> None:
        """At the fork, in the child."""
        self._lock = threading.Lock()  # a thread of the parent's may have held it
        (self._kept if inside else self._closable).extend(connections)

    def close(self) -> None:
        if not self._closable:
            return
        with self._lock:
            while self._closable:  # emptied only once every copy is closed
                with contextlib.suppress(sqlite3.Error):
                    self._closable[-1].close()
                self._closable.pop()


INHERITED = _Inherited()


def connect(path: str, display: str, busy_timeout: float = BUSY_SLICE) -> sqlite3.Connection:
    """A connection in WAL mode; called with the fork gate held, as every use of one."""
    INHERITED.close()
    connection = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    try:
        mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise JournalOpenFailed(f"{display}: cannot use WAL mode (got {mode})")
        connection.execute("PRAGMA synchronous=FULL")
    except BaseException:
        connection.close()
        raise
    return connection


def open_writer(path: str, display: str, patience: float | None = None) -> sqlite3.Connection:
    """The writer's connection, the schema brought up to date on it first."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise JournalOpenFailed(f"{display}: directory {directory} does not exist")
    deadline = time.monotonic() + (OPEN_PATIENCE if patience is None else patience)
    try:
        writer = _first_connect(path, display, deadline)
    except sqlite3.DatabaseError as exc:
        raise _open_error(display, exc) from None
    try:
        _migrate(writer, deadline)
        writer.execute(f"PRAGMA busy_timeout = {int(BUSY_SLICE * 1000)}")
    except sqlite3.DatabaseError as exc:
        writer.close()
        raise _open_error(display, exc) from None
    except BaseException:
        writer.close()
        raise
    return writer


def _first_connect(path: str, display: str, deadline: float) -> sqlite3.Connection:
    """Patient at start: switching a new file to WAL takes the lock for a moment
    while other processes start too, and SQLite may answer "locked" at once,
    without its busy handler (seen with six first starts at once): ask again."""
    while True:
        try:
            return connect(path, display, busy_timeout=max(deadline - time.monotonic(), 0.0))
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(random.uniform(0.001, 0.005))


def _open_error(display: str, exc: sqlite3.DatabaseError) -> JournalError:
    text = str(exc)
    if "not a database" in text or "malformed" in text:
        return JournalCorrupt(f"{display}: {text}")
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return JournalOpenFailed(f"{display}: cannot write here ({text})")
    return JournalOpenFailed(f"{display}: {text}")


def _migrate(connection: sqlite3.Connection, deadline: float) -> None:
    begin_immediate(connection, deadline)
    try:
        exists = connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'orderfsm_schema'"
        ).fetchone()
        found = None
        if exists:
            row = connection.execute("SELECT version FROM orderfsm_schema").fetchone()
            found = row[0] if row else None
        plan = schema_plan(found)
        if plan is not None:
            for step in plan.steps:
                for statement in MIGRATIONS[step]:
                    connection.execute(statement)
                if step == 1:
                    old = connection.execute(
                        "SELECT 1 FROM sqlite_master WHERE name = 'webhook_answers'"
                    ).fetchone()
                    if old:
                        connection.execute(sql.ADOPT_OLD_ANSWERS)
            connection.execute(
                "INSERT INTO orderfsm_schema (id, version) VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                (SCHEMA_VERSION,),
            )
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def begin_immediate(connection: sqlite3.Connection, deadline: float) -> None:
    """BEGIN IMMEDIATE, retried in short slices until ``deadline`` (monotonic)."""
    while True:
        try:
            connection.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(random.uniform(*RETRY_PAUSE))
