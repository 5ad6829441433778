"""An instance name held by one live tracker at a time on PostgreSQL: a session
advisory lock (``pg_try_advisory_lock``) on a connection of the tracker's own,
held for its life (a pooled connection cannot hold a session's lock: it serves
others between statements).

The server drops the lock with the session.  A process that ends, even by
SIGKILL, has its socket closed by its kernel; the server's backend, idle in
its read, sees the end at once and exits: a restarted instance on a live host
gets its name back within milliseconds (measured on loopback by
``test_a_sigkilled_holder_frees_its_name_at_once``).  A host that dies or is
cut off sends nothing: the server notices through TCP keepalives, which this
session sets for itself on the server's side (``tcp_keepalives_*``, the
listener's values, :data:`~transports.journal.postgres_listener.KEEPALIVES`:
about 11 s of silence) instead of the system's default (two hours on Linux).
That is under the fleet's lease (15 s), which bounds a start's wait for its
name.  The same keepalives on this side tell the tracker its lock's
connection died.

A lock lost with its connection (a database restart, a failover, the session
terminated) is taken again by :meth:`PostgresNameLock.keep` once the database
answers.  Should another tracker have taken the name meanwhile, both now
lease under it: an error is logged, and this tracker goes on following its
orders (two trackers asking Get order for one order cost less than an order
nobody follows) and takes the name again when the other lets it go.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import psycopg

from orderfsm.errors import JournalUnavailable
from transports.journal.postgres_listener import keep_alive, keepalives

logger = logging.getLogger("orderfsm.fleet")

RETRY_MIN, RETRY_MAX = 0.1, 5.0
"""Seconds between two tries to take a lost name again."""


def name_key(namespace: str, name: str) -> int:
    """The advisory lock's key of ``name`` among the journal's ``namespace`` (its
    schema's channel: two fleets in one database, in two schemas, may share names)."""
    digest = hashlib.blake2b(f"orderfsm-instance\0{namespace}\0{name}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


class PostgresNameLock:
    """One instance name's advisory lock, on a connection of its own."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        name: str,
        namespace: str,
        display: str,
        said: Callable[[BaseException], str],
    ) -> None:
        self._connect = connect
        self.name = name
        self.key = name_key(namespace, name)
        self.display = display
        self._said = said
        self._connection: psycopg.Connection[Any] | None = None

    @property
    def backend_pid(self) -> int | None:
        """The server process of the session holding the lock (``None``: not held)."""
        connection = self._connection
        return None if connection is None else connection.info.backend_pid

    def take(self) -> bool:
        """Blocking: ``True`` once the lock is held on this tracker's session."""
        try:
            if self._connection is None:
                self._connection = self._open()
            row = self._connection.execute(
                "SELECT pg_try_advisory_lock(%s)", (self.key,)
            ).fetchone()
        except (psycopg.Error, OSError) as exc:  # OSError: the keepalives' setsockopt
            self.close()
            raise JournalUnavailable(f"{self.display}: {self._said(exc)}") from None
        return bool(row and row[0])

    def _open(self) -> psycopg.Connection[Any]:
        connection = self._connect()
        try:
            keep_alive(connection)
            chosen = keepalives(connection)
            if chosen["keepalives"]:  # the server's side: a dead host's session ends
                connection.execute(
                    f"SET tcp_keepalives_idle = {chosen['keepalives_idle']};"
                    f" SET tcp_keepalives_interval = {chosen['keepalives_interval']};"
                    f" SET tcp_keepalives_count = {chosen['keepalives_count']}"
                )
            if connection.info.server_version >= 140000:  # the session is idle for good
                connection.execute("SET idle_session_timeout = 0")
        except BaseException:
            connection.close()
            raise
        return connection

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    async def keep(self) -> None:
        """For the tracker's life: notice the lock's connection ending, and take the
        name again (see the module's notes)."""
        while True:
            await self._until_lost()
            logger.warning(
                "instance name %r is not held (its lock's connection to %s ended, or was"
                " never made): taking it again",
                self.name,
                self.display,
                extra={"event": "fleet.name_lost", "instance": self.name},
            )
            await self._take_again()

    async def _until_lost(self) -> None:
        """Until the idle session's socket tells of its end (the server closing it, or
        keepalives finding it dead); what else comes (a notice) is read and dropped."""
        connection = self._connection
        if connection is None:  # not taken at the start: the database did not answer
            return
        pgconn = connection.pgconn
        while pgconn.status == psycopg.pq.ConnStatus.OK:
            await anyio.wait_readable(pgconn.socket)
            try:
                pgconn.consume_input()
            except psycopg.OperationalError:
                break
            while pgconn.notifies() is not None:
                pass
        self.close()

    async def _take_again(self) -> None:
        delay, told = RETRY_MIN, False
        while True:
            try:
                taken = await anyio.to_thread.run_sync(self.take)
            except JournalUnavailable:
                taken = None  # the database is still away
            if taken:
                logger.info(
                    "instance name %r held again",
                    self.name,
                    extra={"event": "fleet.name_held", "instance": self.name},
                )
                return
            if taken is False and not told:
                told = True
                logger.error(
                    "instance name %r is held by another live tracker: both lease orders"
                    " under it and both follow them (Get order twice) until one stops;"
                    " give each live tracker a name of its own",
                    self.name,
                    extra={"event": "fleet.name_shared", "instance": self.name},
                )
            await anyio.sleep(delay)
            delay = min(2 * delay, RETRY_MAX)
