"""The PostgreSQL journal's statements on a connection: the claim, its record and the
read of the row as it was in one statement; the answer and the delivery's outcome in
another.  A batch's claims and answers are :mod:`~transports.journal.postgres_batch`'s.
The connections and the pools are :mod:`transports.journal.postgres_pools`'s, the transactions
:mod:`transports.journal.postgres_session`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from orderfsm.journal import Answer, NewDelivery, Outcome, decisions
from transports.journal.base import Claimed, SettleRequest
from transports.journal.sql_shared import (
    CLAIM_COLUMNS,
    PRUNABLE_CLAIM,
    Dialect,
    claim_from_row,
    encode_headers,
    error_text,
)

if TYPE_CHECKING:
    import psycopg

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

_PRUNABLE = PRUNABLE_CLAIM.format(m="%(cutoff)s")
# A chunk's rows are picked through the index of its time (not a scan past the rows kept,
# nor a semi-join, which the planner made a scan of the whole table), and found by
# their keys; the condition is checked again as each row is deleted, so a row
# written meanwhile (a key claimed again) stays.
PRUNE_CLAIMS_CHUNK = f"""
DELETE FROM orderfsm_claims WHERE key = ANY(ARRAY(
    SELECT key FROM orderfsm_claims WHERE {_PRUNABLE} ORDER BY claimed_at LIMIT %(size)s
)) AND {_PRUNABLE}"""
PRUNE_DELIVERIES_CHUNK = """
DELETE FROM orderfsm_deliveries WHERE id = ANY(ARRAY(
    SELECT id FROM orderfsm_deliveries WHERE received_at < %(cutoff)s
    ORDER BY received_at LIMIT %(size)s
)) AND received_at < %(cutoff)s"""


def delivery_params(delivery: NewDelivery) -> dict[str, Any]:
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


def claim_on(
    db: psycopg.Connection[Any],
    delivery: NewDelivery,
    owner: str,
    now: float,
    lease: float,
    logged: int | None,
    fast: bool = False,
) -> Claimed:
    return send_claim(db, delivery, owner, now, lease, logged, fast)()


def send_claim(
    db: psycopg.Connection[Any],
    delivery: NewDelivery,
    owner: str,
    now: float,
    lease: float,
    logged: int | None,
    fast: bool = False,
) -> Callable[[], Claimed]:
    """Send the claim; the function returned reads what it gave (in a pipeline,
    whatever is sent before that read shares its round trip)."""
    params = delivery_params(delivery)
    if delivery.key is None:
        ident = log(db, params, logged, attempt=0)
        return lambda: Claimed(ident, 0, None)
    params.update(owner=owner, now=now, lease_until=now + lease, logged=logged)
    sql = RECLAIM if logged is not None else CLAIM_FAST if fast else CLAIM
    cursor = db.execute(sql, params)

    def read() -> Claimed:
        row = cursor.fetchone()
        assert row is not None
        ident = int(row[0]) if row[0] is not None else logged
        assert ident is not None
        if row[1] is not None:
            return Claimed(ident, int(row[1]), None)
        return Claimed(ident, None, claim_from_row(row[2:]))

    return read


def log(
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
        "error": error_text(error),
        "finished_at": finished_at,
        "logged": logged,
    }
    row = db.execute(LOG if logged is None else RELOG, params).fetchone()
    assert row is not None
    return int(row[0])


def settle(
    db: psycopg.Connection[Any],
    key: str | None,
    attempt: int,
    answer: Answer,
    delivery_id: int,
    error: str | None,
    now: float,
) -> bool:
    return send_settle(db, SettleRequest(key, attempt, answer, delivery_id, error), now)()


def send_settle(
    db: psycopg.Connection[Any], request: SettleRequest, now: float
) -> Callable[[], bool]:
    """Send the answer's write; the function returned reads whether it was recorded
    (``False``: fenced, another attempt owns the key now)."""
    key, answer, error = request.key, request.answer, request.error
    outcome = decisions.outcome_of(answer).value
    if key is None:
        db.execute(FINISH, (answer.status, outcome, error_text(error), now, request.delivery_id))
        return lambda: True
    keep = decisions.keeps(answer)
    cursor = db.execute(
        SETTLE,
        {
            "state": "answered" if keep else "released",
            "now": now,
            "status": answer.status if keep else None,
            "body": answer.body if keep else None,
            "content_type": answer.content_type if keep else None,
            "key": key,
            "attempt": request.attempt,
            "given": answer.status,
            "outcome": outcome,
            "error": error_text(error),
            "id": request.delivery_id,
        },
    )

    def read() -> bool:
        row = cursor.fetchone()
        return bool(row and row[0])

    return read


def log_finished(
    db: psycopg.Connection[Any],
    delivery: NewDelivery,
    logged: int | None,
    answer: Answer,
    outcome: Outcome,
    error: str | None,
    now: float,
) -> int:
    return log(
        db,
        delivery_params(delivery),
        logged,
        status=answer.status,
        outcome=outcome.value,
        error=error,
        finished_at=now,
    )


DIALECT = Dialect(claim_on, settle, log_finished)
"""The statements :func:`~transports.journal.sql_shared.run_in_transaction` runs on PostgreSQL."""
