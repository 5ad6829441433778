"""The journal in a Django project's own database, the transactional path on Django's connection.

Which connection writes what, and why: the ORM can write only through
Django's own connection (``connections[alias]``), and Django must know about
the transaction (``atomic``, its savepoints, ``on_commit`` hooks,
``needs_rollback``).  So the journal comes to Django's connection, not the
other way round: the transactional handler's claim, the handler (the ORM) and
the answer run in one ``transaction.atomic(durable=True)`` block, through
Django's cursor, and commit together before the view answers.  A second
connection could not give that: the grant and the claim would be two
transactions, and on SQLite the second writer would wait for the first's
lock.  Everything else (the plain handler's claim and answer, reading,
pruning in a background thread) goes through the journal's own connections
to the same database: they hold no transaction across the application's
code, and a background thread must not borrow a request's connection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from django.db import DatabaseError, connections, transaction

from orderfsm.errors import JournalConfigError, JournalUnavailable
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
from transports.journal import store_for
from transports.journal.base import Claimed, SqlStore, Work, Worked
from transports.journal.orders import CHANNEL, Note
from transports.journal.sql_shared import Dialect, run_in_transaction

T = TypeVar("T")


class DjangoStore:
    """A :class:`~transports.journal.Store` whose transactional path runs on Django's
    connection ``alias``; ``inner`` (the journal's own store on the same database)
    does the rest."""

    blocking = True

    def __init__(self, alias: str, inner: SqlStore, settings: JournalSettings) -> None:
        self.alias = alias
        self.inner = inner
        self.settings = settings
        self.kind = inner.kind
        self.display = f"{inner.display} (Django database {alias!r})"
        self.threads = inner.threads
        self.dialect = _dialect(inner.kind)

    @property
    def channel(self) -> str:
        """Where the orders' changes are announced (PostgreSQL): the inner store's."""
        return str(getattr(self.inner, "channel", CHANNEL))

    def open(self, patience: float | None = None) -> None:
        self.inner.open(patience)

    def close(self) -> None:
        self.inner.close()

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
        connection = connections[self.alias]
        try:
            # durable: the outermost block, so leaving it commits, before the answer.
            with (
                transaction.atomic(using=self.alias, durable=True),
                connection.cursor() as cursor,
            ):
                if self.kind == "postgresql":
                    # A duplicate meeting a claim still at work waits at most `wait`.
                    wait_ms = max(int(self.settings.wait * 1000), 1)
                    cursor.execute(f"SET LOCAL lock_timeout = {wait_ms}")
                statements = _Statements(cursor)
                return run_in_transaction(
                    statements, self.dialect, delivery, work, owner, now, lease, logged
                )
        except DatabaseError as exc:
            raise JournalUnavailable(f"{self.display}: {exc}") from None

    # --- the rest: the journal's own connections --------------------------------------

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
        return self.inner.claim(delivery, owner, now, lease, deadline, logged, notes)

    def read_claim(self, key: str, deadline: float) -> Claim | None:
        return self.inner.read_claim(key, deadline)

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
        return self.inner.settle(key, attempt, answer, delivery_id, error, now, deadline)

    def finish(
        self,
        delivery_id: int,
        answer: Answer,
        outcome: Outcome,
        error: str | None,
        now: float,
        deadline: float,
    ) -> None:
        self.inner.finish(delivery_id, answer, outcome, error, now, deadline)

    def renew(self, key: str, attempt: int, until: float, deadline: float) -> bool:
        return self.inner.renew(key, attempt, until, deadline)

    def reopen(self, key: str, attempt: int, deadline: float) -> bool:
        return self.inner.reopen(key, attempt, deadline)

    def deliveries(self, selection: DeliveryFilter, deadline: float) -> list[Delivery]:
        return self.inner.deliveries(selection, deadline)

    def delivery(self, delivery_id: int, deadline: float) -> Delivery | None:
        return self.inner.delivery(delivery_id, deadline)

    def ready(self, deadline: float, record_orders: bool) -> None:
        self.inner.ready(deadline, record_orders)

    def claims(self, keys: Sequence[str], deadline: float) -> dict[str, Claim]:
        return self.inner.claims(keys, deadline)

    def prune(self, cutoff: float, deadline: float) -> tuple[int, int]:
        return self.inner.prune(cutoff, deadline)

    # --- the fleet tracker's tables (SqlStore), on the journal's own connections ---------

    def write(self, work: Callable[[Any], T], deadline: float, durable: bool = True) -> T:
        return self.inner.write(work, deadline, durable)

    def read(self, work: Callable[[Any], T], deadline: float) -> T:
        return self.inner.read(work, deadline)


class _Statements:
    """Django's cursor with a DB-API connection's ``execute`` (returning the cursor),
    which is what the backends' statements call; errors stay Django's, so Django
    knows the connection saw them."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Any = None) -> Any:
        self._cursor.execute(sql, params)
        return self._cursor


def _dialect(kind: str) -> Dialect:
    if kind == "sqlite":
        from transports.journal.sqlite_sql import DIALECT

        return DIALECT
    if kind == "postgresql":
        from transports.journal.postgres_sql import DIALECT as POSTGRES

        return POSTGRES
    raise JournalConfigError(f"the journal cannot live in a {kind} database")


def own_store(alias: str, settings: JournalSettings) -> SqlStore:
    """The journal's own store on Django's database ``alias`` (SQLite or PostgreSQL)."""
    connection = connections[alias]
    if connection.vendor == "sqlite":
        name = str(connection.settings_dict["NAME"])
        if name == ":memory:" or name.startswith("file:"):
            raise JournalConfigError(
                f"Django database {alias!r} is in memory: the journal needs a file"
            )
        return cast(SqlStore, store_for(name, settings))
    if connection.vendor == "postgresql":
        from transports.journal.postgres import PostgresStore

        conninfo = _postgres_conninfo(connection.get_connection_params())
        return PostgresStore(PostgresConfig(conninfo), settings)
    raise JournalConfigError(
        f"Django database {alias!r} is {connection.vendor}: the journal lives in SQLite or "
        "PostgreSQL; set ORDERFSM_WEBHOOK['STORE'] to a journal URL (plain handler only)"
    )


def _postgres_conninfo(params: dict[str, Any]) -> str:
    """libpq's keywords out of Django's connection parameters (which also carry psycopg's
    own: cursor_factory, context, prepare_threshold...)."""
    import psycopg
    import psycopg.pq

    keywords = {d.keyword.decode() for d in psycopg.pq.Conninfo.get_defaults()}
    kept = {
        k: v for k, v in params.items() if k in keywords and isinstance(v, (str, int)) and v != ""
    }
    return psycopg.conninfo.make_conninfo("", **kept)
