"""Orders' first Get order requests, let through a few at a time.

Ten thousand orders tracked at once (a backend resuming after a restart, a
host waking from sleep) would each ask Get order at once, a check or a
poller's first request: a herd for Xsolla's API, and a loop so busy with
half-done requests that the journal's news for those same orders waited
seconds behind them (``bench_fleet.py``'s resume: 2 of its 3 s).  Only
``places`` such first requests run at once; the rest wait in a queue as plain
entries, not as tasks (ten thousand waiting tasks were some 60 MB).  A place
is given back at the first answer, or at the first pause for a trouble of the
order's own (a 404 before the order shows, its user's token); after that,
requests are paced by their own answers and intervals, so they stay spread
out.  A 429, a 5xx or no answer at all keeps the place through its first pause
(given back at the next answer, whatever it is): the next order's first
request would most likely meet the same trouble, so a rate-limited Xsolla
gets ``places`` first requests per ``Retry-After``, not one per order; and an
order whose own requests keep failing holds back the others for one pause only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

STARTING_AT_ONCE = 64
"""Orders' first Get order requests (checks, and pollers' first) under way at once."""
KEPT_AT_MOST = 30.0
"""Seconds a place is kept through the service's "not now": a longer ``Retry-After``
(an hour, say) gives it back at once, or 64 orders told so would hold back every
other order's first request for that long."""


class Place:
    """One start's place among those under way; given back once (again is a no-op)."""

    __slots__ = ("_admission", "_kept")

    def __init__(self, admission: Admission | None) -> None:
        self._admission = admission
        self._kept = False

    @property
    def held(self) -> bool:
        return self._admission is not None

    def give_back(self) -> None:
        admission, self._admission = self._admission, None
        if admission is not None:
            admission._given_back()

    def answered(self, busy_pause: float | None = None) -> None:
        """Its request has an answer; ``busy_pause``: the service said "not now" (or did
        not answer), and the next request waits that many seconds.  The place is kept
        through the first such pause, if short enough, and given back otherwise."""
        if busy_pause is not None and not self._kept and busy_pause <= KEPT_AT_MOST:
            self._kept = True
        else:
            self.give_back()


class Admission:
    """At most ``places`` starts under way; queued entries start in their turn, those
    queued ``later`` (orders taken over from the journal) after every other."""

    __slots__ = ("_later", "_queue", "_taken", "places")

    def __init__(self, places: int) -> None:
        self.places = places
        self._queue: deque[Callable[[Place], bool]] = deque()
        self._later: deque[Callable[[Place], bool]] = deque()
        self._taken = 0

    def __len__(self) -> int:
        """Entries waiting for their turn."""
        return len(self._queue) + len(self._later)

    def queue(self, start: Callable[[Place], bool], later: bool = False) -> None:
        """Call ``start(place)`` once a place is free (now, if one is).  It returns
        whether it started (and gives the place back later); an entry whose order
        ended while it waited starts nothing, and its place goes to the next.

        ``later``: behind every entry not queued so.  A restart resuming ten
        thousand orders must not keep a player who buys now waiting for all of
        them (minutes, when Xsolla answers slowly)."""
        (self._later if later else self._queue).append(start)
        self._admit()

    def clear(self) -> None:
        self._queue.clear()
        self._later.clear()

    def _given_back(self) -> None:
        self._taken -= 1
        self._admit()

    def _admit(self) -> None:
        while self._taken < self.places:
            queue = self._queue or self._later
            if not queue:
                return
            place = Place(self)
            self._taken += 1
            started = False
            try:
                started = queue.popleft()(place)
            finally:  # nothing started, or it raised (a task group closing): not lost
                if not started:
                    place._admission = None
                    self._taken -= 1
