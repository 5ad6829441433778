"""Journal test helpers: every backend's URL as a fixture, and an app with a ``grants`` table."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from support_postgres import postgres_server

BACKENDS = ["sqlite", "postgresql"]
ALL_BACKENDS = ["memory", *BACKENDS]


def url_for(backend: str, tmp_path: Path) -> str:
    if backend == "memory":
        return "memory:"
    if backend == "sqlite":
        return str(tmp_path / "journal.sqlite3")
    return postgres_server().url()


on_databases = pytest.mark.parametrize("backend", BACKENDS)
"""The test runs on SQLite and on PostgreSQL; ``url_for(backend, tmp_path)`` is its journal."""
on_every_backend = pytest.mark.parametrize("backend", ALL_BACKENDS)
"""The test runs in memory, on SQLite and on PostgreSQL."""


def is_postgres(url: str) -> bool:
    return url.startswith("postgres")


def dialect_of(url: str) -> str:
    """The journal's SQL dialect for ``url``."""
    return "postgresql" if is_postgres(url) else "sqlite"


def begin_writing(db: Any, url: str) -> str:
    """Open a write transaction on a plain connection (SQLite's write lock taken at once,
    as the journal's writers take it); the dialect, for the journal's SQL."""
    db.execute("BEGIN" if is_postgres(url) else "BEGIN IMMEDIATE")
    return dialect_of(url)


def connect(url: str) -> Any:
    """A plain DB-API connection to the journal's database (autocommit)."""
    if is_postgres(url):
        import psycopg

        return psycopg.connect(url, autocommit=True)
    return sqlite3.connect(url, isolation_level=None, timeout=10)


class PausedBefore:
    """A connection that waits for ``go`` before running the statement starting with
    ``prefix``: an interleaving inside a unit of work, on the real statements."""

    def __init__(self, db: Any, prefix: str) -> None:
        self.db, self.prefix = db, prefix
        self.reached, self.go = threading.Event(), threading.Event()

    def execute(self, query: str, *args: Any) -> Any:
        if query.startswith(self.prefix):
            self.reached.set()
            self.go.wait(10)
        return self.db.execute(query, *args)


def track_orders(url: str, order_ids: list[int], store: Any) -> None:
    """Track these orders (goal ``paid``), as an instance of the fleet does: a receiver
    then writes their news as changes in its claims' transactions.  ``store``: the
    journal's, whose channel (PostgreSQL's) keys the orders' news locks."""
    from orderfsm.core import Status
    from transports.journal import orders

    channel = str(getattr(store, "channel", orders.CHANNEL))
    db = connect(url)
    try:
        dialect = begin_writing(db, url)
        entries = [(order_id, Status.PAID, None) for order_id in order_ids]
        orders.track_many(db, dialect, entries, time.time(), channel=channel)
        db.execute("COMMIT")
    finally:
        db.close()


def mark(url: str) -> str:
    return "%s" if is_postgres(url) else "?"


def history(url: str, order_id: int) -> list[str]:
    """The order's changes in the journal, in order (what the retention left of them)."""
    db = connect(url)
    try:
        query = f"SELECT status FROM orderfsm_changes WHERE order_id = {order_id} ORDER BY version"
        return [str(row[0]) for row in db.execute(query).fetchall()]
    finally:
        db.close()


def deliveries_of(url: str, order_id: int) -> list[tuple[str, int | None, float]]:
    """The order's webhook deliveries (kind, the status answered, received at), in order."""
    db = connect(url)
    try:
        query = (
            "SELECT kind, status, received_at FROM orderfsm_deliveries"
            f" WHERE order_id = {order_id} ORDER BY id"
        )
        return [(str(k), s, float(at)) for k, s, at in db.execute(query).fetchall()]
    finally:
        db.close()


def leased(url: str, order_id: int) -> bool:
    """Someone holds the order's lease (in tests where one tracker follows it)."""
    db, m = connect(url), mark(url)
    try:
        query = "SELECT 1 FROM orderfsm_orders WHERE order_id = {m} AND owner IS NOT NULL"
        query += " AND lease_until > {m}"
        return bool(db.execute(query.format(m=m), (order_id, time.time())).fetchall())
    finally:
        db.close()


def create_grants(url: str) -> None:
    """The application's own table, in the journal's database.  No unique key on
    purpose: a grant written twice must show, not fail."""
    db = connect(url)
    try:
        db.execute("CREATE TABLE IF NOT EXISTS grants (order_id BIGINT NOT NULL, sku TEXT)")
    finally:
        db.close()


def grants(url: str) -> list[int]:
    """Every granted order id, with repeats (there must be none)."""
    db = connect(url)
    try:
        return [int(row[0]) for row in db.execute("SELECT order_id FROM grants").fetchall()]
    finally:
        db.close()


