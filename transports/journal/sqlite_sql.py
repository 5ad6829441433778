"""The SQLite journal's statements on a connection: the claim and its record, the
answer and the delivery's outcome, pruning.  The group commit and the transactions
are :mod:`transports.journal.sqlite`'s, the connections
:mod:`transports.journal.sqlite_connections`'.
"""

from __future__ import annotations

import sqlite3

from orderfsm.journal import Answer, NewDelivery, Outcome, decisions
from transports.journal.base import Claimed
from transports.journal.sql_shared import (
    CLAIM_COLUMNS,
    PRUNABLE_CLAIM,
    Dialect,
    claim_from_row,
    encode_headers,
    error_text,
)

# The answers of the store this journal replaces (``SqliteStore``, before the
# journal) become answered claims, so an upgrade forgets nothing.
ADOPT_OLD_ANSWERS = """
INSERT OR IGNORE INTO orderfsm_claims
    (key, attempt, state, owner, lease_until, claimed_at, answered_at, status, body, content_type)
SELECT key, 1, 'answered', 'migrated', stored_at, stored_at, stored_at, status, body, content_type
FROM webhook_answers
"""

TAKE = """
INSERT INTO orderfsm_claims (key, attempt, state, owner, lease_until, claimed_at)
VALUES (?, 1, 'running', ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET
    attempt = attempt + 1, state = 'running', owner = excluded.owner,
    lease_until = excluded.lease_until, claimed_at = excluded.claimed_at,
    answered_at = NULL, status = NULL, body = NULL, content_type = NULL
WHERE state = 'released' OR (state = 'running' AND lease_until <= ?)
RETURNING attempt
"""

SETTLE = """
UPDATE orderfsm_claims SET state = ?, answered_at = ?, status = ?, body = ?, content_type = ?
WHERE key = ? AND attempt = ? AND state = 'running'
"""

LOG = """
INSERT INTO orderfsm_deliveries
    (kind, key, order_id, body, headers, peer, received_at, attempt, status, outcome,
     error, finished_at, replay)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

RELOG = """
UPDATE orderfsm_deliveries SET attempt = coalesce(?, attempt), status = ?, outcome = ?,
    error = ?, finished_at = ?
WHERE id = ?
"""

FINISH = """
UPDATE orderfsm_deliveries SET status = ?, outcome = ?, error = ?, finished_at = ? WHERE id = ?
"""

REOPEN = """
UPDATE orderfsm_claims SET state = 'released', status = NULL, body = NULL, content_type = NULL
WHERE key = ? AND attempt = ? AND state = 'answered'
"""

READ_CLAIM = f"SELECT {CLAIM_COLUMNS} FROM orderfsm_claims WHERE key = ?"


PRUNE_CLAIMS_CHUNK = (
    "DELETE FROM orderfsm_claims WHERE key IN (SELECT key FROM orderfsm_claims WHERE "
    + PRUNABLE_CLAIM.format(m="?")
    + " LIMIT ?)"
)
PRUNE_DELIVERIES_CHUNK = (
    "DELETE FROM orderfsm_deliveries WHERE id IN"
    " (SELECT id FROM orderfsm_deliveries WHERE received_at < ? LIMIT ?)"
)


def log(
    db: sqlite3.Connection,
    delivery: NewDelivery,
    logged: int | None,
    attempt: int | None,
    answer: Answer | None,
    outcome: Outcome | None,
    error: str | None,
    now: float,
) -> int:
    status = None if answer is None else answer.status
    state = None if outcome is None else outcome.value
    finished = None if outcome is None else now
    if logged is not None:
        db.execute(RELOG, (attempt, status, state, error_text(error), finished, logged))
        return logged
    cursor = db.execute(
        LOG,
        (
            delivery.kind,
            delivery.key,
            delivery.order_id,
            delivery.body,
            encode_headers(delivery.headers),
            delivery.peer,
            delivery.received_at,
            attempt,
            status,
            state,
            error_text(error),
            finished,
            int(delivery.replay),
        ),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def claim(
    db: sqlite3.Connection,
    delivery: NewDelivery,
    owner: str,
    now: float,
    lease: float,
    logged: int | None,
) -> Claimed:
    if delivery.key is None:
        return Claimed(log(db, delivery, logged, 0, None, None, None, now), 0, None)
    row = db.execute(TAKE, (delivery.key, owner, now + lease, now, now)).fetchone()
    if row is not None:
        attempt = int(row[0])
        return Claimed(log(db, delivery, logged, attempt, None, None, None, now), attempt, None)
    claim = claim_from_row(db.execute(READ_CLAIM, (delivery.key,)).fetchone())
    stored = claim.answer if claim is not None else None
    outcome = Outcome.DUPLICATE if stored is not None else None
    return Claimed(log(db, delivery, logged, None, stored, outcome, None, now), None, claim)


def settle(
    db: sqlite3.Connection,
    key: str | None,
    attempt: int,
    answer: Answer,
    delivery_id: int,
    error: str | None,
    now: float,
) -> bool:
    recorded = True
    if key is not None:
        values: tuple[object, ...]
        if decisions.keeps(answer):
            values = ("answered", now, answer.status, answer.body, answer.content_type)
        else:
            values = ("released", now, None, None, None)
        recorded = db.execute(SETTLE, (*values, key, attempt)).rowcount == 1
    outcome = decisions.outcome_of(answer) if recorded else Outcome.FENCED
    db.execute(FINISH, (answer.status, outcome.value, error_text(error), now, delivery_id))
    return recorded


def log_finished(
    db: sqlite3.Connection,
    delivery: NewDelivery,
    logged: int | None,
    answer: Answer,
    outcome: Outcome,
    error: str | None,
    now: float,
) -> int:
    return log(db, delivery, logged, None, answer, outcome, error, now)


DIALECT = Dialect(claim, settle, log_finished)
"""The statements :func:`~transports.journal.sql_shared.run_in_transaction` runs on SQLite."""
