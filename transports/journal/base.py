"""What every journal backend provides: a handful of synchronous, thread-safe operations.

Each operation is one short unit of work on the database (one transaction,
often one statement).  They are plain synchronous code on a DB-API
connection, so the async journal drives them through worker threads on
asyncio and trio alike, and synchronous callers (a WSGI view, a script) call
them directly.  The decisions they carry out are in ``orderfsm.journal``.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import attrs

from orderfsm.journal import (
    Answer,
    Claim,
    ClaimState,
    Delivery,
    DeliveryFilter,
    NewDelivery,
    Outcome,
    decisions,
)
from transports.journal.orders import Note
from transports.journal.settled_sql import lapse_migration
from transports.journal.settled_sql import migration as settled_migration

T = TypeVar("T")


@attrs.frozen
class Claimed:
    """What trying to claim a delivery's key gave."""

    delivery_id: int
    attempt: int | None
    """The attempt number taken, or ``None`` when someone else has the key."""
    claim: Claim | None
    """When not taken: the row as it was seen (``None`` if it could not be seen yet)."""
    busy: bool = False
    """The key's row was locked by another transaction past the wait (PostgreSQL)."""


@attrs.frozen
class Work:
    """A transactional handler's part of the claim's transaction."""

    handle: Callable[[Any, int], tuple[Answer, str | None]]
    """Given the open connection and the attempt, the answer and an error text; its
    writes are kept only with a 2xx."""
    facts: Callable[[Any], object] | None = None
    """What the delivery says whatever the handler makes of it (the order's status):
    written after the claim, and again if a failed attempt rolls the claim back, so
    a handler that refuses a refund (a 4xx Xsolla never retries) or fails does not
    keep it from the trackers, as with a plain handler, whose claim commits first."""


@attrs.frozen
class Worked:
    """What running work inside the claim's transaction gave."""

    delivery_id: int
    answer: Answer | None
    """The answer recorded (2xx, 4xx) or given (5xx); ``None`` when the key was not taken."""
    claim: Claim | None = None
    """When not taken: the row as seen, for :func:`orderfsm.journal.judge`."""
    busy: bool = False
    """The key's row was locked by another transaction past the wait (PostgreSQL)."""


@attrs.frozen
class Dialect:
    """A SQL backend's statements on a connection already inside a transaction."""

    claim: Callable[[Any, NewDelivery, str, float, float, int | None], Claimed]
    """``(db, delivery, owner, now, lease, logged)``: record the delivery, try to take its key."""
    settle: Callable[[Any, str | None, int, Answer, int, str | None, float], bool]
    """``(db, key, attempt, answer, delivery_id, error, now)``: record the answer, fenced."""
    log: Callable[[Any, NewDelivery, int | None, Answer, Outcome, str | None, float], int]
    """``(db, delivery, logged, answer, outcome, error, now)``: record a finished delivery."""


def run_in_transaction(
    db: Any,
    dialect: Dialect,
    delivery: NewDelivery,
    work: Work,
    owner: str,
    now: float,
    lease: float,
    logged: int | None,
) -> Worked:
    """Claim, run ``work`` and record its answer inside a transaction the caller opened
    and commits: the store's own, or an application's (Django's, so the ORM's writes
    commit with the claim).  Only SQL savepoints, so it nests in either.

    ``work``'s handler's writes are kept only with a 2xx; on a 5xx nothing of the
    attempt stays but the record of the delivery and ``work``'s facts.
    """
    db.execute("SAVEPOINT orderfsm_claim")
    try:
        claimed = dialect.claim(db, delivery, owner, now, lease, logged)
        if work.facts is not None:
            work.facts(db)
        if claimed.attempt is None:
            db.execute("RELEASE SAVEPOINT orderfsm_claim")
            return Worked(claimed.delivery_id, None, claimed.claim)
        db.execute("SAVEPOINT orderfsm_handler")
        answer, error = work.handle(db, claimed.attempt)
        if not answer.ok:
            db.execute("ROLLBACK TO SAVEPOINT orderfsm_handler")
        db.execute("RELEASE SAVEPOINT orderfsm_handler")
        if decisions.keeps(answer):
            dialect.settle(
                db, delivery.key, claimed.attempt, answer, claimed.delivery_id, error, now
            )
            db.execute("RELEASE SAVEPOINT orderfsm_claim")
            return Worked(claimed.delivery_id, answer)
    except BaseException:
        with contextlib.suppress(Exception):  # the caller rolls the whole transaction back
            db.execute("ROLLBACK TO SAVEPOINT orderfsm_claim")
            db.execute("RELEASE SAVEPOINT orderfsm_claim")
        raise
    db.execute("ROLLBACK TO SAVEPOINT orderfsm_claim")
    db.execute("RELEASE SAVEPOINT orderfsm_claim")
    if work.facts is not None:
        work.facts(db)
    ident = dialect.log(db, delivery, logged, answer, decisions.outcome_of(answer), error, now)
    return Worked(ident, answer)


