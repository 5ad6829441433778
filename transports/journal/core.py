"""The journal's exactly-once path, written once as synchronous steps over a store.

:class:`SyncJournal` is what a synchronous caller (a WSGI view, a script, the
CLI) uses directly; :class:`~transports.journal.journal.Journal` drives the
same steps from asyncio or trio, running each store call in a worker thread
and each wait on the event loop.  The steps are generators that yield the
seconds to wait, so neither side copies the logic; what they end with, and
their drivers, are :mod:`~transports.journal.steps`'.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Generator, Sequence

from orderfsm.errors import JournalClosed, JournalError, JournalRefused, JournalUnavailable
from orderfsm.journal import (
    Answer,
    Busy,
    Claim,
    Delivery,
    DeliveryFilter,
    JournalSettings,
    NewDelivery,
    Outcome,
    Pruned,
    Reply,
    TryAgain,
    Wait,
    after_fencing,
    judge,
    prune_cutoff,
)
from transports.journal.base import (
    Batches,
    Claimed,
    ClaimRequest,
    SettleRequest,
    Store,
    Work,
)
from transports.journal.orders import Note
from transports.journal.pruning import BackgroundPrune, change_log, prune_rounds
from transports.journal.renewer import Renewer
from transports.journal.steps import Ran, Taken, decided_by, drive

logger = logging.getLogger("orderfsm.journal")

ANSWER_RETRY = (0.05, 1.0)
"""Seconds between two tries to record an answer: the first wait, and the longest."""
SYNC_ANSWER_PATIENCE = 20.0
"""Seconds a synchronous answer's write is retried, at most (under gunicorn's default
30 s worker timeout: a killed worker answers nothing, a 500 at least is counted)."""
LAST_RECORD = 0.5
"""Seconds a duplicate that used up its wait still gives its own record."""


def new_owner() -> str:
    """Names this process in the claims it takes (informative only)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class SyncJournal:
    """The exactly-once steps on one store; thread-safe."""

    def __init__(
        self,
        store: Store,
        settings: JournalSettings | None = None,
        *,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.batches: Batches | None = store if isinstance(store, Batches) else None
        """The store, when it writes several deliveries' claims or answers at once."""
        self.settings = settings or JournalSettings()
        self.owner = owner or new_owner()
        self.clock = clock
        self._open_lock = threading.Lock()
        self._opened = False
        self._closed = False
        self._prunes = BackgroundPrune(self.prune, self.settings.prune_every)
        self._changes = change_log(store)
        self.renewer = Renewer(self.renew, self.settings.lease / 3, ANSWER_RETRY)
        """Renews the running plain handlers' claims (see :mod:`~transports.journal.renewer`)."""

    @property
    def display(self) -> str:
        return self.store.display

    # --- life ---------------------------------------------------------------------------

    def open(self, patience: float | None = None) -> None:
        """Connect and create or migrate the schema; idempotent.  ``patience``: how long
        a database busy with another process's start may hold it up (see
        :meth:`~transports.journal.base.Store.open`)."""
        if self._opened:
            return
        with self._open_lock:
            if not self._opened:
                self.store.open(patience)
                self._opened = True
                self._prunes.last = None

    def close(self) -> None:
        self._closed = True
        self.renewer.stop(timeout=self.settings.wait * 4)
        self._prunes.join(timeout=self.settings.wait * 4)
        with self._open_lock:
            self.store.close()

    def _deadline(self) -> float:
        return time.monotonic() + self.settings.wait

    def _rest_of(self, deadline: float) -> float:
        """A store deadline for what is left of ``deadline`` (the delivery's wait, in
        :attr:`clock` time), at least :data:`LAST_RECORD`: a delivery that waited out
        its wait for the key still answers well within Xsolla's 3 s."""
        return time.monotonic() + max(deadline - self.clock(), LAST_RECORD)

    # --- the plain handler's path: begin, (handler), settle --------------------------------

    def begin_steps(
        self,
        delivery: NewDelivery,
        busy: Answer,
        notes: Sequence[Note] = (),
        claimed: Claimed | None = None,
    ) -> Generator[float, None, Taken | Reply]:
        """Claim the delivery's key or wait for its owner: ends :class:`Taken` or answered.
        ``claimed``: the first claim, already tried (in a batch with others)."""
        self.open(self.settings.wait)  # on a delivery's path: within its wait
        deadline = self.clock() + self.settings.wait
        logged: int | None = None
        while True:
            if claimed is None:
                claimed = self.store.claim(
                    delivery,
                    self.owner,
                    self.clock(),
                    self.settings.lease,
                    self._deadline(),
                    logged,
                    notes,
                )
            decided = decided_by(delivery, claimed)
            if decided is not None:
                return decided
            logged = claimed.delivery_id
            if claimed.busy:
                self.store.finish(logged, busy, Outcome.BUSY, None, self.clock(), self._deadline())
                return Reply(busy)
            assert delivery.key is not None
            outcome = yield from self._await_key(
                delivery.key, claimed.claim, logged, deadline, busy
            )
            if outcome is not None:
                return outcome
            claimed = None

    def claim_many(self, requests: Sequence[ClaimRequest]) -> list[Claimed | None]:
        """First claims of several deliveries, together when the store batches; ``None``
        for one that must go alone (:meth:`begin_steps` claims it).  A batch of one
        too: a batch gives up on a locked row at once, so it never holds the batches
        queued behind it for a whole lock wait."""
        self.open(self.settings.wait)  # on a delivery's path: within its wait
        now, lease, deadline = self.clock(), self.settings.lease, self._deadline()
        if self.batches is None:
            return [
                self.store.claim(r.delivery, self.owner, now, lease, deadline, None, r.notes)
                for r in requests
            ]
        claimed = self.batches.claim_many(requests, self.owner, now, lease, deadline)
        return [None] * len(requests) if claimed is None else list(claimed)

    def settle_many(self, requests: Sequence[SettleRequest]) -> list[bool | None]:
        """Several answers' writes, together when the store batches; ``None`` for one
        that must go alone (:meth:`settle` writes it); then :meth:`settled`."""
        now, deadline = self.clock(), self._deadline()
        # One answer alone is one autocommit statement: should this process die while
        # it waits on a locked row, the server still records it once the row is free.
        if len(requests) == 1 or self.batches is None:
            settle = self.store.settle
            return [
                settle(r.key, r.attempt, r.answer, r.delivery_id, r.error, now, deadline)
                for r in requests
            ]
        recorded = self.batches.settle_many(requests, now, deadline)
        return [None] * len(requests) if recorded is None else list(recorded)

    def _await_key(
        self, key: str, claim: Claim | None, logged: int, deadline: float, busy: Answer
    ) -> Generator[float, None, Reply | None]:
        """Wait for the owner of ``key``; ``None`` means the key may be taken now."""
        polls = 0
        while True:
            verdict = judge(claim, self.clock(), deadline, polls)
            if isinstance(verdict, TryAgain):
                return None
            if isinstance(verdict, Reply | Busy):
                outcome = Outcome.DUPLICATE if isinstance(verdict, Reply) else Outcome.BUSY
                answer = verdict.answer if isinstance(verdict, Reply) else busy
                try:
                    self.store.finish(
                        logged, answer, outcome, None, self.clock(), self._rest_of(deadline)
                    )
                except JournalError as exc:
                    # Only this delivery's record: a 5xx here would turn a handled
                    # notification into a retry, and a busy one is answered 5xx anyway.
                    logger.warning(
                        "a duplicate's record was not written: %s",
                        exc,
                        extra={"event": "journal.record_lost", "key": key},
                    )
                return Reply(answer)
            assert isinstance(verdict, Wait)
            yield verdict.delay
            polls += 1
            claim = self.store.read_claim(key, self._deadline())

    def settle_steps(
        self,
        taken: Taken,
        answer: Answer,
        error: str | None,
        busy: Answer,
        patience: float | None = None,
    ) -> Generator[float, None, Answer]:
        """Record the handler's answer (or release the key on 5xx); ends with the answer
        to give.  Unlike a claim, an answer does not give up after ``wait``: its handler
        has run, and an answer not recorded is a handler run again on Xsolla's retry.
        So passing trouble (a lock another process holds, an outage) is waited out,
        tried again until the claim's lease runs out (past it, another delivery may
        take the key over, and the write would be fenced anyway); a late answer is
        harmless, the retry finds it.  A refusal is not retried: it would repeat.
        ``patience`` shortens that (a WSGI worker is killed by its server's timeout)."""
        lease = self.settings.lease
        give_up = self.clock() + (lease if patience is None else min(patience, lease))
        delay = ANSWER_RETRY[0]
        while True:
            try:
                recorded = self.store.settle(
                    taken.key,
                    taken.attempt,
                    answer,
                    taken.delivery_id,
                    error,
                    self.clock(),
                    self._deadline(),
                )
                return self.settled(taken, answer, error, busy, recorded)
            except (JournalRefused, JournalClosed):
                raise
            except JournalUnavailable as exc:
                if self.clock() + delay >= give_up:
                    raise
                logger.warning(
                    "the answer to %s waits for the journal: %s",
                    taken.key,
                    exc,
                    extra={"event": "journal.unavailable", "doing": "recording an answer"},
                )
            yield delay
            delay = min(2 * delay, ANSWER_RETRY[1])

    def renew(self, key: str, attempt: int) -> bool:
        """Keep ``attempt``'s claim of ``key`` for another lease while its handler runs
        (the :attr:`renewer` calls it); False once another attempt took the key over
        (its handler may already be running)."""
        return self.store.renew(key, attempt, self.clock() + self.settings.lease, self._deadline())

    def settled(
        self, taken: Taken, answer: Answer, error: str | None, busy: Answer, recorded: bool
    ) -> Answer:
        """After the answer's write: the answer to give (another's, when fenced)."""
        self._maybe_prune()
        if recorded or taken.key is None:
            return answer
        logger.warning(
            "attempt %d of %s was taken over before it answered",
            taken.attempt,
            taken.key,
            extra={"event": "journal.fenced", "key": taken.key},
        )
        verdict = after_fencing(self.store.read_claim(taken.key, self._deadline()))
        final = verdict.answer if isinstance(verdict, Reply) else busy
        if final != answer:
            self.store.finish(
                taken.delivery_id, final, Outcome.FENCED, error, self.clock(), self._deadline()
            )
        return final

    # --- the transactional handler's path ------------------------------------------------

    def run_steps(
        self, delivery: NewDelivery, work: Work, busy: Answer
    ) -> Generator[float, None, Ran | Reply]:
        """Claim, run ``work`` on the open connection and record, in one transaction."""
        self.open(self.settings.wait)  # on a delivery's path: within its wait
        deadline = self.clock() + self.settings.wait
        logged: int | None = None
        while True:
            worked = self.store.run_in_claim(
                delivery,
                work,
                self.owner,
                self.clock(),
                self.settings.lease,
                self._deadline(),
                logged,
            )
            if worked.answer is not None:
                self._maybe_prune()
                return Ran(worked.answer)
            if worked.claim is not None and worked.claim.answer is not None:
                return Reply(worked.claim.answer)  # recorded as a duplicate already
            logged = worked.delivery_id
            if worked.busy:
                self.store.finish(logged, busy, Outcome.BUSY, None, self.clock(), self._deadline())
                return Reply(busy)
            assert delivery.key is not None
            outcome = yield from self._await_key(delivery.key, worked.claim, logged, deadline, busy)
            if outcome is not None:
                return outcome

    # --- reading, replaying, pruning ------------------------------------------------------

    def deliveries(self, selection: DeliveryFilter | None = None) -> list[Delivery]:
        self.open()
        return self.store.deliveries(selection or DeliveryFilter(), self._deadline())

    def delivery(self, delivery_id: int) -> Delivery | None:
        self.open()
        return self.store.delivery(delivery_id, self._deadline())

    def ready(self, *, record_orders: bool = False) -> None:
        """Raise a :class:`~orderfsm.errors.JournalError` unless a delivery could be
        recorded now (what ``/readyz`` asks): opened, answering, and able to write;
        with ``record_orders``, able to write the order's status in the claim's
        transaction as well (a receiver's ``record_orders``)."""
        self.open(self.settings.wait)
        self.store.ready(self._deadline(), record_orders)

    def claims(self, keys: Sequence[str]) -> dict[str, Claim]:
        self.open()
        return self.store.claims(keys, self._deadline())

    def reopen(self, key: str, attempt: int) -> bool:
        self.open()
        return self.store.reopen(key, attempt, self._deadline())

    def prune(self) -> Pruned:
        """Delete what is older than the retention now, in rounds until nothing is left
        (:func:`~transports.journal.pruning.prune_rounds`)."""
        self.open()
        now = self.clock()
        self._prunes.last = now
        cutoff = prune_cutoff(now, self.settings.retention)
        return prune_rounds(self.store, self._changes, cutoff, now, self._closing)

    def _closing(self) -> bool:
        return self._closed

    def _maybe_prune(self) -> None:
        self._prunes.start_if_due(self.clock(), self._closing)

    # --- synchronous drivers ---------------------------------------------------------------

    def begin(
        self, delivery: NewDelivery, busy: Answer, notes: Sequence[Note] = ()
    ) -> Taken | Reply:
        return drive(self.begin_steps(delivery, busy, notes))

    def run(self, delivery: NewDelivery, work: Work, busy: Answer) -> Ran | Reply:
        return drive(self.run_steps(delivery, work, busy))

    def settle(self, taken: Taken, answer: Answer, error: str | None, busy: Answer) -> Answer:
        """:meth:`settle_steps` in this thread, retrying at most :data:`SYNC_ANSWER_PATIENCE`:
        a synchronous caller is a WSGI worker, which gunicorn kills after 30 s."""
        return drive(self.settle_steps(taken, answer, error, busy, SYNC_ANSWER_PATIENCE))
