"""The SQLite journal's wake-up across processes: another connection's commit, seen
by ``PRAGMA data_version`` moving, without a socket.

Kept apart from the store (:mod:`transports.journal.sqlite`) because it is not
one of the store's units of work: it is the fleet tracker's wait for news
(:meth:`~transports.journal.order_log.OrderLog.wait_for_news`), on a
connection of its own, blocking a thread for as long as nothing is committed,
and it must be closed without waiting for that thread.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from orderfsm.errors import JournalClosed
from transports.journal.fork_gate import GATE
from transports.journal.sqlite_connections import connect, unavailable

T = TypeVar("T")

WATCH_INTERVAL = 0.004
"""Seconds between two looks at ``PRAGMA data_version`` while waiting for a commit."""


class CommitWatcher:
    """One connection that watches the file's commits, for one caller at a time."""

    def __init__(self, path: str, display: str, read_timeout: float) -> None:
        self.path = path
        self.display = display
        self.read_timeout = read_timeout
        self._connection: sqlite3.Connection | None = None
        self._watching = threading.Lock()
        self._closed = False

    def wait(
        self,
        seen: int | None,
        timeout: float,
        then: Callable[[sqlite3.Connection], T] | None = None,
    ) -> tuple[int, T | None]:
        """See :meth:`~transports.journal.sqlite.SqliteStore.wait_for_commit`; a watcher
        closed meanwhile has its connection closed here."""
        with self._watching:
            try:
                return self._wait(seen, timeout, then)
            finally:
                if self._closed and self._connection is not None:
                    with GATE.held():
                        self._connection.close()
                    self._connection = None

    def _wait(
        self, seen: int | None, timeout: float, then: Callable[[sqlite3.Connection], T] | None
    ) -> tuple[int, T | None]:
        """Each look holds the fork gate, not the whole wait: a fork waits for one look."""
        connection = self._connection
        if connection is None:
            if self._closed:
                raise JournalClosed(f"{self.display} is closed")
            try:
                with GATE.held():
                    connection = connect(self.path, self.display, self.read_timeout)
            except sqlite3.Error as exc:
                raise unavailable(self.display, exc) from None
            self._connection = connection
        end = time.monotonic() + timeout
        try:
            while not self._closed:
                with GATE.held():
                    version = int(connection.execute("PRAGMA data_version").fetchone()[0])
                    if seen is not None and version != seen and then is not None:
                        return version, then(connection)
                if seen is None or version != seen or time.monotonic() >= end:
                    return version, None
                time.sleep(WATCH_INTERVAL)
        except sqlite3.Error as exc:
            self._connection = None
            with GATE.held():
                connection.close()
            raise unavailable(self.display, exc) from None
        raise JournalClosed(f"{self.display} is closed")

    def close(self) -> None:
        """Close the connection now, unless a caller is waiting on it: it closes it then."""
        self._closed = True
        if self._watching.acquire(blocking=False):
            try:
                connection, self._connection = self._connection, None
                if connection is not None:
                    with GATE.held():
                        connection.close()
            finally:
                self._watching.release()

    def hand_over(self) -> sqlite3.Connection | None:
        """In a forked child: the parent's connection, taken away (the store decides its
        fate), and the caller's lock anew (a waiting thread of the parent's held it)."""
        self._watching = threading.Lock()
        connection, self._connection = self._connection, None
        return connection
