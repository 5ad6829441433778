"""The journal's orders for async code: the fleet tracker's one way to them.

Every call is one unit of work in a worker thread (the journal's own limiter,
bounded by its wait), so both event loops run the same SQL.  Waiting for the
next change (``wait_for_news``): PostgreSQL's LISTEN is waited on by the loop
itself, which reads the announced changes on that connection
(:mod:`~transports.journal.postgres_listener`); SQLite's ``data_version`` is
watched every few ms in a thread of its own.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, cast

import anyio
import anyio.to_thread
import attrs

from orderfsm.core import Status
from orderfsm.errors import JournalError
from orderfsm.journal.orders import ChangeRow, Lapse, OrderRow
from transports.journal import order_leases as leases
from transports.journal import order_reads as reads
from transports.journal import orders as sql
from transports.journal.base import SqlStore
from transports.journal.journal import Journal
from transports.journal.orders import Note

if TYPE_CHECKING:
    from transports.journal.postgres_listener import PostgresListener


@attrs.frozen
class News:
    """What a wait for news found."""

    everything: bool = False
    """Something may have been missed (the first wait, a reconnect): reread every order."""
    order_ids: tuple[int, ...] | None = None
    """The orders announced (PostgreSQL); ``None``: any (SQLite saw a commit)."""
    quiet: bool = False
    """Nothing came before the timeout."""
    changes: list[ChangeRow] | None = None
    """The news past the cursors given, read already (``None``: not read)."""


class OrderLog:
    """The orders of one journal (SQLite or PostgreSQL: the memory journal has no fleet)."""

    def __init__(
        self,
        journal: Journal,
        *,
        poll: float | None = None,
        owner: str | None = None,
        fresh: bool = False,
    ) -> None:
        store = journal.store
        if store.kind not in ("sqlite", "postgresql"):
            raise JournalError(
                f"{journal.display}: a fleet of trackers needs a SQLite or PostgreSQL journal"
            )
        self.journal = journal
        self.dialect = store.kind
        self.owner = owner or journal.sync.owner
        """This instance's name in the leases (see :mod:`~transports.journal.instance`)."""
        self.fresh = fresh
        """The name was made for this instance: no previous life held leases under it."""
        self._store = cast(SqlStore, store)
        self._seq: int | None = None
        """SQLite: the last change read (writers take turns there, see ``changes_since``)."""
        self._data_version: int | None = None
        self._waiter = anyio.CapacityLimiter(1)
        self._listener: PostgresListener | None = None
        self.poll = poll
        """Seconds between reads of every followed order instead of PostgreSQL's LISTEN:
        behind PgBouncer in transaction pooling a LISTEN hears nothing."""

    @property
    def channel(self) -> str:
        """PostgreSQL's notification channel for these orders (known once the journal is open)."""
        return str(getattr(self._store, "channel", sql.CHANNEL))

    def _deadline(self) -> float:
        return time.monotonic() + self.journal.settings.wait

    # --- writes -------------------------------------------------------------------

    async def track(self, order_id: int, until: Status, user_id: str | None) -> OrderRow:
        work = functools.partial(
            sql.track, dialect=self.dialect, order_id=order_id, until=until, user_id=user_id,
            now=time.time(), channel=self.channel,
        )  # fmt: skip
        return await self.journal._call(self._store.write, work, self._deadline())

    async def track_many(self, entries: Sequence[tuple[int, Status, str | None]]) -> list[OrderRow]:
        """:meth:`track` for many orders in one transaction (one commit, one thread hop)."""
        work = functools.partial(
            sql.track_many, dialect=self.dialect, entries=entries, now=time.time(),
            channel=self.channel,
        )  # fmt: skip
        return await self.journal._call(self._store.write, work, self._deadline())

    async def record(self, notes: Sequence[Note]) -> list[ChangeRow]:
        work = functools.partial(
            sql.record, dialect=self.dialect, notes=notes, now=time.time(), channel=self.channel
        )
        return await self.journal._call(self._store.write, work, self._deadline())

    async def untrack(self, order_ids: Sequence[int]) -> None:
        work = functools.partial(
            leases.untrack, dialect=self.dialect, order_ids=order_ids, owner=self.owner,
            now=time.time(),
        )  # fmt: skip
        await self.journal._call(self._store.write, work, self._deadline())

    async def let_go(self, order_ids: Sequence[int]) -> None:
        """Hand these orders over: this instance cannot follow them through Xsolla any
        more (see :func:`leases.let_go`)."""
        work = functools.partial(
            leases.let_go, dialect=self.dialect, order_ids=order_ids, owner=self.owner,
            now=time.time(),
        )  # fmt: skip
        await self.journal._call(self._store.write, work, self._deadline())

    async def want(self, order_ids: Sequence[int]) -> None:
        work = functools.partial(
            leases.want, dialect=self.dialect, order_ids=order_ids, now=time.time()
        )
        await self.journal._call(self._store.write, work, self._deadline())

    async def lease(self, order_ids: Sequence[int], seconds: float) -> dict[int, int]:
        work = functools.partial(
            leases.lease, dialect=self.dialect, order_ids=order_ids, owner=self.owner,
            now=time.time(), seconds=seconds,
        )  # fmt: skip
        return await self.journal._call(self._store.write, work, self._deadline())

    async def adopt(self, seconds: float, limit: int, passed: Sequence[int] = ()) -> list[OrderRow]:
        """Take over up to ``limit`` orders whose owner is gone, but those ``passed``
        (see :func:`leases.adopt`)."""
        work = functools.partial(
            leases.adopt, dialect=self.dialect, owner=self.owner, now=time.time(),
            seconds=seconds, limit=limit, passed=passed,
        )  # fmt: skip
        return await self.journal._call(self._store.write, work, self._deadline())

    async def release(self) -> None:
        """End the leases this instance's previous life held (see :func:`leases.release`);
        nothing to do for a name made for this instance (no statement)."""
        if self.fresh:
            return
        work = functools.partial(leases.release, dialect=self.dialect, owner=self.owner)
        await self.journal._call(self._store.write, work, self._deadline())

    # --- reads --------------------------------------------------------------------

    async def orders(self, order_ids: Sequence[int]) -> dict[int, OrderRow]:
        work = functools.partial(reads.orders, dialect=self.dialect, order_ids=order_ids)
        return await self.journal._call(self._store.read, work, self._deadline())

    async def lapse_verdicts(self, order_ids: Sequence[int]) -> dict[int, tuple[Lapse, int]]:
        """Where the fleet's verdict on these expired orders' grace stands, with their
        rows' versions (see :func:`reads.lapse_verdicts`)."""
        work = functools.partial(
            reads.lapse_verdicts, dialect=self.dialect, order_ids=order_ids, owner=self.owner,
            now=time.time(),
        )  # fmt: skip
        return await self.journal._call(self._store.read, work, self._deadline())

    async def changes(self, cursors: Mapping[int, int], everything: bool) -> list[ChangeRow]:
        """Changes of the orders in ``cursors`` past their cursors.

        On SQLite, cheaply, everything committed since the last read (filtered
        here); ``everything`` also rereads per order there (after a restart of
        the watch, say).  On PostgreSQL always per order.
        """
        if self.dialect == "sqlite" and not everything and self._seq is not None:
            # Only news since the last read: an order followed since then is caught up
            # by itself (``everything``), not here.
            since = functools.partial(reads.changes_since, after_seq=self._seq)
            found, self._seq = await self.journal._call(self._store.read, since, self._deadline())
            return [c for c in found if c.order_id in cursors and c.version > cursors[c.order_id]]
        if self.dialect == "sqlite":
            # The mark first: a commit in between is read twice (the cursors drop it),
            # never skipped.
            self._seq = await self.journal._call(self._store.read, reads.last_seq, self._deadline())
        return await self.catch_up(cursors)

    async def catch_up(self, cursors: Mapping[int, int]) -> list[ChangeRow]:
        """These orders' changes past their cursors, read per order (a newly followed
        order's past: wake-ups only tell of news)."""
        work = functools.partial(reads.changes_after, dialect=self.dialect, cursors=dict(cursors))
        return await self.journal._call(self._store.read, work, self._deadline())

    def stop_listening(self) -> None:
        """Close this log's LISTENing connection (PostgreSQL), once nothing waits on it:
        a tracker ends before the journal it was given, which may serve others."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    async def wait_for_news(self, within: float, cursors: Mapping[int, int] | None = None) -> News:
        """Until something may have changed, or ``within`` s.  With ``cursors``, the
        news of the orders among them is read at once, past their cursors
        (``News.changes``): on PostgreSQL the announced orders, on the listening
        connection, on this loop; on SQLite everything committed since the last
        read, in the watching thread (filtered here, after the read, as
        :meth:`changes` does)."""
        if self.poll is not None and self.dialect == "postgresql":
            await anyio.sleep(min(self.poll, within))
            return News(everything=True)
        if self.dialect == "postgresql":
            if self._listener is None:
                self._listener = self._store.listener()  # type: ignore[attr-defined]
            heard = await self._listener.wait(within, cursors)
            if heard.order_ids is None:
                return News(everything=True)
            if not heard.order_ids:
                return News(quiet=True)
            return News(order_ids=tuple(heard.order_ids), changes=heard.changes)
        wait = self._store.wait_for_commit  # type: ignore[attr-defined]
        seen = self._data_version
        then = None
        if cursors is not None and seen is not None and self._seq is not None:
            # The news since the last read, read by the watching thread as soon as it
            # sees the commit (see ``changes``).
            then = functools.partial(reads.changes_since, after_seq=self._seq)
        found: tuple[list[ChangeRow], int] | None
        self._data_version, found = await anyio.to_thread.run_sync(
            wait, seen, within, then, limiter=self._waiter, abandon_on_cancel=True
        )
        if seen is None:
            return News(everything=True)
        if self._data_version == seen:
            return News(quiet=True)
        if found is None or cursors is None:
            return News()
        changes, self._seq = found
        return News(
            changes=[
                c for c in changes if c.order_id in cursors and c.version > cursors[c.order_id]
            ]
        )
