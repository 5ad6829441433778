"""How the PostgreSQL journal reaches its server, and what the server's failures mean.

The first connection of an open creates or upgrades the schema; then two
pools serve the store: one for single operations, one for the batches'
sessions (:data:`~transports.journal.postgres_batch.BATCH_SETTINGS`).  A
pooled connection's errors become the journal's own: an outage or a lock
wait run out is :class:`JournalUnavailable` (5xx to a webhook), a statement
the server refuses is a refusal, and a failed connection has the idle ones
checked too.  Kept apart from :mod:`~transports.journal.postgres`, whose
operations then read as their statements.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg.errors
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict

from orderfsm.errors import JournalClosed, JournalOpenFailed, JournalUnavailable, journal_trouble
from orderfsm.journal import SCHEMA_VERSION, JournalSettings, PostgresConfig, schema_plan
from transports.journal import postgres_batch as batch
from transports.journal.base import STATEMENT_PAST_WAIT
from transports.journal.postgres_listener import KEEPALIVES
from transports.journal.postgres_session import BatchConnection
from transports.journal.postgres_tuning import tune
from transports.journal.sql_schema import migrations

logger = logging.getLogger("orderfsm.journal")

MIGRATION_LOCK = 0x6F72646572667336
"""The advisory lock that makes concurrent first starts create the schema once."""

_REFUSALS = (
    psycopg.IntegrityError,
    psycopg.DataError,
    psycopg.ProgrammingError,
    psycopg.NotSupportedError,
    psycopg.errors.RaiseException,
)
"""Errors of the statement itself: the same statement again is refused again."""
_VALUES = (psycopg.IntegrityError, psycopg.DataError)
"""Of those, the ones about the values written."""

CONNECT_TIMEOUT = 5
"""Seconds libpq waits for a server, unless the URL says otherwise."""

MIGRATIONS = migrations("postgresql")

Pool = psycopg_pool.ConnectionPool[psycopg.Connection[Any]]


def _one_line(exc: BaseException) -> str:
    """libpq's messages span lines ("connection failed: ... FATAL: ..."): keep the telling part."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return "; ".join(lines[-2:]) if len(lines) > 1 else lines[0]


