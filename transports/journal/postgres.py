"""The PostgreSQL journal, for fleets: psycopg 3 with a psycopg_pool connection pool.

Each operation is one statement in autocommit where it can be (the claim,
its delivery record and the read of the row as it was, in one round trip;
the answer and the delivery's outcome in another; the statements are
:mod:`~transports.journal.postgres_sql`'s).  Deliveries arriving together
share one transaction for their claims and one for their answers
(``claim_many``, ``settle_many``), each batch's claims or answers one
statement (:mod:`~transports.journal.postgres_batch`): each statement, commit
and round trip costs far more CPU than its rows, and a receiver's CPU is its
limit (so transactions are opened and committed through libpq directly:
:mod:`~transports.journal.postgres_session`).  The
transactional handler's path is one transaction: claim, the application's
writes (in a savepoint, kept only with a 2xx), the answer.

A duplicate that meets a claim still inside another transaction waits on
the row's lock at most ``wait`` (``lock_timeout``), then answers 5xx.  A
session that sits in a transaction longer than the lease (a hung process)
is ended by the server (``idle_in_transaction_session_timeout``); a killed
process's transaction is rolled back when its connection drops.

``pip install 'orderfsm[postgres]'``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from orderfsm.errors import (
    JournalClosed,
    JournalOpenFailed,
    JournalUnavailable,
    journal_trouble,
)
from orderfsm.journal import (
    SCHEMA_VERSION,
    Answer,
    Claim,
    Delivery,
    DeliveryFilter,
    JournalSettings,
    NewDelivery,
    Outcome,
    PostgresConfig,
    schema_plan,
)
from transports.journal.base import (
    CLAIM_COLUMNS,
    DELIVERY_COLUMNS,
    Claimed,
    ClaimRequest,
    SettleRequest,
    Work,
    Worked,
    claim_from_row,
    delivery_from_row,
    error_text,
    filter_sql,
    migrations,
    renew_in,
    run_in_transaction,
)
from transports.journal.orders import CHANNEL, Note, channel_for, record
from transports.journal.postgres_listener import PostgresListener

try:
    import psycopg
    import psycopg.errors
    import psycopg_pool
except ImportError as exc:  # pragma: no cover - depends on the install
    raise JournalOpenFailed(
        "the PostgreSQL journal needs psycopg: pip install 'orderfsm[postgres]'"
    ) from exc

from transports.journal import postgres_batch as batch
from transports.journal import postgres_sql as sql
from transports.journal.postgres_name import PostgresNameLock
from transports.journal.postgres_session import BatchConnection, transaction

logger = logging.getLogger("orderfsm.journal")

T = TypeVar("T")
R = TypeVar("R")

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


def _one_line(exc: BaseException) -> str:
    """libpq's messages span lines ("connection failed: ... FATAL: ..."): keep the telling part."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return "; ".join(lines[-2:]) if len(lines) > 1 else lines[0]


