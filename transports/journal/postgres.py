"""The PostgreSQL journal, for fleets: psycopg 3 with a psycopg_pool connection pool.

Each operation is one statement in autocommit where it can be (the claim,
its delivery record and the read of the row as it was, in one round trip;
the answer and the delivery's outcome in another), so a delivery costs two
round trips and two commits, which PostgreSQL groups across connections.
The transactional handler's path is one transaction: claim, the
application's writes (in a savepoint, kept only with a 2xx), the answer.

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
    decisions,
    schema_plan,
)
from transports.journal.base import (
    CLAIM_COLUMNS,
    DELIVERY_COLUMNS,
    Also,
    Claimed,
    Dialect,
    Work,
    Worked,
    claim_from_row,
    delivery_from_row,
    encode_headers,
    error_text,
    filter_sql,
    migrations,
    run_in_transaction,
)
from transports.journal.base import (
    PRUNE_CLAIMS as PRUNE_CLAIMS_SQL,
)
from transports.journal.orders import CHANNEL, channel_for

try:
    import psycopg
    import psycopg.errors
    import psycopg_pool
except ImportError as exc:  # pragma: no cover - depends on the install
    raise JournalOpenFailed(
        "the PostgreSQL journal needs psycopg: pip install 'orderfsm[postgres]'"
    ) from exc

logger = logging.getLogger("orderfsm.journal")

T = TypeVar("T")

MIGRATION_LOCK = 0x6F72646572667336
"""The advisory lock that makes concurrent first starts create the schema once."""

CONNECT_TIMEOUT = 5
"""Seconds libpq waits for a server, unless the URL says otherwise."""

MIGRATIONS = migrations("postgresql")

_TAKE = """
taken AS (
    INSERT INTO orderfsm_claims AS c (key, attempt, state, owner, lease_until, claimed_at)
    VALUES (%(key)s, 1, 'running', %(owner)s, %(lease_until)s, %(now)s)
    ON CONFLICT (key) DO UPDATE SET
        attempt = c.attempt + 1, state = 'running', owner = excluded.owner,
        lease_until = excluded.lease_until, claimed_at = excluded.claimed_at,
        answered_at = NULL, status = NULL, body = NULL, content_type = NULL
    WHERE c.state = 'released' OR (c.state = 'running' AND c.lease_until <= %(now)s)
    RETURNING c.attempt
)"""

# What the delivery record says, from the take and the row as it was before it.
_STATUS = """CASE WHEN EXISTS (SELECT 1 FROM taken) THEN NULL
    ELSE (SELECT status FROM prior WHERE state = 'answered') END"""
_OUTCOME = """CASE WHEN EXISTS (SELECT 1 FROM taken) THEN NULL
    WHEN EXISTS (SELECT 1 FROM prior WHERE state = 'answered') THEN 'duplicate' END"""
_FINISHED = """CASE WHEN EXISTS (SELECT 1 FROM taken) THEN NULL
    WHEN EXISTS (SELECT 1 FROM prior WHERE state = 'answered') THEN %(now)s END"""

_PRIOR = f"prior AS (SELECT {CLAIM_COLUMNS} FROM orderfsm_claims WHERE key = %(key)s)"

_RESULT = f"""
SELECT (SELECT id FROM logged), (SELECT attempt FROM taken), {
    ", ".join("p." + c.strip() for c in CLAIM_COLUMNS.split(","))
}
FROM (SELECT 1) AS one LEFT JOIN prior AS p ON TRUE"""

# The plain handler's claim commits without waiting for the disk (this statement's
# transaction only): visible to every instance at once, made durable by the answer's
# commit, which flushes the log in order.  A claim lost to a database crash costs
# nothing the plain handler does not allow: its retry runs the handler again.
_ASYNC_COMMIT = ", fast AS (SELECT set_config('synchronous_commit', 'off', true) AS x)"
_ASYNC_RESULT = _RESULT.replace("AS p ON TRUE", "AS p ON TRUE, fast")

CLAIM = f"""
WITH {_PRIOR}, {_TAKE}, logged AS (
    INSERT INTO orderfsm_deliveries
        (kind, key, order_id, body, headers, peer, received_at, attempt, status, outcome,
         finished_at, replay)
    SELECT %(kind)s, %(key)s, %(order_id)s, %(body)s, %(headers)s, %(peer)s, %(received_at)s,
        (SELECT attempt FROM taken), {_STATUS}, {_OUTCOME}, {_FINISHED}, %(replay)s
    RETURNING id
){_RESULT}"""

CLAIM_FAST = CLAIM.replace("), logged AS", f"){_ASYNC_COMMIT}, logged AS", 1).replace(
    _RESULT, _ASYNC_RESULT
)

RECLAIM = f"""
WITH {_PRIOR}, {_TAKE}, logged AS (
    UPDATE orderfsm_deliveries SET attempt = (SELECT attempt FROM taken),
        status = {_STATUS}, outcome = {_OUTCOME}, finished_at = {_FINISHED}
    WHERE id = %(logged)s
    RETURNING id
){_RESULT}"""

LOG = """
INSERT INTO orderfsm_deliveries
    (kind, key, order_id, body, headers, peer, received_at, attempt, status, outcome,
     error, finished_at, replay)
