"""A plain handler's claim kept alive while it runs: a handler slower than the lease
must not be started a second time by a duplicate that finds the claim run out.

The claim is renewed every third of the lease, fenced by its attempt, from a task
beside the handler.  A live owner renews; a SIGKILLed one stops renewing, so its
claim still runs out one lease after its last renewal, judged from the claim row
alone.  A renewal that fails (the database is down) is tried again at once, backing
off to at most a second, not a third of the lease later: the lease still covers two
thirds of itself, and a renewal that comes late still holds when nobody took the
key over meanwhile (while the database is down, nobody can).  The handler is never
interrupted: if the key was taken over all the same, its answer is fenced when it
is recorded, and the delivery gets the other attempt's answer, or 5xx.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TypeVar

import anyio

from orderfsm.errors import JournalError
from transports.journal.core import ANSWER_RETRY, Taken
from transports.journal.journal import Journal

logger = logging.getLogger("orderfsm.journal")
T = TypeVar("T")


async def holding(journal: Journal, taken: Taken, call: Awaitable[T]) -> T:
    """Await ``call`` (the handler) while ``taken``'s claim is renewed."""
    if taken.key is None:  # a delivery without a key always runs: nothing to hold
        return await call
    failed: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(_renew, journal, taken, name=f"orderfsm claim {taken.key}")
        try:
            result = await call
        except Exception as exc:  # raised as itself, not in a task group's
            failed = exc
        tg.cancel_scope.cancel()
    if failed is not None:
        raise failed
    return result


async def _renew(journal: Journal, taken: Taken) -> None:
    every = journal.settings.lease / 3
    delay, retry = every, ANSWER_RETRY[0]
    while True:
        await anyio.sleep(delay)
        try:
            held = await journal.renew(taken)
        except JournalError as exc:
            logger.warning("the claim of %s is not renewed yet: %s", taken.key, exc)
            delay, retry = min(retry, every), min(2 * retry, ANSWER_RETRY[1])
            continue
        if not held:
            logger.warning(
                "attempt %d of %s was taken over while its handler ran", taken.attempt, taken.key
            )
            return
        delay, retry = every, ANSWER_RETRY[0]
