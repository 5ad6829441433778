"""What the SQL backends (SQLite, PostgreSQL, Django's connection) share: the
transactional handler's path, the claim statements both write the same way, and
rows turned into the journal's records.  Each backend's own statements are its
``*_sql`` module's.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from orderfsm.errors import JournalUnavailable
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
from transports.journal.base import Claimed, SqlStore, Work, Worked


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


PRUNABLE_CLAIM = """claimed_at < {m}
  AND (CASE WHEN state = 'running' THEN lease_until
       ELSE coalesce(answered_at, claimed_at) END) < {m}"""
"""Mirrors :func:`orderfsm.journal.prunable` (answered_at, when set, is never before claimed_at)."""
PRUNE_CHUNK = 2000
"""Rows of each table deleted per transaction when pruning: tens of ms on either
database (measured on PostgreSQL, 1M old rows of each table: a chunk's median 6 ms
for claims and 11 ms for deliveries, the slowest 0.4 s, against a statement timeout of
``wait`` + 1 s; SQLite's write lock, the whole file's, is held as briefly)."""
PRUNE_CHUNK_WAIT = 2.0
"""Seconds one chunk of a prune waits (for SQLite's write lock, a pooled connection)
before it tries again."""
PRUNE_PAUSES = (0.05, 1.0)
"""The first and the longest pause after a failed chunk, doubling: a database that
refuses at once (stopped, its connections all taken) is not asked again and again
for the rest of the round, from a thread beside the deliveries."""


def in_chunks(chunk: Callable[[float], bool], deadline: float) -> None:
    """``chunk(its deadline)``, a transaction of its own, again while it says more is left
    and ``deadline`` is not past (what is left goes at the next round).  A chunk the
    database refuses is tried again after a pause (:data:`PRUNE_PAUSES`), until the
    deadline, which then raises the refusal."""
    pause, longest = PRUNE_PAUSES
    while True:
        # Each chunk waits as a delivery would, not the whole prune's time: a SQLite
        # batch it shares is led by a delivery's thread, which waits for it.
        try:
            more = chunk(min(deadline, time.monotonic() + PRUNE_CHUNK_WAIT))
        except JournalUnavailable:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            time.sleep(min(pause, left))
            pause = min(2 * pause, longest)
            continue
        if not more or time.monotonic() > deadline:
            return


def prune_in_chunks(
    chunk: Callable[[float], tuple[int, int]], deadline: float, size: int = PRUNE_CHUNK
) -> tuple[int, int]:
    """A prune of both SQL stores: ``chunk(its deadline)`` deletes at most ``size`` old
    rows of each table in a transaction of its own, again until neither table gives
    ``size`` or ``deadline`` is past (:func:`in_chunks`).  An hour of
    deliveries deleted at once held SQLite's write lock, every process's claims and
    answers, for over a second, and on PostgreSQL ran past the statement timeout from
    about 2M rows: cancelled, every hour again, while the tables grew until the disk
    was full."""
    claims = deliveries = 0

    def step(until: float) -> bool:
        nonlocal claims, deliveries
        more_claims, more_deliveries = chunk(until)
        claims, deliveries = claims + more_claims, deliveries + more_deliveries
        return max(more_claims, more_deliveries) >= size

    in_chunks(step, deadline)
    return claims, deliveries


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
