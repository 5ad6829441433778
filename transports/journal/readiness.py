"""Whether a journal could take a delivery now: what ``/readyz`` asks, every few seconds.

A load balancer routes by readiness, and a journal that answers reads but refuses
writes answers every delivery 5xx: a PostgreSQL standby (a failover that left the
application on a replica), ``default_transaction_read_only``, a SQLite file this
user may not write, a full disk.  So readiness asks whether the journal can write,
and it asks without writing: it runs on every instance every few seconds, and a
probe that wrote would cost a commit (an fsync) each time and hold the write lock
meanwhile.

Busy is not broken.  A lock another writer holds (a long transactional handler, a
prune) says nothing against this instance: every instance on the host shares that
lock, so a 503 would move no delivery anywhere it is written sooner, and under load
readiness would flap and empty the pool for nothing.  So a probe that does not get
the lock promptly gives up on that part and answers ready; a lock that stays held
shows in the receiver's metrics (``journal_failures``, the outage's seconds).

What is not seen: a PostgreSQL server whose data disk is full still reads and
reports writable (only a write finds out; a full WAL disk stops the server, which
readiness does see); a lock that never ends.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from orderfsm.errors import JournalUnavailable
from transports.journal.postgres_privileges import missing_privileges
from transports.journal.sqlite_connections import begin_immediate, is_busy, unavailable

FREE_SPACE_FLOOR = 4 * 1024 * 1024
"""Bytes that must be free beside a SQLite journal for it to be ready.  Its WAL grows
by up to a thousand 4 KiB pages between two checkpoints (SQLite's default
``wal_autocheckpoint``), so with less a write may fail before the next checkpoint
reuses the log.  The blocks a filesystem keeps for root are not counted: they are
there for the administrator's repairs, not for a journal to fill."""

SQLITE_PROBE_PATIENCE = 0.05
"""Seconds the SQLite probe waits for the write lock (this process's writer, then the
file's) before it calls the journal busy, and ready: a batch holds it for a fraction
of a millisecond, so a free moment comes well within this, unless a long writer holds
it (busy, not broken)."""

SQLITE_TOUCH = "UPDATE orderfsm_schema SET version = version WHERE 0"
"""A write that changes no row: SQLite still checks that the file may be written
(``attempt to write a readonly database``), while nothing is ever dirtied, so the
rollback after it has nothing to undo and nothing reaches the disk."""

POSTGRES_WRITES = {
    "orderfsm_claims": ("SELECT", "INSERT", "UPDATE"),
    "orderfsm_deliveries": ("INSERT", "UPDATE"),
}
"""What every delivery writes (its claim, its record), each privilege asked for alone
(the claim's upsert reads the row it conflicts with, so it needs SELECT too; the
probe's own read asks it of the deliveries):
``has_table_privilege`` given several is true if *any* is held.  Not the orders'
tables (:data:`POSTGRES_ORDER_WRITES`, asked of a user that records orders only): a
receiver with ``record_orders=False`` may run under a role without them, and would
be kept out of the pool for good."""

POSTGRES_ORDER_WRITES = {
    "orderfsm_orders": ("SELECT", "INSERT", "UPDATE"),
    "orderfsm_changes": ("INSERT",),
}
"""What recording an order's status adds, in the claim's own transaction
(:func:`~transports.journal.orders.record`): the order's row made or locked and read
back (an upsert ``RETURNING`` the row), the change inserted, the row written (an upsert
that reads its ``tracking``).  Asked only of a user that records orders
(``record_orders``): without them every delivery of a status answers 500."""

POSTGRES_NOTIFY = "pg_notify(text, text)"
"""The function the same write announces the change with: PUBLIC may run it unless a
DBA took that back, and then the write fails as a privilege missing on a table would."""