VALUES (%(kind)s, %(key)s, %(order_id)s, %(body)s, %(headers)s, %(peer)s, %(received_at)s,
    %(attempt)s, %(status)s, %(outcome)s, %(error)s, %(finished_at)s, %(replay)s)
RETURNING id
"""

RELOG = """
UPDATE orderfsm_deliveries SET attempt = coalesce(%(attempt)s, attempt), status = %(status)s,
    outcome = %(outcome)s, error = %(error)s, finished_at = %(finished_at)s
WHERE id = %(logged)s
RETURNING id
"""

SETTLE = """
WITH s AS (
    UPDATE orderfsm_claims SET state = %(state)s, answered_at = %(now)s, status = %(status)s,
        body = %(body)s, content_type = %(content_type)s
    WHERE key = %(key)s AND attempt = %(attempt)s AND state = 'running'
    RETURNING 1
), d AS (
    UPDATE orderfsm_deliveries SET status = %(given)s,
        outcome = CASE WHEN EXISTS (SELECT 1 FROM s) THEN %(outcome)s ELSE 'fenced' END,
        error = %(error)s, finished_at = %(now)s
    WHERE id = %(id)s
)
SELECT EXISTS (SELECT 1 FROM s)
"""

FINISH = """
UPDATE orderfsm_deliveries SET status = %s, outcome = %s, error = %s, finished_at = %s WHERE id = %s
"""

REOPEN = """
UPDATE orderfsm_claims SET state = 'released', status = NULL, body = NULL, content_type = NULL
WHERE key = %s AND attempt = %s AND state = 'answered'
"""

READ_CLAIM = f"SELECT {CLAIM_COLUMNS} FROM orderfsm_claims WHERE key = %s"

PRUNE_CLAIMS = PRUNE_CLAIMS_SQL.format(m="%s")


def _one_line(exc: BaseException) -> str:
    """libpq's messages span lines ("connection failed: ... FATAL: ..."): keep the telling part."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return "; ".join(lines[-2:]) if len(lines) > 1 else lines[0]


def _delivery_params(delivery: NewDelivery) -> dict[str, Any]:
    return {
        "kind": delivery.kind,
        "key": delivery.key,
        "order_id": delivery.order_id,
        "body": delivery.body,
        "headers": encode_headers(delivery.headers),
        "peer": delivery.peer,
        "received_at": delivery.received_at,
        "replay": delivery.replay,
    }


