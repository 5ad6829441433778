"""The PostgreSQL journal's batches, one statement each: every claim of a batch in one
``INSERT ... SELECT FROM unnest(...) ON CONFLICT``, every answer in one ``UPDATE ...
FROM unnest(...)``, each row's outcome its own, as if each had its statement.

A statement costs far more than a row (psycopg adapts and sends it, the server
binds and starts an executor; measured about 40 us of psycopg and 30 of the
server per statement, against a few per row), so a batch sends one.  The rows
are the same as :mod:`~transports.journal.postgres_sql`'s one-delivery
statements write, decided row by row in SQL: a key taken or not, a duplicate
of an answered claim recorded with its stored answer, an answer fenced by its
attempt.  A key twice in a batch (a duplicate arriving beside its first) or a
delivery without a key goes through the one-delivery statements, after the
set in the same transaction: the second of a key must see the first's claim.

The tables are reached only through their primary keys (``= ANY(array)``,
``ON CONFLICT``), and :data:`BATCH_SETTINGS` turns sequential scans off for the
batches' sessions: a plan made while a table was small (and kept by the
plan cache) must not go on reading the whole table as it grows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from orderfsm.core import Status
from orderfsm.journal import decisions
from transports.journal.base import Claimed, ClaimRequest, SettleRequest
from transports.journal.order_news import news_begin
from transports.journal.orders import LOCK_ROWS, TRACKED
from transports.journal.postgres_sql import claim_on, settle
from transports.journal.sql_shared import CLAIM_COLUMNS, claim_from_row, encode_headers, error_text

if TYPE_CHECKING:
    import psycopg

_PRIOR_COLUMNS = ", ".join("p." + c.strip() for c in CLAIM_COLUMNS.split(","))

_LOCK_ORDERS = LOCK_ROWS.format(
    until="%(done)s",
    now="%(now)s",
    ids="%(orders)b",
    # The claims' rows first; then the orders some instance tracks, asked after the
    # orders' news locks were taken (claim_begin): the others' news stays in the
    # deliveries, for their first track.
    where=f" WHERE (SELECT count(*) FROM taken) >= 0 AND {TRACKED}",
)

_CLAIMED = f"""
WITH i AS (
    SELECT * FROM unnest(%(ord)b::integer[], %(key)b::text[], %(kind)b::text[],
        %(order_id)b::bigint[], %(body)b::bytea[], %(headers)b::text[], %(peer)b::text[],
        %(received_at)b::double precision[], %(replay)b::boolean[])
        AS i(ord, key, kind, order_id, body, headers, peer, received_at, replay)
), prior AS (
    SELECT {CLAIM_COLUMNS} FROM orderfsm_claims WHERE key = ANY(%(key)b::text[])
), taken AS (
    INSERT INTO orderfsm_claims AS c (key, attempt, state, owner, lease_until, claimed_at)
    SELECT key, 1, 'running', %(owner)s, %(lease_until)s, %(now)s FROM i
    ORDER BY key
    ON CONFLICT (key) DO UPDATE SET
        attempt = c.attempt + 1, state = 'running', owner = excluded.owner,
        lease_until = excluded.lease_until, claimed_at = excluded.claimed_at,
        answered_at = NULL, status = NULL, body = NULL, content_type = NULL
    WHERE c.state = 'released' OR (c.state = 'running' AND c.lease_until <= %(now)s)
    RETURNING c.key, c.attempt
), logged AS (
    INSERT INTO orderfsm_deliveries
        (kind, key, order_id, body, headers, peer, received_at, attempt, status, outcome,
         finished_at, replay)
    SELECT i.kind, i.key, i.order_id, i.body, i.headers, i.peer, i.received_at, t.attempt,
        CASE WHEN t.key IS NULL AND p.state = 'answered' THEN p.status END,
        CASE WHEN t.key IS NULL AND p.state = 'answered' THEN 'duplicate' END,
        CASE WHEN t.key IS NULL AND p.state = 'answered' THEN %(now)s END,
        i.replay
    FROM i LEFT JOIN taken AS t ON t.key = i.key LEFT JOIN prior AS p ON p.key = i.key
    ORDER BY i.ord
    RETURNING id, key
)"""
_EACH = """
    i JOIN logged AS l ON l.key = i.key
    LEFT JOIN taken AS t ON t.key = i.key LEFT JOIN prior AS p ON p.key = i.key
