"""The journal on an event loop: the synchronous steps, driven from asyncio or trio.

Each store call runs in a worker thread (``anyio.to_thread``, with a limiter
the size of the connection pool) and each wait is an ``anyio.sleep`` on the
loop, so both loops run the same code and nothing blocks the loop.  The
in-memory store does no I/O and is called inline.  On a store that
:class:`~transports.journal.base.Batches` (PostgreSQL, SQLite), the claims of
deliveries arriving together share one transaction and one thread hop, and so
do their answers (:mod:`~transports.journal.batching`).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Generator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread
import attrs

from orderfsm.errors import JournalUnavailable
from orderfsm.journal import (
    Answer,
    Claim,
    Delivery,
    DeliveryFilter,
    JournalSettings,
    NewDelivery,
    Pruned,
    Reply,
)
from transports.journal.base import (
    STATEMENT_PAST_WAIT,
    Claimed,
    ClaimRequest,
    SettleRequest,
    Store,
    Work,
)
from transports.journal.batching import Batcher, BatchOverdue, Done
from transports.journal.core import SyncJournal
from transports.journal.hop import BatchThread
from transports.journal.orders import Note
from transports.journal.steps import Ran, Taken, advance, decided_by

T = TypeVar("T")
X = TypeVar("X")


class Journal:
    """A journal for async code; ``journal.sync`` is the same journal for synchronous code."""

    def __init__(
        self, store: Store, settings: JournalSettings | None = None, *, owner: str | None = None
    ) -> None:
        self.sync = SyncJournal(store, settings, owner=owner)
        self._loops: weakref.WeakKeyDictionary[object, _OnLoop] = weakref.WeakKeyDictionary()
        self.batches = self.sync.batches is not None
        """Whether concurrent claims and answers are written together."""

    @property
    def store(self) -> Store:
        return self.sync.store

    @property
    def settings(self) -> JournalSettings:
        return self.sync.settings

    @property
    def display(self) -> str:
        """The store's URL, without its password."""
        return self.sync.display

    def __repr__(self) -> str:
        return f"Journal({self.display!r})"

    async def _call(
        self, function: Callable[..., T], *args: Any, patience: float | None = None
    ) -> T:
        """Run ``function`` in a worker thread, waiting at most ``patience`` (by default
        ``wait``) for one.

        The wait for a thread is bounded (an outage must not queue deliveries
        behind each other past their answer); once started, a call runs to
        its end, so what it did (a claim taken) is never lost to a cancel.
        """
        if not self.store.blocking:
            return function(*args)
        on_loop = self._on_loop()
        gate, threads = on_loop.gate, on_loop.threads
        try:
            gate.acquire_nowait()  # the common case: a thread is free, no timer needed
        except anyio.WouldBlock:
            acquired = False
            with anyio.move_on_after(self.settings.wait if patience is None else patience):
                await gate.acquire()
                acquired = True
            if not acquired:
                raise JournalUnavailable(
                    f"{self.display}: every journal thread stayed busy"
                ) from None
        try:
            return await anyio.to_thread.run_sync(function, *args, limiter=threads)
        finally:
            gate.release()

    async def _drive(self, steps: Generator[float, None, T], patience: float | None = None) -> T:
        while True:
            done, value = await self._call(advance, steps, patience=patience)
            if done:
                result: T = value  # type: ignore[assignment]
                return result
            assert isinstance(value, float)
            await anyio.sleep(value)

    async def open(self) -> None:
        """Connect and create or migrate the schema (idempotent); raises a typed error."""
        await self._call(self.sync.open)

    async def aclose(self) -> None:
        for on_loop in list(self._loops.values()):
            if on_loop.batchers is not None:
                on_loop.batchers.thread.stop()
        with anyio.CancelScope(shield=True):
            await self._call(self.sync.close)

    async def __aenter__(self) -> Journal:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def begin(
        self, delivery: NewDelivery, busy: Answer, notes: Sequence[Note] = ()
    ) -> Taken | Reply:
        """Claim the key, or wait (on the loop) for its owner's answer; see :class:`SyncJournal`.
        ``notes``: orders' statuses to record in the claim's transaction."""
        claimed: Claimed | None = None
        if self.batches:
            claimed = await self._batched().claim(ClaimRequest(delivery, notes))
            decided = None if claimed is None else decided_by(delivery, claimed)
            if decided is not None:
                return decided
        return await self._drive(self.sync.begin_steps(delivery, busy, notes, claimed))

    async def settle(self, taken: Taken, answer: Answer, error: str | None, busy: Answer) -> Answer:
        """Record the handler's answer; passing trouble is waited out (see
        :meth:`SyncJournal.settle_steps`), on the loop, for as long as the lease."""
        recorded: bool | None = None
        if self.batches:
            request = SettleRequest(taken.key, taken.attempt, answer, taken.delivery_id, error)
            try:
                recorded = await self._batched().settle(request)
            except BatchOverdue:
                raise  # its lease is spent: past it, its write would be fenced anyway
            except JournalUnavailable:
                # Failed: written or not, writing it alone is safe (fenced by
                # attempt), and alone it is retried.
                recorded = None
        if recorded is None:
            steps = self.sync.settle_steps(taken, answer, error, busy)
            return await self._drive(steps, patience=self.settings.lease)
        if recorded:  # the usual case: nothing to read, so no trip to a thread
            return self.sync.settled(taken, answer, error, busy, recorded)
        return await self._call(self.sync.settled, taken, answer, error, busy, recorded)

    def _on_loop(self) -> _OnLoop:
        """This event loop's limiters and batchers: a journal shared by loops in several
        threads must not wake one loop's waiters from another."""
        loop = anyio.lowlevel.current_token().native_token
        on_loop = self._loops.get(loop)
        if on_loop is None:
            on_loop = self._loops[loop] = _OnLoop(self.store.threads)
        return on_loop

    def _batched(self) -> _Batchers:
        on_loop = self._on_loop()
        if on_loop.batchers is None:
            on_loop.batchers = _Batchers(self)
        return on_loop.batchers

    async def run(self, delivery: NewDelivery, work: Work, busy: Answer) -> Ran | Reply:
        """Claim, run ``work`` (a worker thread, the transaction open) and record, atomically."""
        return await self._drive(self.sync.run_steps(delivery, work, busy))

    async def deliveries(self, selection: DeliveryFilter | None = None) -> list[Delivery]:
        return await self._call(self.sync.deliveries, selection)

    async def delivery(self, delivery_id: int) -> Delivery | None:
        return await self._call(self.sync.delivery, delivery_id)

    async def ready(self, *, record_orders: bool = False) -> None:
        """See :meth:`SyncJournal.ready`."""
        await self._call(functools.partial(self.sync.ready, record_orders=record_orders))

    async def claims(self, keys: Sequence[str]) -> dict[str, Claim]:
        return await self._call(self.sync.claims, keys)

    async def reopen(self, key: str, attempt: int) -> bool:
        return await self._call(self.sync.reopen, key, attempt)

    async def prune(self) -> Pruned:
        return await self._call(self.sync.prune)