class DatabaseHold:
    """The test holding the journal's database so a receiver cannot record its answer."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.db = connect(url)
        if is_postgres(url):
            self.db.execute("BEGIN")
            self.db.execute("SELECT 1 FROM orderfsm_claims WHERE key = %s FOR UPDATE", (key,))
        else:
            self.db.execute("BEGIN EXCLUSIVE")

    async def blocking_someone(self) -> None:
        """On PostgreSQL, wait until a receiver's statement waits on the held row."""
        if not is_postgres(self.url):
            return  # SQLite cannot show it; the exclusive lock makes any record wait
        watcher = connect(self.url)
        try:
            waiting = "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            with anyio.fail_after(20):
                while True:
                    if watcher.execute(waiting).fetchall():
                        break
                    await anyio.sleep(0.01)
        finally:
            watcher.close()

    def release(self) -> None:
        self.db.execute("ROLLBACK")
        self.db.close()


def old_backlog(db: Any, count: int, at: float, delete_takes: float = 0.0025) -> None:
    """``count`` answered claims and their deliveries, received at ``at``, written into a
    PostgreSQL journal's tables, each delivery's delete slowed to ``delete_takes``
    seconds (a trigger): a backlog a prune takes chunks and rounds to get through."""
    db.execute(
        "INSERT INTO orderfsm_deliveries (kind, key, order_id, body, headers, received_at)"
        " SELECT 'order_paid', 'order_paid:' || g, g, '', '[]', %s"
        " FROM generate_series(1, %s) g",
        (at, count),
    )
    db.execute(
        "INSERT INTO orderfsm_claims (key, attempt, state, owner, lease_until, claimed_at,"
        " answered_at, status, body) SELECT 'order_paid:' || g, 1, 'answered', 'gone', %s,"
        " %s, %s, 204, '' FROM generate_series(1, %s) g",
        (at, at, at, count),
    )
    db.execute(
        "CREATE FUNCTION slow_delete() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" PERFORM pg_sleep({delete_takes}); RETURN OLD; END $$"
    )
    db.execute(
        "CREATE TRIGGER slow_delete BEFORE DELETE ON orderfsm_deliveries"
        " FOR EACH ROW EXECUTE FUNCTION slow_delete()"
    )


def backlog_left(db: Any, at: float) -> int:
    """How many rows of :func:`old_backlog`'s (received at ``at``) are left."""
    left = "SELECT (SELECT count(*) FROM orderfsm_deliveries WHERE received_at <= %s)"
    left += " + (SELECT count(*) FROM orderfsm_claims WHERE claimed_at <= %s)"
    return int(db.execute(left, (at, at)).fetchone()[0])


def on_update(db: Any, name: str, table: str, body: str) -> None:
    """A PostgreSQL trigger running ``body`` as a row of ``table`` is updated (dropped by
    the test): the database itself slow or refusing, no stand-in of ours."""
    db.execute(
        f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" {body} RETURN NEW; END $$"
    )
    db.execute(
        f"CREATE TRIGGER {name} BEFORE UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()"
    )


def on_answer(db: Any, name: str, body: str) -> None:
    """``body`` run as an answer is written on a claim row."""
    on_update(db, name, "orderfsm_claims", f"IF NEW.state <> 'running' THEN {body} END IF;")


def refuse_answers(url: str, key: str, *, passing: bool = False) -> None:
    """Make the database itself refuse to record an answer for ``key`` (a trigger):
    the statement is wrong for good, not the database passing through trouble.
    ``passing``: it fails as passing trouble does (retried), not as a wrong
    statement: on PostgreSQL the error of a lock waited for past ``lock_timeout``;
    SQLite has no RAISE but a constraint's, so a runtime error of the engine (a
    malformed JSON) stands for its lock or I/O trouble.  Renewals and claims of
    the key (whose rows stay ``running``) pass either way."""
    db = connect(url)
    try:
        if is_postgres(url):
            refusal = "RAISE EXCEPTION 'answer refused'"
            if passing:
                refusal += " USING ERRCODE = 'lock_not_available'"
            on_answer(db, "refuse_answer", f"IF NEW.key = '{key}' THEN {refusal}; END IF;")
        else:
            refusal = "json('answer held')" if passing else "RAISE(ABORT, 'answer refused')"
            db.execute(
                "CREATE TRIGGER refuse_answer BEFORE UPDATE ON orderfsm_claims"
                f" WHEN NEW.state <> 'running' AND NEW.key = '{key}'"
                f" BEGIN SELECT {refusal}; END"
            )
    finally:
        db.close()


def accept_answers(url: str) -> None:
    """Undo :func:`refuse_answers`."""
    db = connect(url)
    try:
        on_claims = " ON orderfsm_claims" if is_postgres(url) else ""
        db.execute(f"DROP TRIGGER refuse_answer{on_claims}")
    finally:
        db.close()
