"""PostgreSQL's wake-ups for the fleet tracker, heard and read on the event loop.

The listening connection's socket is waited on by the loop itself
(``anyio.wait_readable``: asyncio and trio), and the changes a notification
announces are read on that same connection through libpq's non-blocking
calls, so a delivery reaches the tracker with no worker thread: a thread
blocked in the LISTEN, then a pooled connection in another thread for the
read, cost four thread hand-overs per wake-up (each a wake of the loop or of
a thread, and a wait for the GIL on a busy process), about half of the
tracker's CPU per delivery and a tail that grew with the machine's load.

Connecting is blocking and rare (the first wait, after a failure): a worker
thread does it.  Only the read of a notification's orders runs here; the
reads of every followed order (a reconnect, the backstop) use the pool.

The connection sets TCP keepalives: an idle LISTEN sends nothing, so a
connection that died silently (a host gone, a NAT's or a firewall's table
flushed) would otherwise never fail, and its tracker would hear the others
only through the backstop read, for good.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.to_thread
import attrs

from orderfsm.core import Status
from orderfsm.errors import JournalClosed, JournalUnavailable
from orderfsm.journal.orders import ChangeRow

try:
    import psycopg
    from psycopg import pq
except ImportError:  # pragma: no cover - the store itself says what to install
    pass

READ = b"orderfsm_changes_of"
"""The listening connection's prepared read: these orders' changes past their versions."""
READ_SQL = (
    "PREPARE orderfsm_changes_of (bigint[], integer[]) AS"
    " SELECT c.order_id, c.version, c.status, c.previous, c.source, c.at"
    " FROM unnest($1, $2) AS k(order_id, after)"
    " JOIN orderfsm_changes c ON c.order_id = k.order_id AND c.version > k.after"
    " ORDER BY c.order_id, c.version"
)


KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}
"""libpq's keepalive settings for the listening connection, each unless the URL sets
its own: a dead connection is noticed after about 11 s of silence (5 s, then 3
probes 2 s apart) and the listener reconnects and catches up; the backstop read
covers that while.  Each probe is a few bytes, one connection per tracker."""
_SOCKET_OPTIONS = (
    ("keepalives_idle", "TCP_KEEPIDLE"),
    ("keepalives_interval", "TCP_KEEPINTVL"),
    ("keepalives_count", "TCP_KEEPCNT"),
)


def keepalives(connection: psycopg.Connection[Any]) -> dict[str, int]:
    """:data:`KEEPALIVES`, with the values the connection's own URL set instead."""
    given = {o.keyword.decode(): o.val for o in connection.pgconn.info}
    return {
        key: default if given.get(key) is None else int(given[key] or b"0")
        for key, default in KEEPALIVES.items()
    }


def keep_alive(connection: psycopg.Connection[Any]) -> None:
    """Set :func:`keepalives` on the connection's socket, as libpq does at connect for
    the settings a URL gives (a Unix socket has none: left alone)."""
    chosen = keepalives(connection)
    # A duplicate of libpq's descriptor: the same socket, closed here without closing it.
    with socket.socket(fileno=os.dup(connection.pgconn.socket)) as sock:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1 if chosen["keepalives"] else 0)
        if not chosen["keepalives"]:
            return
        for key, name in _SOCKET_OPTIONS:
            option = getattr(socket, name, None)
            if option is not None:  # not on every platform (macOS names the first otherwise)
                sock.setsockopt(socket.IPPROTO_TCP, option, chosen[key])


@attrs.frozen
class Heard:
    """What one wait heard."""

    order_ids: list[int] | None
    """The orders announced (``[]``: none before the timeout); ``None``: some may have
    been missed (a new connection, a payload too long to carry them)."""
    changes: list[ChangeRow] | None = None
    """Their changes past the cursors given, read at once (``None``: not read)."""


