"""The journal's tables, as numbered migrations for SQLite and PostgreSQL alike.

One text per table for both databases, the types filled in per dialect, so the
two schemas cannot drift apart; each version's statements run once, in order,
when a store opens an older database.
"""

from __future__ import annotations

from transports.journal.settled_sql import lapse_migration
from transports.journal.settled_sql import migration as settled_migration

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
    an expired call (``lapse_owed``) and its index.  (PostgreSQL's statistics sample
    is tuning, not a version: :mod:`transports.journal.postgres_tuning`.)
    """
    types = _TYPES[dialect]
    return {
        1: [statement.format(**types) for statement in _SCHEMA],
        2: [statement.format(**types) for statement in _ORDERS],
        3: settled_migration(dialect),
        4: lapse_migration(dialect),
    }
