"""``open_journal(url)``: the backend a URL names (see ``orderfsm.journal.config``)."""

from __future__ import annotations

import os

from orderfsm.journal import (
    JournalSettings,
    MemoryConfig,
    PostgresConfig,
    SqliteConfig,
    parse_store_url,
)
from transports.journal.base import Store
from transports.journal.journal import Journal
from transports.journal.memory import MemoryStore

StoreUrl = str | os.PathLike[str] | None


def store_for(url: StoreUrl, settings: JournalSettings | None = None) -> Store:
    settings = settings or JournalSettings()
    config = parse_store_url(None if url is None else os.fspath(url))
    if isinstance(config, MemoryConfig):
        return MemoryStore()
    if isinstance(config, SqliteConfig):
        from transports.journal.sqlite import SqliteStore

        return SqliteStore(config.path, threads=settings.pool_size, read_timeout=settings.wait)
    assert isinstance(config, PostgresConfig)
    from transports.journal.postgres import PostgresStore

    return PostgresStore(config, settings)


def open_journal(
    url: StoreUrl = None,
    settings: JournalSettings | None = None,
    *,
    owner: str | None = None,
) -> Journal:
    """A journal on the store ``url`` names, not yet connected.

    Connect with ``async with open_journal(url) as journal:`` (or ``await
    journal.open()``; ``journal.sync.open()`` from synchronous code): start-up
    problems raise :class:`~orderfsm.errors.JournalOpenFailed` and friends
    there.  A bad URL raises :class:`~orderfsm.errors.BadStoreUrl` here.
    """
    settings = settings or JournalSettings()
    return Journal(store_for(url, settings), settings, owner=owner)
