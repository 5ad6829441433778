"""A durable :class:`~transports.webhook.store.SeenStore` on the standard library's sqlite3.

Every call runs in a worker thread (``anyio.to_thread``) so the event loop
never waits on the disk, and a lock makes the single connection safe to use
from whichever worker thread runs the call.  Each answer is committed before
``put`` returns, so a restart cannot make the receiver run a handler twice.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from types import TracebackType

import anyio
import anyio.to_thread

from orderfsm.errors import OrderFsmError
from transports.webhook.answers import WebhookAnswer

_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_answers (
    key          TEXT PRIMARY KEY,
    status       INTEGER NOT NULL,
    body         BLOB NOT NULL,
    content_type TEXT,
    stored_at    REAL NOT NULL
)
"""


class StoreError(OrderFsmError):
    """The SQLite store could not read or write."""


class SqliteStore:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        # Called with the lock held, in a worker thread.
        if self._closed:
            raise StoreError("the store is closed")
        if self._connection is None:
            connection = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=FULL")
                connection.execute(_SCHEMA)
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    def _get(self, key: str) -> WebhookAnswer | None:
        with self._lock:
            row = (
                self._connect()
                .execute(
                    "SELECT status, body, content_type FROM webhook_answers WHERE key = ?", (key,)
                )
                .fetchone()
            )
        if row is None:
            return None
        return WebhookAnswer(int(row[0]), bytes(row[1]), row[2])

    def _put(self, key: str, answer: WebhookAnswer) -> None:
        with self._lock:
            self._connect().execute(
                "INSERT OR IGNORE INTO webhook_answers VALUES (?, ?, ?, ?, ?)",
                (key, answer.status, answer.body, answer.content_type, time.time()),
            )

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            connection, self._connection = self._connection, None
            if connection is not None:
                connection.close()

    async def get(self, key: str) -> WebhookAnswer | None:
        try:
            return await anyio.to_thread.run_sync(self._get, key)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc

    async def put(self, key: str, answer: WebhookAnswer) -> None:
        try:
            await anyio.to_thread.run_sync(self._put, key, answer)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._close)

    async def __aenter__(self) -> SqliteStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
