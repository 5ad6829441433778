"""Journal test helpers: every backend's URL as a fixture, and an app with a ``grants`` table."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

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


def connect(url: str) -> Any:
    """A plain DB-API connection to the journal's database (autocommit)."""
    if is_postgres(url):
        import psycopg

        return psycopg.connect(url, autocommit=True)
    return sqlite3.connect(url, isolation_level=None, timeout=10)


def mark(url: str) -> str:
    return "%s" if is_postgres(url) else "?"


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
