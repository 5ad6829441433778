"""What every journal backend provides: a handful of synchronous, thread-safe operations.

Each operation is one short unit of work on the database (one transaction,
often one statement).  They are plain synchronous code on a DB-API
connection, so the async journal drives them through worker threads on
asyncio and trio alike, and synchronous callers (a WSGI view, a script) call
them directly.  The decisions they carry out are in ``orderfsm.journal``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs

from orderfsm.journal import (
    Answer,
    Claim,
    ClaimState,
    Delivery,
    DeliveryFilter,
    NewDelivery,
    Outcome,
)


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


Also = Callable[[Any, Claimed], None]
"""An extra write in the claim's own transaction, given the connection (``None`` in
memory) and what the claim gave: the tracker records an order's status from a
webhook this way, so the status and the claim commit together."""

Work = Callable[[Any, int], tuple[Answer, str | None]]
"""The transactional handler's part: given the open connection and the attempt,
returns the answer and an error text; the writes are kept only with a 2xx."""


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

    def open(self) -> None:
        """Connect and create or migrate the schema; raises ``JournalOpenFailed`` subclasses."""

    def close(self) -> None: ...

    def claim(
        self,
        delivery: NewDelivery,
        owner: str,
        now: float,
        lease: float,
        deadline: float,
        logged: int | None = None,
        also: Also | None = None,
    ) -> Claimed:
        """Record the delivery and try to take its key (insert first, never check first).

        A delivery without a key is only recorded (``attempt`` 0: it always
        runs).  When the key is answered, the delivery is recorded as a
        duplicate with the stored answer in the same transaction.  ``logged``
        is the id of this delivery's record when it tries again after waiting.
        ``also`` runs in the same transaction; if it raises, nothing is kept.
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

    def claims(self, keys: Sequence[str], deadline: float) -> dict[str, Claim]: ...

    def prune(self, cutoff: float, deadline: float) -> tuple[int, int]:
        """Delete claims and deliveries older than ``cutoff``; returns how many of each."""


# --- rows <-> records, shared by the SQL backends ---------------------------------------

CLAIM_COLUMNS = (
    "key, attempt, state, owner, lease_until, claimed_at, answered_at, status, body, content_type"
)
DELIVERY_COLUMNS = (
    "id, kind, key, order_id, body, headers, peer, received_at, attempt, status, outcome, "
    "error, finished_at, replay"
)


def claim_from_row(row: Sequence[Any] | None) -> Claim | None:
    if row is None or row[0] is None:
        return None
    key, attempt, state, owner, lease_until, claimed_at, answered_at, status, body, ctype = row
    answer = Answer(int(status), bytes(body or b""), ctype) if status is not None else None
    return Claim(
        key,
        int(attempt),
        ClaimState(state),
        owner,
        float(lease_until),
        float(claimed_at),
        None if answered_at is None else float(answered_at),
        answer,
    )


def delivery_from_row(row: Sequence[Any]) -> Delivery:
    (ident, kind, key, order_id, body, headers, peer, received_at, attempt, status, outcome) = row[
        :11
    ]
    error, finished_at, replay = row[11:14]
    return Delivery(
        id=int(ident),
        kind=kind,
        key=key,
        order_id=None if order_id is None else int(order_id),
        body=bytes(body),
        headers=decode_headers(headers),
        peer=peer,
        received_at=float(received_at),
        attempt=None if attempt is None else int(attempt),
        status=None if status is None else int(status),
        outcome=None if outcome is None else Outcome(outcome),
        error=error,
        finished_at=None if finished_at is None else float(finished_at),
        replay=bool(replay),
    )


def encode_headers(headers: Sequence[tuple[str, str]]) -> str:
    return json.dumps([list(pair) for pair in headers])


def decode_headers(text: str) -> tuple[tuple[str, str], ...]:
    return tuple((str(name), str(value)) for name, value in json.loads(text))


MAX_ERROR_TEXT = 8000
"""Error texts (tracebacks) are cut to this many characters."""


def error_text(error: str | None) -> str | None:
    if error is None or len(error) <= MAX_ERROR_TEXT:
        return error
    return error[: MAX_ERROR_TEXT // 2] + "\n...\n" + error[-MAX_ERROR_TEXT // 2 :]