class PostgresListener:
    """One LISTENing connection, used by one task at a time on an event loop.

    ``connect`` makes a connection (blocking: called in a worker thread); the
    store closes the listener with itself.
    """

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        channel: str,
        display: str,
        wait: float,
        said: Callable[[BaseException], str],
        closed: Callable[[PostgresListener], None] = lambda listener: None,
    ) -> None:
        self._connect = connect
        self._on_close = closed
        self.channel = channel
        self.display = display
        self._said = said
        """libpq's message of an error, one line, without the password."""
        self.patience = wait
        """Seconds a read may take before the connection is given up."""
        self._connection: psycopg.Connection[Any] | None = None
        self._in_use = False
        self.closed = False

    def close(self) -> None:
        """Close the connection (not while a wait runs on it: a loop waiting on a
        closed socket would never wake; the tracker stops its follower first)."""
        self.closed = True
        self._on_close(self)
        if not self._in_use:
            self._drop()

    def fileno(self) -> int | None:
        """The listening connection's socket (``None`` while it has none): to see the
        keepalives the kernel holds for it."""
        connection = self._connection
        return None if connection is None else int(connection.pgconn.socket)

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _open(self) -> psycopg.Connection[Any]:
        connection: psycopg.Connection[Any] = self._connect()
        try:
            keep_alive(connection)
            connection.execute(f"LISTEN {self.channel}")
            connection.execute(READ_SQL)
        except BaseException:
            connection.close()
            raise
        return connection

    async def wait(self, within: float, cursors: Mapping[int, int] | None) -> Heard:
        """Until changes are announced or ``within`` s pass; with ``cursors``, the
        announced orders among them are read past their cursors on this connection."""
        if self._in_use:
            raise RuntimeError("one wait at a time on a journal's listener")
        self._in_use = True
        try:
            return await self._wait(within, cursors)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            self._drop()
            raise JournalUnavailable(f"{self.display}: {self._said(exc)}") from None
        except BaseException:
            # Cancelled mid-read, say: the connection's state is unknown; a new one
            # catches up (``Heard(None)``).
            self._drop()
            raise
        finally:
            self._in_use = False
            if self.closed:
                self._drop()

    async def _wait(self, within: float, cursors: Mapping[int, int] | None) -> Heard:
        if self.closed:
            raise JournalClosed(f"{self.display} is closed")
        connection = self._connection
        if connection is None:
            self._connection = await anyio.to_thread.run_sync(self._open)
            return Heard(None)
        pgconn = connection.pgconn
        ids = _announced(pgconn)
        if ids == []:
            with anyio.move_on_after(within):
                # Until something is heard: a "read everything" (None) ends the wait
                # too, or the next notification's ids would replace it.
                while ids == []:
                    await anyio.wait_readable(pgconn.socket)
                    pgconn.consume_input()
                    ids = _announced(pgconn)
        if ids is None or cursors is None or not ids:
            return Heard(ids)
        targets = [(i, cursors[i]) for i in ids if i in cursors]
        if not targets:
            return Heard(ids, [])
        with anyio.fail_after(self.patience):
            return Heard(ids, await self._read(pgconn, targets))

    async def _read(self, pgconn: Any, targets: list[tuple[int, int]]) -> list[ChangeRow]:
        order_ids = "{" + ",".join(str(i) for i, _ in targets) + "}"
        versions = "{" + ",".join(str(v) for _, v in targets) + "}"
        pgconn.send_query_prepared(READ, [order_ids.encode(), versions.encode()])
        while pgconn.flush():
            await anyio.wait_writable(pgconn.socket)
        rows: list[ChangeRow] = []
        while True:
            pgconn.consume_input()
            while pgconn.is_busy():
                await anyio.wait_readable(pgconn.socket)
                pgconn.consume_input()
            result = pgconn.get_result()
            if result is None:
                return rows
            if result.status != pq.ExecStatus.TUPLES_OK:
                message = (result.error_message or b"").decode(errors="replace")
                raise JournalUnavailable(f"{self.display}: {message.strip()}")
            rows += _changes(result)


def _announced(pgconn: Any) -> list[int] | None:
    """The order ids of the notifications received so far (``None``: read everything:
    an empty payload, or one that is not ours, a ``NOTIFY`` by hand or by another
    version, which must not end the tracker)."""
    ids: set[int] = set()
    everything = False
    while (note := pgconn.notifies()) is not None:
        parts = note.extra.split(b",") if note.extra else ()
        if parts and all(part.isdigit() and len(part) <= 19 for part in parts):
            ids.update(int(part) for part in parts)
        else:
            everything = True
    return None if everything else sorted(ids)


def _changes(result: Any) -> list[ChangeRow]:
    value = result.get_value
    rows: list[ChangeRow] = []
    for r in range(result.ntuples):
        previous = value(r, 3)
        rows.append(
            ChangeRow(
                int(value(r, 0)),
                int(value(r, 1)),
                Status(value(r, 2).decode()),
                None if previous is None else Status(previous.decode()),
                value(r, 4).decode(),
                float(value(r, 5)),
            )
        )
    return rows
