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
process's transaction is rolled back when its connection drops.  How the
store reaches the server, and what its failures mean, is
:mod:`~transports.journal.postgres_pools`'s.

``pip install 'orderfsm[postgres]'``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from orderfsm.errors import JournalClosed, JournalOpenFailed
from orderfsm.journal import (
    Answer,
    Claim,
    Delivery,
    DeliveryFilter,
    JournalSettings,
    NewDelivery,
    Outcome,
    PostgresConfig,
)
from transports.journal import readiness
from transports.journal.base import Claimed, ClaimRequest, SettleRequest, Work, Worked
from transports.journal.order_news import news_begin
from transports.journal.orders import CHANNEL, Note, channel_for, record
from transports.journal.postgres_listener import PostgresListener
from transports.journal.sql_shared import (
    CLAIM_COLUMNS,
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

try:
    import psycopg
    import psycopg.errors
    import psycopg_pool  # noqa: F401  (postgres_pools' need, checked here for the advice)
except ImportError as exc:  # pragma: no cover - depends on the install
    raise JournalOpenFailed(
        "the PostgreSQL journal needs psycopg: pip install 'orderfsm[postgres]'"
    ) from exc

from transports.journal import postgres_batch as batch
from transports.journal import postgres_sql as sql
from transports.journal.postgres_name import PostgresNameLock
from transports.journal.postgres_pools import PostgresPools
from transports.journal.postgres_session import transaction

logger = logging.getLogger("orderfsm.journal")

T = TypeVar("T")
R = TypeVar("R")


class PostgresStore:
    kind = "postgresql"
    blocking = True

    def __init__(self, config: PostgresConfig, settings: JournalSettings | None = None) -> None:
        self.config = config
        self.settings = settings or JournalSettings()
        self._pools = PostgresPools(config, self.settings)
        self._connection = self._pools.connection
        self.display = self._pools.display
        self.threads = self._pools.threads
        self._listeners: set[PostgresListener] = set()
        self.channel = CHANNEL
        """Where changes of this journal's orders are announced (set on open)."""

    def open(self, patience: float | None = None) -> None:
        """``patience`` is not used: connecting is bounded by ``connect_timeout``."""
        if not self._pools.opened:
            self.channel = channel_for(self._pools.open())

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
        if self._pools.closed:
            raise JournalClosed(f"{self.display} is closed")
        listener = PostgresListener(
            self._pools.connect,
            self.channel,
            self.display,
            self.settings.wait,
            self._pools.said,
            self._listeners.discard,
        )
        self._listeners.add(listener)
        return listener

    def name_lock(self, name: str) -> PostgresNameLock:
        """The lock of an instance name, on a connection of its own (opened when first
        taken), closed by the tracker that holds it."""
        return PostgresNameLock(
            self._pools.connect,
            name,
            self.channel,
            self.display,
            self._pools.said,
        )

    def close(self) -> None:
        self._pools.closed = True
        for listener in tuple(self._listeners):
            listener.close()  # or its wait does, when it ends
        self._pools.close()

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
                begin = news_begin(self.channel, [note.order_id for note in notes])
                with transaction(db, begin):
                    claimed = sql.send_claim(db, delivery, owner, now, lease, logged, fast=True)
                    record(
                        db, self.kind, notes, now, self.channel, tracked_only=True, news_locked=True
                    )
                    return claimed()
        except psycopg.errors.LockNotAvailable:
            # Another transaction holds the key (a transactional handler at work), or
            # the order's news lock (its first track): busy, a 5xx, Xsolla retries.
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
                kept = batch.KeptStatements(db)
                record(kept, self.kind, notes, now, self.channel, locked, tracked_only=True)
            return claimed

        begin = batch.claim_begin(self.channel, orders)
        return self._together(len(requests), begin, write, deadline)

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
                logger.warning(
                    "a batch of %d failed (%s); each goes alone",
                    count,
                    exc,
                    extra={"event": "journal.batch_split", "count": count},
                )
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

    def ready(self, deadline: float, record_orders: bool) -> None:
        """One statement: the journal's table read, and whether this session may write
        (:func:`~transports.journal.readiness.postgres_probe`)."""
        probe = readiness.postgres_probe(record_orders)
        readiness.postgres_verdict(self._one(probe, (), deadline), self.display)

    def claims(self, keys: Sequence[str], deadline: float) -> dict[str, Claim]:
        sql = f"SELECT {CLAIM_COLUMNS} FROM orderfsm_claims WHERE key = ANY(%s)"
        with self._connection(deadline) as db:
            rows = db.execute(sql, (list(keys),)).fetchall()
        found = [claim_from_row(row) for row in rows]
        return {claim.key: claim for claim in found if claim is not None}

    def prune(self, cutoff: float, deadline: float) -> tuple[int, int]:
        """In chunks of :data:`PRUNE_CHUNK` rows of each table, each statement a
        transaction of its own (:func:`prune_in_chunks`): they lock only the old rows
        they delete, which no delivery writes."""
        params = {"cutoff": cutoff, "size": PRUNE_CHUNK}

        def chunk(until: float) -> tuple[int, int]:
            with self._connection(until) as db:
                claims = db.execute(sql.PRUNE_CLAIMS_CHUNK, params).rowcount
                return claims, db.execute(sql.PRUNE_DELIVERIES_CHUNK, params).rowcount

        return prune_in_chunks(chunk, deadline, PRUNE_CHUNK)