ORDER BY i.ord"""

CLAIMS = f"""{_CLAIMED}, locked AS ({_LOCK_ORDERS})
SELECT l.id, t.attempt, {_PRIOR_COLUMNS}, o.*
FROM (SELECT array_agg(order_id), array_agg(status), array_agg(version), array_agg(until)
    FROM locked) AS o,{_EACH}"""
"""Each delivery's claim as :data:`~transports.journal.postgres_sql.CLAIM` makes it
(keys distinct): its record's id, the attempt taken, the row as it was; then the
tracked ones of the ``orders`` locked after the claims, as
:data:`~transports.journal.orders.LOCK_TRACKED` does (their rows in arrays, the same
on every row), for
:func:`~transports.journal.orders.record` to write."""

CLAIMS_ONLY = f"""{_CLAIMED}
SELECT l.id, t.attempt, {_PRIOR_COLUMNS}
FROM{_EACH}"""
""":data:`CLAIMS` for a batch with no order's status to write (a receiver with
``record_orders=False``, or other notifications): it names no table of the orders',
which the role of a receiver that does not record them may lack (every batch then
failed, and went alone)."""

SETTLES = """
WITH i AS (
    SELECT * FROM unnest(%(ord)b::integer[], %(key)b::text[], %(attempt)b::integer[],
        %(state)b::text[], %(status)b::integer[], %(body)b::bytea[], %(content_type)b::text[],
        %(given)b::integer[], %(outcome)b::text[], %(error)b::text[], %(id)b::bigint[])
        AS i(ord, key, attempt, state, status, body, content_type, given, outcome, error, id)
), s AS (
    UPDATE orderfsm_claims AS c SET state = i.state, answered_at = %(now)s, status = i.status,
        body = i.body, content_type = i.content_type
    FROM i
    WHERE c.key = ANY(%(key)b::text[]) AND c.key = i.key AND c.attempt = i.attempt
        AND c.state = 'running'
    RETURNING c.key
), d AS (
    UPDATE orderfsm_deliveries AS d SET status = i.given,
        outcome = CASE WHEN i.key IN (SELECT key FROM s) THEN i.outcome ELSE 'fenced' END,
        error = i.error, finished_at = %(now)s
    FROM i
    WHERE d.id = ANY(%(id)b::bigint[]) AND d.id = i.id
)
SELECT i.key IN (SELECT key FROM s) FROM i ORDER BY i.ord"""
"""Each answer as :data:`~transports.journal.postgres_sql.SETTLE` records it (keys
distinct): recorded, or fenced (another attempt owns the key now)."""


BATCH_SETTINGS = (
    ("lock_timeout", "250"),
    ("enable_seqscan", "off"),
    ("enable_bitmapscan", "off"),
    ("plan_cache_mode", "force_generic_plan"),
)
"""The sessions that run batches (a pool of their own): a row lock waited for
briefly (other batches hold theirs for milliseconds, so a longer one is a
transactional handler's, and the batch's requests go alone rather than all
stall), the tables read through their indexes only, with plans kept (see the
module's docstring).  Set once per connection rather than by ``SET LOCAL`` in
every batch: an answers' batch is then one statement in autocommit, one round
trip where a transaction took three."""

CLAIM_SETTINGS = "SET LOCAL synchronous_commit = off"
"""A claims' batch commits without waiting for the disk (see
:data:`~transports.journal.postgres_sql.CLAIM_FAST`); the answers' is durable."""


def claim_begin(channel: str, orders: Sequence[int]) -> str:
    """The ``BEGIN`` of a claims' batch and the news locks of the orders it tells of
    (:func:`~transports.journal.orders.news_begin`), then :data:`CLAIM_SETTINGS`: one
    round trip, before the claims' statement asks which of them are tracked."""
    return (
        f"{news_begin(channel, orders)}; {CLAIM_SETTINGS}" if orders else f"BEGIN; {CLAIM_SETTINGS}"
    )


def _cursor(db: psycopg.Connection[Any]) -> psycopg.Cursor[Any]:
    """The batches' session's kept cursor (see
    :class:`~transports.journal.postgres_session.BatchConnection`), or a new one."""
    kept = getattr(db, "kept_cursor", None)
    return db.cursor() if kept is None else kept()


