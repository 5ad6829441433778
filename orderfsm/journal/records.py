"""What the journal stores: claims (one per idempotency key) and deliveries (one per request).

A claim is the exactly-once part: its key is unique, its ``attempt`` grows by
one each time the key is (re)taken and fences late writers, and once it is
answered it keeps the answer every later duplicate gets.  A delivery is the
record of one HTTP request, kept for inspection and replay whatever became
of it.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import attrs


@attrs.frozen
class Answer:
    """An HTTP answer as given, and as given again to every duplicate."""

    status: int
    body: bytes = b""
    content_type: str | None = None

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        if self.content_type is None:
            return ()
        return (("Content-Type", self.content_type),)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class ClaimState(str, enum.Enum):
    RUNNING = "running"
    """Someone is working on it, until ``lease_until``."""
    ANSWERED = "answered"
    """Final: the answer is stored and repeated to every duplicate."""
    RELEASED = "released"
    """The last attempt failed (5xx); the next delivery may take it again."""

    def __str__(self) -> str:
        return self.value


@attrs.frozen
class Claim:
    """One idempotency key's row."""

    key: str
    attempt: int
    """The fencing token: only the holder of the latest attempt may record an answer."""
    state: ClaimState
    owner: str
    """Which instance took the latest attempt (informative: decisions never read it)."""
    lease_until: float
    claimed_at: float
    answered_at: float | None = None
    answer: Answer | None = None


class Outcome(str, enum.Enum):
    """What became of one delivery; ``None`` in a record means it never finished."""

    HANDLED = "handled"
    """The handler ran and succeeded (2xx)."""
    REFUSED = "refused"
    """The handler refused it on purpose (4xx, stored and repeated)."""
    FAILED = "failed"
    """The handler raised: answered 5xx, the claim released for the retry."""
    DUPLICATE = "duplicate"
    """Answered from the claim's stored answer; the handler did not run."""
    BUSY = "busy"
    """Another delivery of the same key was still at work: answered 5xx."""
    FENCED = "fenced"
    """The handler ran but its lease had been taken over: its answer was not recorded."""
    ERROR = "error"
    """The journal itself failed: answered 5xx."""

    def __str__(self) -> str:
        return self.value


@attrs.frozen
class NewDelivery:
    """A verified request, as the receiver hands it to the journal."""

    kind: str
    """The notification type."""
    key: str | None
    """The idempotency key; ``None`` for types never deduplicated (``user_validation``)."""
    order_id: int | None
    body: bytes
    headers: tuple[tuple[str, str], ...]
    """Only what is needed to verify the body again (``Authorization``, ``Content-Type``)."""
    peer: str | None
    received_at: float
    replay: bool = False
    """Made by a replay of a stored delivery, not received from Xsolla."""


@attrs.frozen
class Delivery:
    """A delivery as stored."""

    id: int
    kind: str
    key: str | None
    order_id: int | None
    body: bytes
    headers: tuple[tuple[str, str], ...]
    peer: str | None
    received_at: float
    attempt: int | None = None
    """The claim attempt this delivery ran the handler as, if it did."""
    status: int | None = None
    outcome: Outcome | None = None
    error: str | None = None
    finished_at: float | None = None
    replay: bool = False
    """Made by ``orderfsm webhooks replay``, not received from Xsolla."""


@attrs.frozen
class DeliveryFilter:
    """What ``list`` selects; ``None`` fields do not filter."""

    order_id: int | None = None
    kind: str | None = None
    outcome: Outcome | None = None
    unfinished: bool = False
    """Only deliveries that never finished (the process died, or still running)."""
    since: float | None = None
    until: float | None = None
    limit: int = 100


class Pruned(NamedTuple):
    """What one prune deleted."""

    claims: int
    deliveries: int
    changes: int
    """Of the fleet tracker's change log (SQLite and PostgreSQL only)."""