class PostgresStore:
    kind = "postgresql"
    blocking = True

    def __init__(self, config: PostgresConfig, settings: JournalSettings | None = None) -> None:
        self.config = config
        self.settings = settings or JournalSettings()
        self.display = config.display()
        self.threads = self.settings.pool_size
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] | None = None
        self._closed = False
        self._checking = threading.Lock()
        self._listener: psycopg.Connection[Any] | None = None
        self._listening = threading.Lock()
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

    def open(self) -> None:
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
        pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] = psycopg_pool.ConnectionPool(
            self.config.conninfo,
            min_size=min(2, self.threads),
            max_size=self.threads,
            kwargs=self._kwargs(),
            configure=self._configure,
            timeout=self.settings.wait,
            open=False,
            name="orderfsm-journal",
        )
        try:
            pool.open(wait=True, timeout=max(CONNECT_TIMEOUT, self.settings.wait))
        except psycopg_pool.PoolTimeout as exc:
            pool.close()
            raise JournalOpenFailed(f"{self.display}: cannot fill the pool: {exc}") from None
        self._pool = pool

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

    def listen(self, timeout: float) -> list[int] | None:
        """Block until changes are announced or ``timeout`` s pass: the order ids
        announced (``[]`` for none), or ``None`` when some may have been missed (the
        first call, after a reconnect, a payload too long to carry them).

        On a connection of its own, LISTENing before the caller catches up, as the
        LISTEN reference page advises; notifications are only a hint.  One caller
        at a time; a journal closed meanwhile has its connection closed here.
        """
        with self._listening:
            try:
                return self._listen(timeout)
            finally:
                if self._closed and self._listener is not None:
                    self._listener.close()
                    self._listener = None

    def _listen(self, timeout: float) -> list[int] | None:
        connection = self._listener
        if connection is None:
            if self._closed:
                raise JournalClosed(f"{self.display} is closed")
            try:
                connection = psycopg.connect(self.config.conninfo, **self._kwargs())
                connection.execute(f"LISTEN {self.channel}")
            except psycopg.Error as exc:
                raise JournalUnavailable(f"{self.display}: {_one_line(exc)}") from None
            self._listener = connection
            return None
        ids: set[int] = set()
        try:
            for note in connection.notifies(timeout=timeout, stop_after=1):
                if not note.payload:
                    return None
                ids.update(int(part) for part in note.payload.split(","))
        except psycopg.Error as exc:
            self._listener = None
            connection.close()
            raise JournalUnavailable(f"{self.display}: {_one_line(exc)}") from None
        return sorted(ids)

    def close(self) -> None:
        self._closed = True
        if self._listening.acquire(blocking=False):  # else its listener closes it
            try:
                listener, self._listener = self._listener, None
                if listener is not None:
                    listener.close()
            finally:
                self._listening.release()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=self.settings.wait)

    @contextmanager
    def _connection(self, deadline: float) -> Iterator[psycopg.Connection[Any]]:
        pool = self._pool
        if pool is None or self._closed:
            raise JournalClosed(f"{self.display} is closed")
        try:
            with pool.connection(timeout=max(deadline - time.monotonic(), 0.001)) as connection:
                yield connection
        except psycopg_pool.PoolTimeout:
            raise JournalUnavailable(f"{self.display}: no connection within the wait") from None
        except psycopg.errors.LockNotAvailable:
            raise
        except psycopg.OperationalError as exc:
            self._recheck(pool)
            raise JournalUnavailable(f"{self.display}: {self._said(exc)}") from None
        except psycopg.Error as exc:
            raise JournalUnavailable(f"{self.display}: {self._said(exc)}") from None

    def _said(self, exc: BaseException) -> str:
        """libpq's message, one line, without the password (a malformed URL is quoted)."""
        return self.config.scrub(_one_line(exc))

    def _recheck(self, pool: psycopg_pool.ConnectionPool[Any]) -> None:
        """After a connection failed, check the idle ones too (in the pool's own workers),
        so a server restart costs one failed delivery per process, not one per connection."""
        if self._checking.acquire(blocking=False):
            try:
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
        also: Also | None = None,
    ) -> Claimed:
        try:
            with self._connection(deadline) as db:
                if also is None:
                    return _claim_on(db, delivery, owner, now, lease, logged, fast=True)
                with db.transaction():
                    # Not waiting for the disk, like the fast claim: the answer's
                    # durable commit flushes the log up to here before any 2xx.
                    db.execute("SET LOCAL synchronous_commit = off")
                    claimed = _claim_on(db, delivery, owner, now, lease, logged)
                    also(db, claimed)
                    return claimed
        except psycopg.errors.LockNotAvailable:
            # Another transaction holds the key (a transactional handler at work).
            ident = self._log_apart(delivery, logged, deadline)
            return Claimed(ident, None, None, busy=True)

    def _log_apart(self, delivery: NewDelivery, logged: int | None, deadline: float) -> int:
        with self._connection(deadline) as db:
            return _log(db, _delivery_params(delivery), logged)

    def read_claim(self, key: str, deadline: float) -> Claim | None:
        return claim_from_row(self._one(READ_CLAIM, (key,), deadline))

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
            return _settle(db, key, attempt, answer, delivery_id, error, now)

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
            db.execute(FINISH, (answer.status, outcome.value, error_text(error), now, delivery_id))

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
            with self._connection(deadline) as db, db.transaction():
                return run_in_transaction(db, DIALECT, delivery, work, owner, now, lease, logged)
        except psycopg.errors.LockNotAvailable:
            ident = self._log_apart(delivery, logged, deadline)
            return Worked(ident, None, None, busy=True)

    def reopen(self, key: str, attempt: int, deadline: float) -> bool:
        with self._connection(deadline) as db:
            return db.execute(REOPEN, (key, attempt)).rowcount == 1

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
            claims = db.execute(PRUNE_CLAIMS, (cutoff, cutoff)).rowcount
            deliveries = db.execute(
                "DELETE FROM orderfsm_deliveries WHERE received_at < %s", (cutoff,)
            ).rowcount
        return claims, deliveries


