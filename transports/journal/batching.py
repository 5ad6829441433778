"""Run together what concurrent tasks ask for meanwhile: one call for a batch.

A receiver at full load has a dozen deliveries at the same step; on
PostgreSQL each statement, commit and hop to a worker thread costs far more
CPU than a row, so they share them.  A caller that finds a lane free leads:
it starts a batch of what is queued (its own item first).  When the batch
ends its results are handed out on the loop and the lane passes to the
oldest caller still queued, which starts the next batch once the callers
just answered have queued what they ask next; so nobody waits longer than
the batches before theirs, and no task of its own is needed (nothing to
start or stop).  One lane by default: two (a caller under light load seldom
waiting for another's batch) cut three PostgreSQL receivers from about 2,150
to 1,600 deliveries/s, smaller batches, and did not lower the fleet's p99 at
500/s (10.7 ms against 9.9).

Every caller, the batch's first included, waits for its result for a time
of its own, queued or in a running batch: a database that stops answering
without closing the connection (a frozen server, a network cut without a
reset) blocks the batch's thread in a read, and the deliveries in it must
still be answered 5xx at their deadline.  Such a batch's result, when it
comes, goes to nobody (what it wrote is covered by the journal itself: a
claim nobody answers runs out with its lease, an answer recorded late is
found by the retry), and the lane passes on then.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import anyio

from orderfsm.errors import JournalUnavailable


class BatchOverdue(JournalUnavailable):
    """The caller's patience ran out before its batch's result came (or before its item
    was in a batch): what that batch did is unknown to it."""


I = TypeVar("I")  # noqa: E741 - the item, beside R the result
R = TypeVar("R")

Done = Callable[[Sequence[R] | BaseException], None]
"""Called on the loop's thread (not in a task) with a batch's results, one per item
in order, or what it raised (every item's error)."""

MOST = 64
"""Items per batch, at most: a bound on one transaction's work and latency."""
LANES = 1
"""Batches running at once, at most."""


class _Slot(Generic[I, R]):
    __slots__ = ("done", "error", "item", "lead", "result", "taken", "taken_at", "wake")

    def __init__(self, item: I) -> None:
        self.item = item
        self.wake = anyio.Event()
        self.lead = False
        """Handed a lane (and out of the queue): it starts the next batch there."""
        self.taken = False
        """In a batch that was started (its result will come, waited for or not)."""
        self.taken_at = 0.0
        self.done = False
        self.result: R | None = None
        self.error: BaseException | None = None

    def outcome(self) -> R:
        if self.error is not None:
            raise self.error
        result: R = self.result  # type: ignore[assignment]
        return result


class Batcher(Generic[I, R]):
    """``await batcher.submit(item)``: ``start(items, done)`` starts a batch (without
    waiting for it) and has ``done`` called on this loop when it ends.

    One event loop only.  A caller whose patience runs out (the batches ahead
    of it stuck, or its own) leaves with :class:`BatchOverdue`: its answer
    must not wait on the database past its deadline.
    """

    def __init__(
        self,
        start: Callable[[list[I], Done[R]], None],
        most: int = MOST,
        lanes: int = LANES,
        patience: float = math.inf,
    ) -> None:
        self._begin = start
        self._most = most
        self._lanes = lanes
        self._patience = patience
        self._queue: list[_Slot[I, R]] = []
        self._leading = 0
        """Lanes in use: batches running, or handed to a queued caller about to start one."""
        self.batches = 0
        self.items = 0

    async def submit(
        self, item: I, patience: float | None = None, running: float | None = None
    ) -> R:
        """``patience``: this caller's own, instead of the batcher's; ``running``: how
        long it waits for a batch its item is in, from that batch's start, if longer
        than what is left of ``patience``: a batch given up on may still do its work
        afterwards, so it is given up on only once it cannot be merely slow (however
        long its item was queued before)."""
        patience = self._patience if patience is None else patience
        slot: _Slot[I, R] = _Slot(item)
        if self._leading < self._lanes:
            self._leading += 1
            self._start(slot)
        else:
            self._queue.append(slot)
        try:
            if patience == math.inf:
                await self._wait(slot)  # no timer to arm and cancel: a scope costs ~5 us
            else:
                with anyio.move_on_after(patience):
                    await self._wait(slot)
                left = slot.taken_at + running - anyio.current_time() if running else 0.0
                if not slot.done and slot.taken and left > 0:
                    with anyio.move_on_after(left):
                        await self._wait(slot)
        except BaseException:
            self._leave(slot)
            raise
        if not slot.done:
            self._leave(slot)
            if not slot.taken:
                raise BatchOverdue(f"the journal's batches ahead ran past {patience} s")
            raise BatchOverdue(f"the journal's batch ran past {max(running or 0, patience)} s")
        return slot.outcome()

    async def _wait(self, slot: _Slot[I, R]) -> None:
        while True:
            await slot.wake.wait()
            if not slot.lead:
                return  # its result
            slot.lead = False
            slot.wake = anyio.Event()
            self._start(slot)

    def _leave(self, slot: _Slot[I, R]) -> None:
        """The caller goes without its result."""
        if slot.lead:
            slot.lead = False
            self._pass_lead()  # handed a lane it will not use
        elif not slot.taken:
            self._queue.remove(slot)
        # else its batch runs on; its end hands the lane over

    def _start(self, slot: _Slot[I, R]) -> None:
        batch = [slot, *self._queue[: self._most - 1]]
        del self._queue[: self._most - 1]
        now = anyio.current_time()
        for taken in batch:
            taken.taken = True
            taken.taken_at = now
        self.batches += 1
        self.items += len(batch)
        try:
            self._begin([s.item for s in batch], functools.partial(self._finish, batch))
        except Exception as exc:
            self._finish(batch, exc)

    def _finish(self, batch: list[_Slot[I, R]], outcome: Sequence[R] | BaseException) -> None:
        if not isinstance(outcome, BaseException) and len(outcome) != len(batch):
            outcome = RuntimeError(f"a batch of {len(batch)} gave {len(outcome)} results")
        for i, taken in enumerate(batch):
            if isinstance(outcome, BaseException):
                taken.error = outcome
            else:
                taken.result = outcome[i]
            taken.done = True
            taken.wake.set()
        self._pass_lead()

    def _pass_lead(self) -> None:
        """Hand a lane over to the oldest caller not yet given one, or free it."""
        if self._queue:
            following = self._queue.pop(0)
            following.lead = True
            following.wake.set()
        else:
            self._leading -= 1
