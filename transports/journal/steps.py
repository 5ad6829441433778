"""What the journal's exactly-once steps end with, and how a caller runs them.

The steps (:class:`~transports.journal.core.SyncJournal`'s generators) are
shared by two drivers: :func:`drive` runs them in the caller's thread, and
:class:`~transports.journal.journal.Journal` one :func:`advance` at a time from
an event loop.  Kept apart from the steps themselves because this is the
contract between them and their drivers: both sides import it, neither
imports the other's loop.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import TypeVar

import attrs

from orderfsm.journal import Answer, NewDelivery, Reply
from transports.journal.base import Claimed

T = TypeVar("T")


@attrs.frozen
class Taken:
    """This delivery owns its key as ``attempt``: run the handler, then record its
    answer (:meth:`~transports.journal.core.SyncJournal.settle`)."""

    key: str | None
    attempt: int
    delivery_id: int


@attrs.frozen
class Ran:
    """The transactional handler ran as the key's owner and this is its answer."""

    answer: Answer


def decided_by(delivery: NewDelivery, claimed: Claimed) -> Taken | Reply | None:
    """What a claim decides by itself: taken, or a duplicate of an answered delivery
    (recorded as such already); ``None`` when its owner must be waited for."""
    if claimed.attempt is not None:
        return Taken(delivery.key, claimed.attempt, claimed.delivery_id)
    if claimed.claim is not None and claimed.claim.answer is not None:
        return Reply(claimed.claim.answer)
    return None


def drive(steps: Generator[float, None, T]) -> T:
    """Run steps to the end in this thread, sleeping where they wait."""
    try:
        delay = next(steps)
        while True:
            time.sleep(delay)
            delay = steps.send(None)
    except StopIteration as stop:
        result: T = stop.value
        return result


def advance(steps: Generator[float, None, T]) -> tuple[bool, float | T]:
    """One step: ``(False, seconds to wait)`` or ``(True, result)`` (StopIteration must not
    cross a thread or a future)."""
    try:
        return False, next(steps)
    except StopIteration as stop:
        return True, stop.value