class PostgresPools:
    def __init__(self, config: PostgresConfig, settings: JournalSettings) -> None:
        self.config = config
        self.settings = settings
        self.display = config.display()
        self.threads = settings.pool_size
        self._pool: Pool | None = None
        self._batch_pool: Pool | None = None
        self.closed = False
        self._checking = threading.Lock()

    def connect(self) -> psycopg.Connection[Any]:
        """A connection of its own, outside the pools (a listener's, a name lock's)."""
        return psycopg.connect(self.config.conninfo, **self._kwargs())

    def _kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in self.config.conninfo:
            kwargs["connect_timeout"] = CONNECT_TIMEOUT
        return kwargs

    def _pool_kwargs(self) -> dict[str, Any]:
        """The pools' connections also set the listener's TCP keepalives and a
        ``tcp_user_timeout`` (each unless the URL sets its own): ``statement_timeout``
        is the server's, so a server that stops answering (frozen, a network cut
        without a reset) would block a statement's thread until the kernel gives up,
        about 15 minutes; so the thread fails once what it sent stays unacknowledged
        as long as a statement may take, and an idle connection found dead is
        replaced.  (A server whose host still acknowledges, a frozen process, is
        still waited for: its deliveries are answered on the loop at their deadline,
        :mod:`~transports.journal.batching`.)"""
        given = conninfo_to_dict(self.config.conninfo)
        tcp = {**KEEPALIVES, "tcp_user_timeout": self._statement_ms}
        return {**self._kwargs(), **{k: v for k, v in tcp.items() if k not in given}}

    @property
    def _statement_ms(self) -> int:
        """The longest a statement may take (ms)."""
        return int((self.settings.wait + STATEMENT_PAST_WAIT) * 1000)

    def _configure(self, connection: psycopg.Connection[Any]) -> None:
        wait_ms = int(self.settings.wait * 1000)
        connection.execute(f"SET lock_timeout = {max(wait_ms, 1)}")
        connection.execute(f"SET statement_timeout = {self._statement_ms}")
        lease_ms = int(self.settings.lease * 1000)
        connection.execute(f"SET idle_in_transaction_session_timeout = {lease_ms}")

    def _configure_batches(self, connection: psycopg.Connection[Any]) -> None:
        self._configure(connection)
        connection.execute("; ".join(f"SET {n} = {v}" for n, v in batch.BATCH_SETTINGS))

    @property
    def opened(self) -> bool:
        return self._pool is not None

    def open(self) -> str:
        """Bring the schema up to date and fill the pools; the current schema's name."""
        try:
            connection = self.connect()
        except psycopg.Error as exc:
            raise JournalOpenFailed(f"{self.display}: cannot connect: {self.said(exc)}") from None
        try:
            self._migrate(connection)
            row = connection.execute("SELECT current_schema()").fetchone()
            schema = row[0] if row and row[0] else "public"
        except psycopg.Error as exc:
            raise JournalOpenFailed(f"{self.display}: {self.said(exc)}") from None
        finally:
            connection.close()
        pools = []
        try:
            for name, configure, smallest, kind in (
                ("orderfsm-journal", self._configure, 2, psycopg.Connection),
                ("orderfsm-journal-batches", self._configure_batches, 1, BatchConnection),
            ):
                pools.append(self._new_pool(name, configure, smallest, kind))
        except JournalOpenFailed:
            for pool in pools:
                pool.close()
            raise
        self._pool, self._batch_pool = pools
        return str(schema)

    def _new_pool(
        self,
        name: str,
        configure: Callable[[psycopg.Connection[Any]], None],
        smallest: int,
        kind: type[psycopg.Connection[Any]],
    ) -> Pool:
        pool: Pool = psycopg_pool.ConnectionPool(
            self.config.conninfo,
            connection_class=kind,
            min_size=min(smallest, self.threads),
            max_size=self.threads,
            kwargs=self._pool_kwargs(),
            configure=configure,
            timeout=self.settings.wait,
            open=False,
            name=name,
        )
        try:
            pool.open(wait=True, timeout=max(CONNECT_TIMEOUT, self.settings.wait))
        except psycopg_pool.PoolTimeout as exc:
            pool.close()
            raise JournalOpenFailed(f"{self.display}: cannot fill the pool: {exc}") from None
        return pool

    def _migrate(self, connection: psycopg.Connection[Any]) -> None:
        with connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            found = None
            row = connection.execute("SELECT to_regclass('orderfsm_schema')").fetchone()
            if row is not None and row[0] is not None:
                version = connection.execute("SELECT version FROM orderfsm_schema").fetchone()
                found = version[0] if version else None
            plan = schema_plan(found)
            if plan is not None:
                for step in plan.steps:
                    for statement in MIGRATIONS[step]:
                        connection.execute(statement)
                connection.execute(
                    "INSERT INTO orderfsm_schema (id, version) VALUES (1, %s) "
                    "ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                    (SCHEMA_VERSION,),
                )
            tune(connection)  # last: the lock_timeout it sets holds to the commit

    def close(self) -> None:
        self.closed = True
        pools = (self._pool, self._batch_pool)
        self._pool = self._batch_pool = None
        for pool in pools:
            if pool is not None:
                pool.close(timeout=self.settings.wait)

    @contextmanager
    def connection(
        self, deadline: float, *, lock_waits: bool = False, batches: bool = False
    ) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; ``lock_waits``: the caller answers a lock wait run out
        itself (a claim held by a transactional handler is busy, not an outage);
        ``batches``: one of the batches' sessions."""
        pool = self._batch_pool if batches else self._pool
        if pool is None or self.closed:
            raise JournalClosed(f"{self.display} is closed")
        try:
            with pool.connection(timeout=max(deadline - time.monotonic(), 0.001)) as connection:
                yield connection
        except psycopg_pool.PoolTimeout:
            raise JournalUnavailable(f"{self.display}: no connection within the wait") from None
        except psycopg.errors.LockNotAvailable as exc:
            if lock_waits:
                raise
            raise JournalUnavailable(f"{self.display}: {self.said(exc)}") from None
        except psycopg.OperationalError as exc:
            self._recheck()
            raise JournalUnavailable(f"{self.display}: {self.said(exc)}") from None
        except psycopg.Error as exc:
            # Neither the connection nor a wait: the server refused the statement itself
            # (its data, a constraint, a trigger's RAISE).  Not a read-only server in a
            # failover (class 25, an InternalError too): that one passes.
            kind = journal_trouble(isinstance(exc, _VALUES), isinstance(exc, _REFUSALS))
            raise kind(f"{self.display}: {self.said(exc)}") from None

    def said(self, exc: BaseException) -> str:
        """libpq's message, one line, without the password (a malformed URL is quoted)."""
        return self.config.scrub(_one_line(exc))

    def _recheck(self) -> None:
        """After a connection failed, check the idle ones too (in the pools' own workers),
        so a server restart costs one failed delivery per process, not one per connection."""
        if self._checking.acquire(blocking=False):
            try:
                for pool in (self._pool, self._batch_pool):
                    if pool is not None:
                        pool.check()
            except Exception:
                logger.debug(
                    "checking the pool after a failure failed",
                    exc_info=True,
                    extra={"event": "journal.pool_check_failed"},
                )
            finally:
                self._checking.release()