def _claim_on(
    db: psycopg.Connection[Any],
    delivery: NewDelivery,
    owner: str,
    now: float,
    lease: float,
    logged: int | None,
    fast: bool = False,
) -> Claimed:
    params = _delivery_params(delivery)
    if delivery.key is None:
        return Claimed(_log(db, params, logged, attempt=0), 0, None)
    params.update(owner=owner, now=now, lease_until=now + lease, logged=logged)
    sql = RECLAIM if logged is not None else CLAIM_FAST if fast else CLAIM
    row = db.execute(sql, params).fetchone()
    assert row is not None
    ident = int(row[0]) if row[0] is not None else logged
    assert ident is not None
    if row[1] is not None:
        return Claimed(ident, int(row[1]), None)
    return Claimed(ident, None, claim_from_row(row[2:]))


def _log(
    db: psycopg.Connection[Any],
    params: dict[str, Any],
    logged: int | None,
    *,
    attempt: int | None = None,
    status: int | None = None,
    outcome: str | None = None,
    error: str | None = None,
    finished_at: float | None = None,
) -> int:
    params = {
        **params,
        "attempt": attempt,
        "status": status,
        "outcome": outcome,
        "error": error,
        "finished_at": finished_at,
        "logged": logged,
    }
    row = db.execute(LOG if logged is None else RELOG, params).fetchone()
    assert row is not None
    return int(row[0])


def _settle(
    db: psycopg.Connection[Any],
    key: str | None,
    attempt: int,
    answer: Answer,
    delivery_id: int,
    error: str | None,
    now: float,
) -> bool:
    outcome = decisions.outcome_of(answer).value
    if key is None:
        db.execute(FINISH, (answer.status, outcome, error_text(error), now, delivery_id))
        return True
    keep = decisions.keeps(answer)
    row = db.execute(
        SETTLE,
        {
            "state": "answered" if keep else "released",
            "now": now,
            "status": answer.status if keep else None,
            "body": answer.body if keep else None,
            "content_type": answer.content_type if keep else None,
            "key": key,
            "attempt": attempt,
            "given": answer.status,
            "outcome": outcome,
            "error": error_text(error),
            "id": delivery_id,
        },
    ).fetchone()
    return bool(row and row[0])


def _log_finished(
    db: psycopg.Connection[Any],
    delivery: NewDelivery,
    logged: int | None,
    answer: Answer,
    outcome: Outcome,
    error: str | None,
    now: float,
) -> int:
    return _log(
        db,
        _delivery_params(delivery),
        logged,
        status=answer.status,
        outcome=outcome.value,
        error=error_text(error),
        finished_at=now,
    )


DIALECT = Dialect(_claim_on, _settle, _log_finished)
"""The statements :func:`~transports.journal.base.run_in_transaction` runs on PostgreSQL."""