class PostgresStore:
    kind = "postgresql"
    blocking = True

    def __init__(self, config: PostgresConfig, settings: JournalSettings | None = None) -> None:
        self.config = config
        self.settings = settings or JournalSettings()
        self.display = config.display()
        self.threads = self.settings.pool_size
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] | None = None
        self._batch_pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] | None = None
        """The batches' sessions (:data:`~transports.journal.postgres_batch.BATCH_SETTINGS`)."""
        self._closed = False
        self._checking = threading.Lock()
        self._listeners: set[PostgresListener] = set()
        self.channel = CHANNEL
        """Where changes of this journal's orders are announced (set on open)."""

    # --- connections ---------------------------------------------------------------------

    def _kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in self.config.conninfo:
            kwargs["connect_timeout"] = CONNECT_TIMEOUT
        return kwargs

    def _configure(self, connection: psycopg.Connection[Any]) -> None:
        wait_ms = int(self.settings.wait * 1000)
        connection.execute(f"SET lock_timeout = {max(wait_ms, 1)}")
        connection.execute(f"SET statement_timeout = {wait_ms + 1000}")
        lease_ms = int(self.settings.lease * 1000)
        connection.execute(f"SET idle_in_transaction_session_timeout = {lease_ms}")

    def _configure_batches(self, connection: psycopg.Connection[Any]) -> None:
        self._configure(connection)
        connection.execute("; ".join(f"SET {n} = {v}" for n, v in batch.BATCH_SETTINGS))

    def open(self, patience: float | None = None) -> None:
        """``patience`` is not used: connecting is bounded by ``connect_timeout``."""
        if self._pool is not None:
            return
        try:
            connection = psycopg.connect(self.config.conninfo, **self._kwargs())
        except psycopg.Error as exc:
            raise JournalOpenFailed(f"{self.display}: cannot connect: {self._said(exc)}") from None
        try:
            self._migrate(connection)
            row = connection.execute("SELECT current_schema()").fetchone()
            self.channel = channel_for(row[0] if row and row[0] else "public")
        except psycopg.Error as exc:
            raise JournalOpenFailed(f"{self.display}: {self._said(exc)}") from None
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

    def _new_pool(
        self,
        name: str,
        configure: Callable[[psycopg.Connection[Any]], None],
        smallest: int,
        kind: type[psycopg.Connection[Any]],
    ) -> psycopg_pool.ConnectionPool[psycopg.Connection[Any]]:
        pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] = psycopg_pool.ConnectionPool(
            self.config.conninfo,
            connection_class=kind,
            min_size=min(smallest, self.threads),
            max_size=self.threads,
            kwargs=self._kwargs(),
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
            if plan is None:
                return
            for step in plan.steps:
                for statement in MIGRATIONS[step]:
                    connection.execute(statement)
            connection.execute(
                "INSERT INTO orderfsm_schema (id, version) VALUES (1, %s) "
                "ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                (SCHEMA_VERSION,),
            )

    # --- for other tables of the journal (the fleet tracker's orders) ----------------

    def write(self, work: Callable[[Any], T], deadline: float, durable: bool = True) -> T:
        """Run ``work`` in a transaction of its own."""
        with self._connection(deadline) as db, db.transaction():
            return work(db)

    def read(self, work: Callable[[Any], T], deadline: float) -> T:
        with self._connection(deadline) as db:
            return work(db)

    def listener(self) -> PostgresListener:
        """A new LISTENing connection (opened on its first wait), closed with the store.

        One per follower: a fleet tracker's follower waits on it on its event loop
        and reads the announced orders' changes there
        (:mod:`~transports.journal.postgres_listener`).  Two trackers sharing one
        open journal each get their own, as each must hear every notification."""
        if self._closed:
            raise JournalClosed(f"{self.display} is closed")
        listener = PostgresListener(
            lambda: psycopg.connect(self.config.conninfo, **self._kwargs()),
            self.channel,
            self.display,
            self.settings.wait,
            self._said,
            self._listeners.discard,
        )
        self._listeners.add(listener)
        return listener

    def name_lock(self, name: str) -> PostgresNameLock:
        """The lock of an instance name, on a connection of its own (opened when first
        taken), closed by the tracker that holds it."""
        return PostgresNameLock(
            lambda: psycopg.connect(self.config.conninfo, **self._kwargs()),
            name,
            self.channel,
            self.display,
            self._said,
        )

    def close(self) -> None:
        self._closed = True
        for listener in tuple(self._listeners):
            listener.close()  # or its wait does, when it ends
        pools = (self._pool, self._batch_pool)
        self._pool = self._batch_pool = None
        for pool in pools:
            if pool is not None:
                pool.close(timeout=self.settings.wait)

    @contextmanager
    def _connection(
        self, deadline: float, *, lock_waits: bool = False, batches: bool = False
    ) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; ``lock_waits``: the caller answers a lock wait run out
        itself (a claim held by a transactional handler is busy, not an outage);
        ``batches``: one of the batches' sessions."""
        pool = self._batch_pool if batches else self._pool
        if pool is None or self._closed:
            raise JournalClosed(f"{self.display} is closed")
        try:
            with pool.connection(timeout=max(deadline - time.monotonic(), 0.001)) as connection:
                yield connection
        except psycopg_pool.PoolTimeout:
            raise JournalUnavailable(f"{self.display}: no connection within the wait") from None
        except psycopg.errors.LockNotAvailable as exc:
            if lock_waits:
                raise
            raise JournalUnavailable(f"{self.display}: {self._said(exc)}") from None
        except psycopg.OperationalError as exc:
            self._recheck()
            raise JournalUnavailable(f"{self.display}: {self._said(exc)}") from None
        except psycopg.Error as exc:
            # Neither the connection nor a wait: the server refused the statement itself
            # (its data, a constraint, a trigger's RAISE).  Not a read-only server in a
            # failover (class 25, an InternalError too): that one passes.
            kind = journal_trouble(isinstance(exc, _VALUES), isinstance(exc, _REFUSALS))
            raise kind(f"{self.display}: {self._said(exc)}") from None

    def _said(self, exc: BaseException) -> str:
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
                logger.debug("checking the pool after a failure failed", exc_info=True)
            finally:
                self._checking.release()

    def _one(self, sql: str, params: Any, deadline: float) -> Any:
        with self._connection(deadline) as db:
            return db.execute(sql, params).fetchone()

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
        try:
            with self._connection(deadline, lock_waits=True) as db:
                if not notes:
                    return sql.claim_on(db, delivery, owner, now, lease, logged, fast=True)
                # The fast claim's setting holds for the whole transaction.
                with transaction(db, "BEGIN"):
                    claimed = sql.send_claim(db, delivery, owner, now, lease, logged, fast=True)
                    record(db, self.kind, notes, now, self.channel)
                    return claimed()
        except psycopg.errors.LockNotAvailable:
            # Another transaction holds the key (a transactional handler at work).
            ident = self._log_apart(delivery, logged, deadline)
            return Claimed(ident, None, None, busy=True)

    def claim_many(
        self,
        requests: Sequence[ClaimRequest],
        owner: str,
        now: float,
        lease: float,
        deadline: float,
    ) -> list[Claimed] | None:
        """The claims and the lock of their orders (one statement), then every order's
        status, in one transaction."""
        notes = [note for request in requests for note in request.notes]
        orders = sorted({note.order_id for note in notes})

        def write(db: psycopg.Connection[Any]) -> list[Claimed]:
            claimed, locked = batch.claims(db, requests, owner, now, lease, orders)
            if notes:
                record(batch.KeptStatements(db), self.kind, notes, now, self.channel, locked)
            return claimed

        return self._together(len(requests), batch.CLAIM_BEGIN, write, deadline)

    def settle_many(
        self, requests: Sequence[SettleRequest], now: float, deadline: float
    ) -> list[bool] | None:
        """The answers, one durable commit: one statement in autocommit (one round trip),
        or, with a key twice, the statements in one transaction."""

        def write(db: psycopg.Connection[Any]) -> list[bool]:
            return batch.settles(db, requests, now)

        begin = None if batch.one_statement(requests) else "BEGIN"
        return self._together(len(requests), begin, write, deadline)

    def _together(
        self,
        count: int,
        begin: str | None,
        write: Callable[[psycopg.Connection[Any]], list[R]],
        deadline: float,
    ) -> list[R] | None:
        """The batch's statements (``write(db)``, which returns their results), on a
        batches' session, in one transaction opened by ``begin`` (``None``: one
        statement, in autocommit).  Claim rows
        are locked in key order (then order rows in id order, as every writer does),
        so batches of several processes never deadlock; a row locked past a short
        wait (a transactional handler's) gives ``None``: every request goes alone."""
        with self._connection(deadline, batches=True) as db:
            try:
                if begin is None:
                    got = write(db)
                else:
                    with transaction(db, begin):
                        got = write(db)
            except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
                return None
            except psycopg.Error as exc:
                if db.broken or db.closed:
                    raise  # the database itself: every request meets the outage
                # One request's row failed on a healthy connection (its data, say):
                # the transaction rolled back whole, so each goes alone and only that
                # one fails; the others' answers (their handlers ran) are kept.
                logger.warning("a batch of %d failed (%s); each goes alone", count, exc)
                return None
        return got

    def _log_apart(self, delivery: NewDelivery, logged: int | None, deadline: float) -> int:
        with self._connection(deadline) as db:
            return sql.log(db, sql.delivery_params(delivery), logged)

    def read_claim(self, key: str, deadline: float) -> Claim | None:
        return claim_from_row(self._one(sql.READ_CLAIM, (key,), deadline))

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
        with self._connection(deadline) as db:
            return sql.settle(db, key, attempt, answer, delivery_id, error, now)

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
        with self._connection(deadline) as db:
            db.execute(
                sql.FINISH, (answer.status, outcome.value, error_text(error), now, delivery_id)
            )

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
        try:
            with self._connection(deadline, lock_waits=True) as db, db.transaction():
                return run_in_transaction(
                    db, sql.DIALECT, delivery, work, owner, now, lease, logged
                )
        except psycopg.errors.LockNotAvailable:
            ident = self._log_apart(delivery, logged, deadline)
            return Worked(ident, None, None, busy=True)

    def reopen(self, key: str, attempt: int, deadline: float) -> bool:
        with self._connection(deadline) as db:
            return db.execute(sql.REOPEN, (key, attempt)).rowcount == 1

    def deliveries(self, selection: DeliveryFilter, deadline: float) -> list[Delivery]:
        where, args = filter_sql(selection, "%s")
        sql = f"SELECT {DELIVERY_COLUMNS} FROM orderfsm_deliveries{where} ORDER BY id DESC LIMIT %s"
        with self._connection(deadline) as db:
            rows = db.execute(sql, (*args, selection.limit)).fetchall()
        return [delivery_from_row(row) for row in rows]

    def delivery(self, delivery_id: int, deadline: float) -> Delivery | None:
        sql = f"SELECT {DELIVERY_COLUMNS} FROM orderfsm_deliveries WHERE id = %s"
        row = self._one(sql, (delivery_id,), deadline)
        return None if row is None else delivery_from_row(row)

    def claims(self, keys: Sequence[str], deadline: float) -> dict[str, Claim]:
        sql = f"SELECT {CLAIM_COLUMNS} FROM orderfsm_claims WHERE key = ANY(%s)"
        with self._connection(deadline) as db:
            rows = db.execute(sql, (list(keys),)).fetchall()
        found = [claim_from_row(row) for row in rows]
        return {claim.key: claim for claim in found if claim is not None}

    def prune(self, cutoff: float, deadline: float) -> tuple[int, int]:
        with self._connection(deadline) as db, db.transaction():
            claims = db.execute(sql.PRUNE_CLAIMS, (cutoff, cutoff)).rowcount
            deliveries = db.execute(
                "DELETE FROM orderfsm_deliveries WHERE received_at < %s", (cutoff,)
            ).rowcount
        return claims, deliveries
