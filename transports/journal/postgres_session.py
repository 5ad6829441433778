"""The PostgreSQL journal's sessions, below psycopg's conveniences where they cost:
commands and transactions sent through libpq directly, and the batches' sessions
with a kept cursor.  Each choice was measured on the receiver's hot path, where
the client's CPU per round trip, not the server, is the limit.  The store, its
pools and its statements are :mod:`~transports.journal.postgres`'s,
:mod:`~transports.journal.postgres_pools`'s and
:mod:`~transports.journal.postgres_sql`'s.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
import psycopg.errors

_DONE = (psycopg.pq.ExecStatus.COMMAND_OK, psycopg.pq.ExecStatus.TUPLES_OK)


def command(db: psycopg.Connection[Any], text: str) -> None:
    """Run ``text`` (statements without parameters whose rows are not needed, such as
    ``BEGIN`` with the locks it takes, or ``COMMIT``) through libpq's ``PQexec`` (the
    GIL released while it waits), raising psycopg's error for a failure.
    ``db.execute`` costs ten times the client CPU for the same round trip (a new
    cursor, its transformer, the query's conversion, psycopg's generator-driven
    wait): measured on loopback, ``COMMIT`` 36 us of CPU against 5, and in a
    receiver at full load a claims' batch's ``BEGIN`` and ``COMMIT`` took 136 and
    120 us of its thread's CPU."""
    result = db.pgconn.exec_(text.encode())
    if result.status not in _DONE:
        if db.pgconn.status == psycopg.pq.ConnStatus.BAD:
            raise psycopg.OperationalError(f"the connection is lost: {text}")
        raise psycopg.errors.error_from_result(result, encoding=db.info.encoding)
    if text == "COMMIT" and result.command_status != b"COMMIT":
        # The server answers COMMIT in a failed transaction with a ROLLBACK, not an
        # error: work taken for committed would be lost without a word.
        raise psycopg.errors.InFailedSqlTransaction("the transaction failed: rolled back")


@contextmanager
def transaction(db: psycopg.Connection[Any], begin: str) -> Iterator[None]:
    """A transaction on an autocommit connection, opened by ``begin`` ("BEGIN" and
    ``SET LOCAL`` statements, and locks to take, sent together) and committed at the end, or rolled
    back; both through :func:`command`.  Not psycopg's pipeline mode: on loopback its
    bookkeeping cost more CPU than the round trips it saves (measured: a transaction
    of two statements 150 us of client CPU pipelined, 75 us one statement after
    another)."""
    try:
        command(db, begin)  # may fail inside the transaction: a lock waited for too long
        yield
    except BaseException:
        if not db.closed and db.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            with suppress(psycopg.Error):
                db.execute("ROLLBACK")
        raise
    command(db, "COMMIT")


class BatchConnection(psycopg.Connection[Any]):
    """A batches' session, with a cursor kept for the batch statements: a new cursor's
    adapters look up the dumpers of a statement's arrays afresh, a kept one reuses
    them (measured: 86-102 us of client CPU for a statement of nine arrays of six
    rows on a new cursor, 53 on a kept one).  One statement's rows are read before
    the next is sent, so one cursor serves them all."""

    _kept: psycopg.Cursor[Any] | None = None

    def kept_cursor(self) -> psycopg.Cursor[Any]:
        if self._kept is None or self._kept.closed:
            self._kept = self.cursor()
        return self._kept