class Store(Protocol):
    """One backend.  Every method may raise :class:`~orderfsm.errors.JournalUnavailable`."""

    display: str
    kind: str
    """``memory``, ``sqlite`` or ``postgresql``."""
    blocking: bool
    """Whether calls wait on I/O (run them in a worker thread) or not (memory)."""
    threads: int
    """How many calls may usefully run at once (the connection pool's size)."""

    def open(self, patience: float | None = None) -> None:
        """Connect and create or migrate the schema; raises ``JournalOpenFailed`` subclasses.
        ``patience``: seconds it may wait for a database busy with another process's
        start (``None``: the store's own, generous for a start-up)."""

    def close(self) -> None: ...

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
        """Record the delivery and try to take its key (insert first, never check first).

        A delivery without a key is only recorded (``attempt`` 0: it always
        runs).  When the key is answered, the delivery is recorded as a
        duplicate with the stored answer in the same transaction.  ``logged``
        is the id of this delivery's record when it tries again after waiting.
        ``notes`` (orders' statuses a webhook told) are recorded in the same
        transaction, whatever the claim gives: if that fails, nothing is kept.
        """

    def read_claim(self, key: str, deadline: float) -> Claim | None: ...

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
        """Record the answer of ``attempt`` (or release the key on a 5xx), fenced.

        Returns False, and changes nothing of the claim, when a newer
        attempt took the key over.
        """

    def renew(self, key: str, attempt: int, until: float, deadline: float) -> bool:
        """Keep ``attempt``'s running claim until ``until`` (its handler still runs),
        fenced: False, and nothing changed, once another attempt took the key over."""

    def finish(
        self,
        delivery_id: int,
        answer: Answer,
        outcome: Outcome,
        error: str | None,
        now: float,
        deadline: float,
    ) -> None:
        """Write what became of a delivery that did not (or no longer) own its key."""

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
        """Claim, run ``work`` and record its answer in one transaction.

        Whatever instant the process dies, the application's writes and the
        answer are both committed or neither.  A failed work's delivery is
        still recorded, in a transaction of its own.
        """

    def reopen(self, key: str, attempt: int, deadline: float) -> bool:
        """Release an answered claim for a forced replay, if ``attempt`` still holds it."""

    def deliveries(self, selection: DeliveryFilter, deadline: float) -> list[Delivery]: ...

    def delivery(self, delivery_id: int, deadline: float) -> Delivery | None: ...

    def claims(self, keys: Sequence[str], deadline: float) -> dict[str, Claim]: ...

    def prune(self, cutoff: float, deadline: float) -> tuple[int, int]:
        """Delete claims and deliveries older than ``cutoff``; returns how many of each."""


class SqlStore(Store, Protocol):
    """A backend with tables of its own (SQLite, PostgreSQL): other tables of the
    journal (the fleet tracker's orders) run their units of work through it."""

    def write(self, work: Callable[[Any], T], deadline: float, durable: bool = True) -> T:
        """Run ``work(connection)`` in a write transaction; committed once it returns."""

    def read(self, work: Callable[[Any], T], deadline: float) -> T: ...


@attrs.frozen
class ClaimRequest:
    """One delivery's claim, for :meth:`Batches.claim_many`."""

    delivery: NewDelivery
    notes: Sequence[Note] = ()


@attrs.frozen
class SettleRequest:
    """One answer to record, for :meth:`Batches.settle_many`."""

    key: str | None
    attempt: int
    answer: Answer
    delivery_id: int
    error: str | None