POSTGRES_READY = (
    "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on',"
    " EXISTS (SELECT 1 FROM orderfsm_deliveries WHERE id = 0), "
    + missing_privileges(POSTGRES_WRITES)
)
"""One round trip, no write, no lock: a standby, a session whose transactions are
read-only (``default_transaction_read_only`` of the server, the database, the role
or the URL's options, and every session of a standby), one indexed read of the
journal's table (the server answers, the schema is there), and the privileges a
delivery's writes need (a role whose grants a DBA took back: every delivery 500),
from the catalog's cache."""

POSTGRES_READY_RECORDING = (
    POSTGRES_READY + ", " + missing_privileges(POSTGRES_ORDER_WRITES, (POSTGRES_NOTIFY,))
)
""":data:`POSTGRES_READY`, and the privileges recording orders' statuses needs
(:data:`POSTGRES_ORDER_WRITES`, :data:`POSTGRES_NOTIFY`), for a user that records them."""


def postgres_probe(record_orders: bool) -> str:
    """The statement that asks whether a delivery could be written now, by a user that
    records orders' statuses in the claim's transaction or not."""
    return POSTGRES_READY_RECORDING if record_orders else POSTGRES_READY


def sqlite_room(path: str, display: str) -> None:
    """Raise :class:`JournalUnavailable` when the filesystem of the journal at ``path``
    is read-only (remounted so after a disk error) or has less than
    :data:`FREE_SPACE_FLOOR` free.  One ``statvfs``: no lock, no I/O on the file."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        found = os.statvfs(directory)
    except OSError as exc:
        raise JournalUnavailable(f"{display}: {exc}") from None
    if found.f_flag & os.ST_RDONLY:
        raise JournalUnavailable(f"{display}: {directory} is on a read-only filesystem")
    free = found.f_bavail * found.f_frsize
    if free < FREE_SPACE_FLOOR:
        raise JournalUnavailable(
            f"{display}: {free} bytes free in {directory}, under the {FREE_SPACE_FLOOR}"
            " a journal needs to write"
        )


def sqlite_writer_may_write(writer: sqlite3.Connection, display: str) -> None:
    """Raise :class:`JournalUnavailable` when the connection that writes the deliveries
    cannot write: one opened read-only because its user may not write the file (SQLite
    then opens it read-only without a word, and even ``BEGIN IMMEDIATE`` passes).

    Called with this process's writer to itself (its group commit's lock held).  The
    probe begins a write transaction, runs :data:`SQLITE_TOUCH` and rolls back: the
    file's write lock is held for microseconds, never through an fsync.  The lock
    not got within :data:`SQLITE_PROBE_PATIENCE` is busy, not broken: it returns."""
    try:
        begin_immediate(writer, time.monotonic() + SQLITE_PROBE_PATIENCE)
    except sqlite3.OperationalError as exc:
        if is_busy(exc):
            return
        raise unavailable(display, exc) from None
    try:
        writer.execute(SQLITE_TOUCH)
    except sqlite3.Error as exc:
        raise unavailable(display, exc) from None
    finally:
        with contextlib.suppress(sqlite3.Error):  # SQLite may have ended it itself
            writer.execute("ROLLBACK")


def postgres_verdict(row: Sequence[Any] | None, display: str) -> None:
    """Raise :class:`JournalUnavailable` unless the ``row`` of :func:`postgres_probe`'s
    statement says the session may write."""
    assert row is not None
    in_recovery, read_only, _, missing, *recording = row
    if in_recovery:
        raise JournalUnavailable(f"{display}: the server is a standby (in recovery): it only reads")
    if read_only:
        raise JournalUnavailable(
            f"{display}: transactions are read-only here (default_transaction_read_only is on)"
        )
    if missing:
        raise JournalUnavailable(f"{display}: this role may not write the journal ({missing})")
    if recording and recording[0]:
        raise JournalUnavailable(
            f"{display}: this role may not record orders' statuses ({recording[0]}), which"
            " this receiver does in each claim's transaction: grant them, or turn"
            " record_orders off"
        )