class KeptStatements:
    """A batches' session as :func:`~transports.journal.orders.record` sees it: its
    statements go through the session's kept cursor (see :func:`_cursor`), the
    rest to the connection.  Each statement's rows are read, if at all, before the
    next is sent, as on a connection."""

    def __init__(self, db: psycopg.Connection[Any]) -> None:
        self._db = db
        self._cursor = _cursor(db)

    def execute(self, *args: Any, **kwargs: Any) -> psycopg.Cursor[Any]:
        return self._cursor.execute(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def _split(keys: Sequence[str | None]) -> tuple[list[int], list[int]]:
    """The requests the set statement takes (the first of each key), and the others."""
    seen: set[str] = set()
    together, alone = [], []
    for i, key in enumerate(keys):
        if key is None or key in seen:
            alone.append(i)
        else:
            seen.add(key)
            together.append(i)
    return together, alone


def claims(
    db: psycopg.Connection[Any],
    requests: Sequence[ClaimRequest],
    owner: str,
    now: float,
    lease: float,
    orders: Sequence[int],
) -> tuple[list[Claimed], list[tuple[Any, ...]] | None]:
    """Every claim (in the caller's transaction), what each gave, in order; and the
    rows of the tracked ones of ``orders`` (ids, ascending), locked after the claims,
    as :data:`~transports.journal.orders.LOCK_TRACKED` gives them (``None``: not
    locked, no order given or no claim went in the set statement)."""
    deliveries = [request.delivery for request in requests]
    together, alone = _split([d.key for d in deliveries])
    got: dict[int, Claimed] = {}
    locked = None
    if together:
        chosen = [deliveries[i] for i in together]
        cursor = _cursor(db)
        rows = cursor.execute(
            CLAIMS if orders else CLAIMS_ONLY,
            {
                "ord": together,
                "key": [d.key for d in chosen],
                "kind": [d.kind for d in chosen],
                "order_id": [d.order_id for d in chosen],
                "body": [d.body for d in chosen],
                "headers": [encode_headers(d.headers) for d in chosen],
                "peer": [d.peer for d in chosen],
                "received_at": [d.received_at for d in chosen],
                "replay": [d.replay for d in chosen],
                "owner": owner,
                "now": now,
                "lease_until": now + lease,
                "done": Status.DONE.value,
                "orders": list(orders),
            },
        ).fetchall()
        assert len(rows) == len(together)
        for i, row in zip(together, rows, strict=True):
            if row[1] is not None:
                got[i] = Claimed(int(row[0]), int(row[1]), None)
            else:
                got[i] = Claimed(int(row[0]), None, claim_from_row(row[2:12]))
        if orders:
            ids, statuses, versions, untils = rows[0][12:16]
            locked = list(zip(ids or (), statuses or (), versions or (), untils or (), strict=True))
    for i in alone:
        got[i] = claim_on(db, deliveries[i], owner, now, lease, None)
    return [got[i] for i in range(len(requests))], locked


def one_statement(requests: Sequence[SettleRequest]) -> bool:
    """Whether :func:`settles` sends these answers in one statement (no key twice, every
    one with a key): atomic alone, so it needs no transaction around it."""
    return not _split([request.key for request in requests])[1]


def settles(
    db: psycopg.Connection[Any], requests: Sequence[SettleRequest], now: float
) -> list[bool]:
    """Every answer's write (in the caller's transaction, or alone in autocommit when
    :func:`one_statement`): whether each was recorded (``False``: fenced), in order."""
    together, alone = _split([request.key for request in requests])
    got: dict[int, bool] = {}
    if together:
        chosen = [requests[i] for i in together]
        keeps = [decisions.keeps(r.answer) for r in chosen]
        kept = list(zip(chosen, keeps, strict=True))
        cursor = _cursor(db)
        rows = cursor.execute(
            SETTLES,
            {
                "ord": together,
                "key": [r.key for r in chosen],
                "attempt": [r.attempt for r in chosen],
                "state": ["answered" if keep else "released" for keep in keeps],
                "status": [r.answer.status if k else None for r, k in kept],
                "body": [r.answer.body if k else None for r, k in kept],
                "content_type": [r.answer.content_type if k else None for r, k in kept],
                "given": [r.answer.status for r in chosen],
                "outcome": [decisions.outcome_of(r.answer).value for r in chosen],
                "error": [error_text(r.error) for r in chosen],
                "id": [r.delivery_id for r in chosen],
                "now": now,
            },
        ).fetchall()
        assert len(rows) == len(together)
        got.update((i, bool(row[0])) for i, row in zip(together, rows, strict=True))
    for i in alone:
        r = requests[i]
        got[i] = settle(db, r.key, r.attempt, r.answer, r.delivery_id, r.error, now)
    return [got[i] for i in range(len(requests))]
