"""The durable ``on_settled`` handler's journal calls for async code (see
:mod:`transports.journal.settled_sql`): each one unit of work in a worker thread, as
:class:`~transports.journal.order_log.OrderLog`'s are."""

from __future__ import annotations

import functools
import time
from typing import cast

from orderfsm.journal.orders import RowMark
from transports.journal import settled_sql as sql
from transports.journal.base import SqlStore
from transports.journal.order_log import OrderLog


class SettledLog:
    """What was told and what is owed, in the journal of an :class:`OrderLog`."""

    def __init__(self, log: OrderLog) -> None:
        self.journal = log.journal
        self.dialect = log.dialect
        self._store = cast(SqlStore, log.journal.store)

    def _deadline(self) -> float:
        return time.monotonic() + self.journal.settings.wait

    async def owed(self, after: int, limit: int = 1000) -> tuple[list[sql.Owed], int | None]:
        """One page of calls owed past order ``after``, and where the next page starts."""
        work = functools.partial(sql.owed, dialect=self.dialect, after=after, limit=limit)
        return await self.journal._call(self._store.write, work, self._deadline())

    async def mark(self, order_id: int) -> RowMark | None:
        """What the order's row says of its calls (:func:`~transports.journal.settled_sql.mark`)."""
        work = functools.partial(sql.mark, dialect=self.dialect, order_id=order_id)
        return await self.journal._call(self._store.read, work, self._deadline())

    async def owe_lapses(self, order_ids: list[int]) -> None:
        """These orders' lapse calls are owed (their grace is over): for the sweeps."""
        work = functools.partial(
            sql.owe_lapses, dialect=self.dialect, order_ids=order_ids,
            owner=self.journal.sync.owner, now=time.time(),
        )  # fmt: skip
        await self.journal._call(self._store.write, work, self._deadline())

    async def tell(self, order_id: int) -> None:
        """The order's calls recorded so far: move its mark past them."""
        work = functools.partial(sql.tell, dialect=self.dialect, order_ids=[order_id])
        await self.journal._call(self._store.write, work, self._deadline())
