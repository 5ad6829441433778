"""What every journal backend provides: a handful of synchronous, thread-safe operations.

Each operation is one short unit of work on the database (one transaction,
often one statement).  They are plain synchronous code on a DB-API
connection, so the async journal drives them through worker threads on
asyncio and trio alike, and synchronous callers (a WSGI view, a script) call
them directly.  The decisions they carry out are in ``orderfsm.journal``; what
the SQL backends share is :mod:`~transports.journal.sql_shared`'s, their schema
:mod:`~transports.journal.sql_schema`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import attrs

from orderfsm.journal import Answer, Claim, Delivery, DeliveryFilter, NewDelivery, Outcome
from transports.journal.orders import Note

T = TypeVar("T")

STATEMENT_PAST_WAIT = 1.0
"""Seconds a statement may run past the journal's ``wait`` (PostgreSQL's
``statement_timeout`` is ``wait`` + this): a database that answers has answered, or
cancelled, every statement by then."""


@attrs.frozen
class Claimed:
    """What trying to claim a delivery's key gave."""

    delivery_id: int
    attempt: int | None
    """The attempt number taken, or ``None`` when someone else has the key."""
    claim: Claim | None
    """When not taken: the row as it was seen (``None`` if it could not be seen yet)."""
    busy: bool = False
    """The key's row was locked by another transaction past the wait (PostgreSQL)."""


@attrs.frozen
class Work:
    """A transactional handler's part of the claim's transaction."""

    handle: Callable[[Any, int], tuple[Answer, str | None]]
    """Given the open connection and the attempt, the answer and an error text; its
    writes are kept only with a 2xx."""
    facts: Callable[[Any], object] | None = None
    """What the delivery says whatever the handler makes of it (the order's status):
    written after the claim, and again if a failed attempt rolls the claim back, so
    a handler that refuses a refund (a 4xx Xsolla never retries) or fails does not
    keep it from the trackers, as with a plain handler, whose claim commits first."""


@attrs.frozen
class Worked:
    """What running work inside the claim's transaction gave."""

    delivery_id: int
    answer: Answer | None
    """The answer recorded (2xx, 4xx) or given (5xx); ``None`` when the key was not taken."""
    claim: Claim | None = None
    """When not taken: the row as seen, for :func:`orderfsm.journal.judge`."""
    busy: bool = False
    """The key's row was locked by another transaction past the wait (PostgreSQL)."""


class Store(Protocol):
    """One backend.  Every method may raise :class:`~orderfsm.errors.JournalUnavailable`."""

    display: str
    kind: str
    """``memory``, ``sqlite`` or ``postgresql``."""
    blocking: bool
    """Whether calls wait on I/O (run them in a worker thread) or not (memory)."""
    threads: int
    """How many calls may usefully run at once (the connection pool's size)."""

    def open(self, patience: float | None = None) -> None:
        """Connect and create or migrate the schema; raises ``JournalOpenFailed`` subclasses.
        ``patience``: seconds it may wait for a database busy with another process's
        start (``None``: the store's own, generous for a start-up)."""

    def close(self) -> None: ...

    def claim(
        self,
        delivery: NewDelivery,
        owner: str,
        now: float,
        lease: float,
        deadline: float,
        logged: int | None = None,
        notes: Sequence[Note] = (),
    ) -> Claimed:
        """Record the delivery and try to take its key (insert first, never check first).

        A delivery without a key is only recorded (``attempt`` 0: it always
        runs).  When the key is answered, the delivery is recorded as a
        duplicate with the stored answer in the same transaction.  ``logged``
        is the id of this delivery's record when it tries again after waiting.
        ``notes`` (orders' statuses a webhook told) are recorded in the same
        transaction, whatever the claim gives: if that fails, nothing is kept.
        """

    def read_claim(self, key: str, deadline: float) -> Claim | None: ...

    def settle(
        self,
        key: str | None,
        attempt: int,
        answer: Answer,
        delivery_id: int,
        error: str | None,
        now: float,
        deadline: float,
    ) -> bool:
        """Record the answer of ``attempt`` (or release the key on a 5xx), fenced.

        Returns False, and changes nothing of the claim, when a newer
        attempt took the key over.
        """

    def renew(self, key: str, attempt: int, until: float, deadline: float) -> bool:
        """Keep ``attempt``'s running claim until ``until`` (its handler still runs),
        fenced: False, and nothing changed, once another attempt took the key over."""

    def finish(
        self,
        delivery_id: int,
        answer: Answer,
        outcome: Outcome,
        error: str | None,
        now: float,
        deadline: float,
    ) -> None:
        """Write what became of a delivery that did not (or no longer) own its key."""

    def run_in_claim(
        self,
        delivery: NewDelivery,
        work: Work,
        owner: str,
        now: float,
        lease: float,
        deadline: float,
        logged: int | None = None,
    ) -> Worked:
        """Claim, run ``work`` and record its answer in one transaction.

        Whatever instant the process dies, the application's writes and the
        answer are both committed or neither.  A failed work's delivery is
        still recorded, in a transaction of its own.
        """

    def reopen(self, key: str, attempt: int, deadline: float) -> bool:
        """Release an answered claim for a forced replay, if ``attempt`` still holds it."""

    def deliveries(self, selection: DeliveryFilter, deadline: float) -> list[Delivery]: ...

    def delivery(self, delivery_id: int, deadline: float) -> Delivery | None: ...

    def ready(self, deadline: float, record_orders: bool) -> None:
        """Raise :class:`~orderfsm.errors.JournalUnavailable` unless a delivery could be
        recorded now: the store answers and may write (without writing: see
        :mod:`~transports.journal.readiness`), the orders' statuses too when the
        journal's user records them in the claim's transaction (``record_orders``)."""

    def claims(self, keys: Sequence[str], deadline: float) -> dict[str, Claim]: ...

    def prune(self, cutoff: float, deadline: float) -> tuple[int, int]:
        """Delete claims and deliveries older than ``cutoff``; returns how many of each."""


class SqlStore(Store, Protocol):
    """A backend with tables of its own (SQLite, PostgreSQL): other tables of the
    journal (the fleet tracker's orders) run their units of work through it."""

    def write(self, work: Callable[[Any], T], deadline: float, durable: bool = True) -> T:
        """Run ``work(connection)`` in a write transaction; committed once it returns."""

    def read(self, work: Callable[[Any], T], deadline: float) -> T: ...


@attrs.frozen
class ClaimRequest:
    """One delivery's claim, for :meth:`Batches.claim_many`."""

    delivery: NewDelivery
    notes: Sequence[Note] = ()


@attrs.frozen
class SettleRequest:
    """One answer to record, for :meth:`Batches.settle_many`."""

    key: str | None
    attempt: int
    answer: Answer
    delivery_id: int
    error: str | None


@runtime_checkable
class Batches(Protocol):
    """A backend that writes several deliveries' claims (or answers) in one transaction:
    on PostgreSQL each statement and each commit costs far more CPU than a row, so
    deliveries arriving together share them.  Each returns one result per request,
    in order, or ``None`` when the batch met a lock it must not wait on (then each
    goes alone); a failure of the database raises, for the whole batch."""

    def claim_many(
        self,
        requests: Sequence[ClaimRequest],
        owner: str,
        now: float,
        lease: float,
        deadline: float,
    ) -> list[Claimed] | None: ...

    def settle_many(
        self, requests: Sequence[SettleRequest], now: float, deadline: float
    ) -> list[bool] | None: ...
