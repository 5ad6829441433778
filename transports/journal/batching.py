"""Run together what concurrent tasks ask for meanwhile: one call for a batch.

A receiver at full load has a dozen deliveries at the same step; on
PostgreSQL each statement, commit and hop to a worker thread costs far more
CPU than a row, so they share them.  A caller that finds a lane free leads:
it runs a batch of what is queued (its own item first), hands the results
out and passes its lane to the oldest caller still queued, so nobody waits
longer than the batches before theirs, and no task of its own is needed
(nothing to start or stop).  One lane by default: two (a caller under light
load seldom waiting for another's batch) cut three PostgreSQL receivers from
about 2,150 to 1,600 deliveries/s, smaller batches, and did not lower the
fleet's p99 at 500/s (10.7 ms against 9.9).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import anyio

from orderfsm.errors import JournalUnavailable


class BatchInterrupted(JournalUnavailable):
    """The batch's leader was cancelled by its loop's own means (asyncio's
    ``task.cancel()``, which anyio's shield does not stop) while the batch ran in its
    thread: what the batch did is unknown to the others in it."""


I = TypeVar("I")  # noqa: E741 - the item, beside R the result
R = TypeVar("R")

MOST = 64
"""Items per batch, at most: a bound on one transaction's work and latency."""
LANES = 1
"""Batches running at once, at most."""


class _Slot(Generic[I, R]):
    __slots__ = ("error", "item", "lead", "result", "taken", "wake")

    def __init__(self, item: I) -> None:
        self.item = item
        self.wake = anyio.Event()
        self.lead = False
        """Handed a lane (and out of the queue): it leads the next batch there."""
        self.taken = False
        """In a batch that runs (its result will come, wanted or not)."""
        self.result: R | None = None
        self.error: BaseException | None = None

    def outcome(self) -> R:
        if self.error is not None:
            raise self.error
        result: R = self.result  # type: ignore[assignment]
        return result


class Batcher(Generic[I, R]):
    """``await batcher.submit(item)``: ``run(items)`` gives one result per item, in order.

    ``run`` must not be cancelled halfway (it is shielded here), and what it
    raises is every item's error.  One event loop only.  A caller still queued
    after ``patience`` seconds (the batches ahead of it stuck, say) leaves with
    :class:`~orderfsm.errors.JournalUnavailable`: its answer must not wait on
    theirs past its deadline; once in a running batch, it waits for its result.
    """

    def __init__(
        self,
        run: Callable[[list[I]], Awaitable[Sequence[R]]],
        most: int = MOST,
        lanes: int = LANES,
        patience: float = math.inf,
    ) -> None:
        self._run = run
        self._most = most
        self._lanes = lanes
        self._patience = patience
        self._queue: list[_Slot[I, R]] = []
        self._leading = 0
        """Lanes in use: batches running, or handed to a queued caller about to run one."""
        self.batches = 0
        self.items = 0

    async def submit(self, item: I, patience: float | None = None) -> R:
        """``patience``: this caller's own, instead of the batcher's."""
        patience = self._patience if patience is None else patience
        slot: _Slot[I, R] = _Slot(item)
        if self._leading < self._lanes:
            self._leading += 1
        else:
            self._queue.append(slot)
            try:
                if patience == math.inf:
                    await slot.wake.wait()  # no timer to arm and cancel: a scope costs ~5 us
                else:
                    with anyio.move_on_after(patience):
                        await slot.wake.wait()
                if slot.taken and not slot.wake.is_set():
                    await slot.wake.wait()  # its batch runs: the result will come
            except BaseException:
                if slot.lead:
                    self._pass_lead()  # handed a lane it will not use
                elif not slot.taken:
                    self._queue.remove(slot)
                raise
            if not slot.wake.is_set():
                self._queue.remove(slot)
                raise JournalUnavailable(
                    f"the journal's batches ahead did not finish within {patience} s"
                )
            if not slot.lead:
                return slot.outcome()
        try:
            await self._lead(slot)
        finally:
            self._pass_lead()
        return slot.outcome()

    async def _lead(self, slot: _Slot[I, R]) -> None:
        batch = [slot, *self._queue[: self._most - 1]]
        del self._queue[: self._most - 1]
        for taken in batch:
            taken.taken = True
        self.batches += 1
        self.items += len(batch)
        try:
            with anyio.CancelScope(shield=True):
                results = await self._run([s.item for s in batch])
            for taken, result in zip(batch, results, strict=True):
                taken.result = result
        except Exception as exc:
            for taken in batch:
                taken.error = exc
        except BaseException:
            for taken in batch[1:]:
                taken.error = BatchInterrupted("the journal's batch was interrupted")
            raise
        finally:
            for taken in batch[1:]:
                taken.wake.set()

    def _pass_lead(self) -> None:
        """Hand a lane over to the oldest caller not yet given one, or free it."""
        if self._queue:
            following = self._queue.pop(0)
            following.lead = True
            following.wake.set()
        else:
            self._leading -= 1
