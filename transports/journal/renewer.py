"""A plain handler's claim kept alive while it runs and until its answer is recorded: a
handler, or the write of its answer, slower than the lease must not let a duplicate
that finds the claim run out start the handler a second time.

One :class:`Renewer` per journal, a thread of its own, renews every running claim a
third of the lease after it was taken or last renewed, fenced by its attempt.  A
delivery only registers its claim (a dict insert) and drops it once its answer is
recorded (a pop): handlers are far shorter than a third of the lease, so almost none
is ever renewed, and the fast path costs no task, no timer, no write.  The thread
never needs waking for a new claim: it sleeps at most a third of the lease, and a
claim registered meanwhile is due no sooner than that after it.

A live owner renews; a SIGKILLed one stops renewing, so its claim still runs out one
lease after its last renewal, judged from the claim row alone.  A renewal that fails
(the database is down) is tried again, backing off from 50 ms to a second, and
logged once per outage, not per claim nor per try: the lease still covers two thirds
of itself, and a renewal that comes late still holds when nobody took the key over
meanwhile (while the database is down, nobody can).  The handler is never
interrupted and its claim never released early: if the key was taken over all the
same, its answer is fenced when it is recorded, and the delivery gets the other
attempt's answer, or 5xx.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from orderfsm.errors import JournalError

logger = logging.getLogger("orderfsm.journal")


class Renewer:
    """Renews the running claims registered with it, from one thread, started on the
    first claim and stopped by :meth:`stop` (the journal's close)."""

    def __init__(
        self,
        renew: Callable[[str, int], bool],
        every: float,
        retry: tuple[float, float] = (0.05, 1.0),
    ) -> None:
        self._renew = renew
        self.every = every
        self._retry = retry
        self._lock = threading.Lock()
        # key -> (attempt, when due on the monotonic clock); in the order they fall
        # due: every claim is due ``every`` after it was registered or renewed, and
        # a renewed one moves to the end, so the first is always the earliest.
        self._claims: dict[str, tuple[int, float]] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.renewals = 0
        """Renewals written (held or fenced), for tests and metrics."""

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def hold(self, key: str, attempt: int) -> None:
        """``attempt``'s handler starts: renew its claim until :meth:`drop`."""
        with self._lock:
            self._claims.pop(key, None)  # a key taken over here too goes last, in order
            self._claims[key] = (attempt, time.monotonic() + self.every)
            if self._thread is None and not self._stopping.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="orderfsm-claim-renewer", daemon=True
                )
                self._thread.start()

    def drop(self, key: str, attempt: int) -> None:
        """``attempt``'s answer is recorded (or could not be): renew its claim no
        more (a claim left unanswered runs out one lease later)."""
        with self._lock:
            if self._claims.get(key, (None,))[0] == attempt:
                del self._claims[key]

    @contextmanager
    def held(self, key: str | None, attempt: int) -> Iterator[None]:
        """The claim of ``key`` renewed while the block runs: the handler, then the
        recording of its answer (no awaits inside hold or drop: any loop, or none)."""
        if key is None:  # a delivery without a key: nothing to hold
            yield
            return
        self.hold(key, attempt)
        try:
            yield
        finally:
            self.drop(key, attempt)

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread (a renewal under way ends first, bounded by the store's
        deadline); no claim is renewed after."""
        self._stopping.set()
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def _due(self, now: float) -> list[tuple[str, int]] | float:
        """The claims due now, or the seconds until the first is."""
        due: list[tuple[str, int]] = []
        with self._lock:
            for key, (attempt, at) in self._claims.items():
                if at > now:  # and so are all after it
                    return due or at - now
                due.append((key, attempt))
        return due or self.every

    def _run(self) -> None:
        delay, retry, failing = 0.0, self._retry[0], False
        while not self._stopping.wait(delay):
            due = self._due(time.monotonic())
            if isinstance(due, float):
                delay = due
                continue
            trouble: Exception | None = None
            for key, attempt in due:
                try:
                    held = self._renew(key, attempt)
                except Exception as exc:  # one claim's trouble must not hold the others up
                    trouble = exc
                    continue
                self.renewals += 1
                self._renewed(key, attempt, held)
            if trouble is None:
                if failing:
                    logger.warning(
                        "running claims are renewed again",
                        extra={"event": "journal.back", "doing": "renewing claims"},
                    )
                delay, retry, failing = 0.0, self._retry[0], False
                continue
            if not isinstance(trouble, JournalError):  # a bug: tried again all the same
                logger.error(
                    "renewing a running claim failed; it is tried again",
                    exc_info=trouble,
                    extra={"event": "journal.renew_failed"},
                )
            elif not failing:
                logger.warning(
                    "running claims are not renewed yet (tried again until they are): %s",
                    trouble,
                    extra={"event": "journal.unavailable", "doing": "renewing claims"},
                )
            failing = True  # the claims that failed are still due: tried again after the pause
            delay, retry = retry, min(2 * retry, self._retry[1])

    def _renewed(self, key: str, attempt: int, held: bool) -> None:
        with self._lock:
            if self._claims.get(key, (None,))[0] != attempt:
                return  # its handler returned meanwhile: a fenced renewal says nothing
            del self._claims[key]
            if held:  # due again a third of a lease on, so last in order
                self._claims[key] = (attempt, time.monotonic() + self.every)
                return
        # Answered meanwhile (its drop not yet made), or taken over: then its answer
        # is fenced when recorded, and that is logged there.  Not a warning.
        logger.info(
            "attempt %d of %s is no longer running: not renewed",
            attempt,
            key,
            extra={"event": "journal.claim_lost", "key": key},
        )