@runtime_checkable
class Batches(Protocol):
    """A backend that writes several deliveries' claims (or answers) in one transaction:
    on PostgreSQL each statement and each commit costs far more CPU than a row, so
    deliveries arriving together share them.  Each returns one result per request,
    in order, or ``None`` when the batch met a lock it must not wait on (then each
    goes alone); a failure of the database raises, for the whole batch."""

    def claim_many(
        self,
        requests: Sequence[ClaimRequest],
        owner: str,
        now: float,
        lease: float,
        deadline: float,
    ) -> list[Claimed] | None: ...

    def settle_many(
        self, requests: Sequence[SettleRequest], now: float, deadline: float
    ) -> list[bool] | None: ...


# --- SQL shared by the SQL backends -------------------------------------------------

_TYPES = {
    "sqlite": {"real": "REAL", "blob": "BLOB", "bigint": "INTEGER", "bool": "INTEGER",
               "false": "0", "identity": "INTEGER PRIMARY KEY"},
    "postgresql": {"real": "DOUBLE PRECISION", "blob": "BYTEA", "bigint": "BIGINT",
                   "bool": "BOOLEAN", "false": "FALSE",
                   "identity": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"},
}  # fmt: skip

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS orderfsm_schema (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS orderfsm_claims (
        key TEXT PRIMARY KEY,
        attempt INTEGER NOT NULL,
        state TEXT NOT NULL,
        owner TEXT NOT NULL,
        lease_until {real} NOT NULL,
        claimed_at {real} NOT NULL,
        answered_at {real},
        status INTEGER,
        body {blob},
        content_type TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS orderfsm_claims_claimed ON orderfsm_claims (claimed_at)",
    """CREATE TABLE IF NOT EXISTS orderfsm_deliveries (
        id {identity},
        kind TEXT NOT NULL,
        key TEXT,
        order_id {bigint},
        body {blob} NOT NULL,
        headers TEXT NOT NULL,
        peer TEXT,
        received_at {real} NOT NULL,
        attempt INTEGER,
        status INTEGER,
        outcome TEXT,
        error TEXT,
        finished_at {real},
        replay {bool} NOT NULL DEFAULT {false}
    )""",
    "CREATE INDEX IF NOT EXISTS orderfsm_deliveries_received ON orderfsm_deliveries (received_at)",
    "CREATE INDEX IF NOT EXISTS orderfsm_deliveries_order ON orderfsm_deliveries (order_id)",
]


_ORDERS = [
    # One row per order every instance of a fleet follows (orderfsm.journal.orders).
    """CREATE TABLE IF NOT EXISTS orderfsm_orders (
        order_id {bigint} PRIMARY KEY,
        status TEXT,
        version INTEGER NOT NULL,
        until TEXT NOT NULL,
        user_id TEXT,
        tracking {bool} NOT NULL,
        tracked_at {real},
        owner TEXT,
        lease_until {real} NOT NULL,
        fence INTEGER NOT NULL,
        updated_at {real} NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS orderfsm_orders_tracking ON orderfsm_orders (tracking)",
    # ``seq`` orders commits only where writers are serialized (SQLite); PostgreSQL
    # instances read by (order_id, version), which no late commit can skip.
    """CREATE TABLE IF NOT EXISTS orderfsm_changes (
        seq {identity},
        order_id {bigint} NOT NULL,
        version INTEGER NOT NULL,
        status TEXT NOT NULL,
        previous TEXT,
        source TEXT NOT NULL,
        at {real} NOT NULL,
        UNIQUE (order_id, version)
    )""",
]


def migrations(dialect: str) -> dict[int, list[str]]:
    """Each schema version's statements, in ``sqlite`` or ``postgresql`` types.

    Version 1: claims and deliveries (the webhook inbox); version 2: orders and
    their changes (the fleet tracker); version 3: how far each order's ``on_settled``
    calls were made (:mod:`transports.journal.settled_sql`); version 4: which orders owe
    an expired call (``lapse_owed``) and its index.
    """
    types = _TYPES[dialect]
    return {
        1: [statement.format(**types) for statement in _SCHEMA],
        2: [statement.format(**types) for statement in _ORDERS],
        3: settled_migration(dialect),
        4: lapse_migration(dialect),
    }


PRUNABLE_CLAIM = """claimed_at < {m}
  AND (CASE WHEN state = 'running' THEN lease_until
       ELSE coalesce(answered_at, claimed_at) END) < {m}"""
"""Mirrors :func:`orderfsm.journal.prunable` (answered_at, when set, is never before claimed_at)."""
PRUNE_CLAIMS = "DELETE FROM orderfsm_claims WHERE " + PRUNABLE_CLAIM
RENEW_CLAIM = (
    "UPDATE orderfsm_claims SET lease_until = {m}"
    " WHERE key = {m} AND attempt = {m} AND state = 'running'"
)
"""Mirrors :func:`orderfsm.journal.renewed`: fenced by the attempt, late or not."""


def renew_claim(db: Any, dialect: str, key: str, attempt: int, until: float) -> bool:
    """Extend a running claim's lease (a webhook handler's or an ``on_settled`` call's),
    fenced by its attempt: False once another took the key over (or it was answered)."""
    mark = "%s" if dialect == "postgresql" else "?"
    cursor = db.execute(RENEW_CLAIM.format(m=mark), (until, key, attempt))
    return bool(cursor.rowcount == 1)


def renew_in(store: SqlStore, key: str, attempt: int, until: float, deadline: float) -> bool:
    """:meth:`Store.renew` for both SQL stores: :func:`renew_claim` in a write."""
    work = functools.partial(renew_claim, dialect=store.kind, key=key, attempt=attempt, until=until)
    return store.write(work, deadline)


_FILTERS: tuple[tuple[str, Callable[[DeliveryFilter], Any]], ...] = (
    ("order_id = {m}", lambda s: s.order_id),
    ("kind = {m}", lambda s: s.kind),
    ("outcome = {m}", lambda s: None if s.outcome is None else s.outcome.value),
    ("received_at >= {m}", lambda s: s.since),
    ("received_at < {m}", lambda s: s.until),
)


def filter_sql(selection: DeliveryFilter, mark: str) -> tuple[str, list[Any]]:
    """The WHERE clause of a delivery listing (the same test as the memory backend's)."""
    where = [c.format(m=mark) for c, value in _FILTERS if value(selection) is not None]
    args = [value(selection) for _, value in _FILTERS if value(selection) is not None]
    if selection.unfinished:
        where.append("outcome IS NULL")
    return (" WHERE " + " AND ".join(where)) if where else "", args


# --- rows <-> records, shared by the SQL backends ---------------------------------------

CLAIM_COLUMNS = (
    "key, attempt, state, owner, lease_until, claimed_at, answered_at, status, body, content_type"
)
DELIVERY_COLUMNS = (
    "id, kind, key, order_id, body, headers, peer, received_at, attempt, status, outcome, "
    "error, finished_at, replay"
)


def claim_from_row(row: Sequence[Any] | None) -> Claim | None:
    if row is None or row[0] is None:
        return None
    key, attempt, state, owner, lease_until, claimed_at, answered_at, status, body, ctype = row
    answer = Answer(int(status), bytes(body or b""), ctype) if status is not None else None
    return Claim(
        key,
        int(attempt),
        ClaimState(state),
        owner,
        float(lease_until),
        float(claimed_at),
        None if answered_at is None else float(answered_at),
        answer,
    )


def delivery_from_row(row: Sequence[Any]) -> Delivery:
    (ident, kind, key, order_id, body, headers, peer, received_at, attempt, status, outcome) = row[
        :11
    ]
    error, finished_at, replay = row[11:14]
    return Delivery(
        id=int(ident),
        kind=kind,
        key=key,
        order_id=None if order_id is None else int(order_id),
        body=bytes(body),
        headers=decode_headers(headers),
        peer=peer,
        received_at=float(received_at),
        attempt=None if attempt is None else int(attempt),
        status=None if status is None else int(status),
        outcome=None if outcome is None else Outcome(outcome),
        error=error,
        finished_at=None if finished_at is None else float(finished_at),
        replay=bool(replay),
    )


def encode_headers(headers: Sequence[tuple[str, str]]) -> str:
    return json.dumps([list(pair) for pair in headers])


def decode_headers(text: str) -> tuple[tuple[str, str], ...]:
    return tuple((str(name), str(value)) for name, value in json.loads(text))


MAX_ERROR_TEXT = 8000
"""Error texts (tracebacks) are cut to this many characters."""


def error_text(error: str | None) -> str | None:
    """A handler's error as stored: bounded, and without NUL (PostgreSQL's text refuses
    it, and an exception can quote a player's input)."""
    if error is None:
        return None
    error = error.replace("\x00", "\\x00")
    if len(error) <= MAX_ERROR_TEXT:
        return error
    return error[: MAX_ERROR_TEXT // 2] + "\n...\n" + error[-MAX_ERROR_TEXT // 2 :]