class _OnLoop:
    """A journal's objects bound to one event loop."""

    def __init__(self, threads: int) -> None:
        self.gate = anyio.CapacityLimiter(threads)
        """Taken before a worker thread: its wait is bounded (``settings.wait``)."""
        self.threads = anyio.CapacityLimiter(threads)
        self.batchers: _Batchers | None = None


@attrs.frozen
class _Failed:
    """One kind's part of a batch raised this (the other kind's results stand)."""

    error: Exception


def _part(
    results: list[object], part: list[tuple[int, X]], many: Callable[[list[X]], Sequence[object]]
) -> None:
    """Run one kind's requests (``(index, request)``) of a batch, into ``results``."""
    if not part:
        return
    try:
        got: Sequence[object] = many([request for _, request in part])
    except Exception as exc:
        got = [_Failed(exc)] * len(part)
    for (i, _), result in zip(part, got, strict=True):
        results[i] = result


class _Count:
    """Requests of one kind and the batches they went in (for tests and tuning)."""

    def __init__(self) -> None:
        self.items = 0
        self.batches = 0

    def add(self, items: int) -> None:
        if items:
            self.items += items
            self.batches += 1


class _Batchers:
    """A journal's batches on one event loop: claims and answers queued meanwhile go
    to a worker thread together, the answers' transaction then the claims' (one
    thread hop for both: at full load a hop costs about as much CPU as a statement).
    A claim waits for the batches ahead of its own at most ``settings.wait``, as for
    a thread, and for its own batch as long as a statement may take: a batch given up
    on while it waits for a row lock could still take a key afterwards, for nobody
    (an owner whose lease ran out while its renewals failed would be fenced), so only
    a database that stopped answering is given up on (its delivery is answered 5xx
    and retried; its handler has not run).  An answer waits at most the lease, as its
    write alone is tried again: its handler has run, and an answer given up on is a
    handler run again."""

    def __init__(self, journal: Journal) -> None:
        sync = journal.sync
        self._wait = journal.settings.wait
        self._lease = journal.settings.lease
        self.claims = _Count()
        self.settles = _Count()

        def both(items: list[ClaimRequest | SettleRequest]) -> list[object]:
            """In the worker thread: the answers first (duplicates wait for them)."""
            results: list[object] = [None] * len(items)
            settles = [(i, r) for i, r in enumerate(items) if isinstance(r, SettleRequest)]
            claims = [(i, r) for i, r in enumerate(items) if isinstance(r, ClaimRequest)]
            _part(results, settles, sync.settle_many)
            _part(results, claims, sync.claim_many)
            return results

        self.thread = BatchThread()
        """The batches' own thread (:mod:`~transports.journal.hop`): one batch runs at a
        time, so it never waits for one of the pool's."""

        def start(items: list[ClaimRequest | SettleRequest], done: Done[object]) -> None:
            settles = sum(isinstance(item, SettleRequest) for item in items)
            self.settles.add(settles)
            self.claims.add(len(items) - settles)
            self.thread.send(lambda: both(items), done)

        self._batcher: Batcher[ClaimRequest | SettleRequest, object] = Batcher(start)

    async def claim(self, request: ClaimRequest) -> Claimed | None:
        running = self._wait + STATEMENT_PAST_WAIT
        result = await self._batcher.submit(request, patience=self._wait, running=running)
        if isinstance(result, _Failed):
            raise result.error
        assert result is None or isinstance(result, Claimed)
        return result

    async def settle(self, request: SettleRequest) -> bool | None:
        result = await self._batcher.submit(request, patience=self._lease)
        if isinstance(result, _Failed):
            raise result.error
        assert result is None or isinstance(result, bool)
        return result
