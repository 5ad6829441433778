"""Reconnect delays: full jitter, as a pure function of the attempt and one random sample.

Same formula as centrifuge-js ``utils.backoff`` (and centrifuge-python
``_backoff``): the ceiling doubles with each failed attempt, and the delay is
drawn uniformly below it, so a crowd of clients cut off together does not come
back in lockstep.  The random sample is an argument so the function is
deterministic and tests need no seeding.  :class:`ReconnectDelays` picks which
attempt count and which floor apply after each connection the engine ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from transports.centrifuge.errors import ConfigError

if TYPE_CHECKING:
    from transports.centrifuge.config import EngineConfig

MAX_STEP = 31
"""Past this the doubling would only overflow; the ceiling is ``max_delay`` long before."""


def full_jitter(attempt: int, sample: float, *, min_delay: float, max_delay: float) -> float:
    """The delay before reconnect attempt number ``attempt`` (0 after a success).

    ``sample`` is a uniform draw from [0, 1].  The result lies in
    [``min_delay``, ``max_delay``]: ``min_delay`` plus a jitter that is at most
    ``min(max_delay, min_delay * 2**attempt)``.
    """
    if not 0.0 <= sample <= 1.0:
        raise ConfigError(f"sample must be in [0, 1], got {sample!r}")
    if not 0.0 <= min_delay <= max_delay:
        raise ConfigError(f"need 0 <= min_delay <= max_delay, got {min_delay}, {max_delay}")
    step = min(max(attempt, 0), MAX_STEP)
    ceiling = min(max_delay, min_delay * float(2**step))
    return min(max_delay, min_delay + sample * ceiling)


class ReconnectDelays:
    """How long to wait before each reconnect, by how the last connection went.

    Counts failed attempts since the last success and connections lost soon
    after catching up; the engine says when a connection succeeds or ends.
    """

    __slots__ = ("_attempts", "_config", "_random", "_short_lived")

    def __init__(self, config: EngineConfig, random: Callable[[], float]) -> None:
        self._config = config
        self._random = random
        self._attempts = 0
        self._short_lived = 0
        """Caught-up connections in a row that were lost before ``stable_after``."""

    def connected(self) -> None:
        self._attempts = 0

    def after(self, up_since: float | None, now: float) -> float:
        """The delay after a connection ended at ``now``; ``up_since`` is when it
        caught up (``None`` if it never did)."""
        config = self._config
        sample = self._sample()
        if up_since is None:
            delay = self._backoff(self._attempts, config.min_reconnect_delay, sample)
        elif now - up_since >= config.stable_after:
            # A connection that worked for a while dropped: most likely a passing
            # fault, and an order's news waits for the reconnect, so the first try
            # is at once (within a little jitter, as SignalR's first retry).
            self._short_lived = 0
            delay = sample * config.first_reconnect_delay
        else:
            # Caught up, then lost soon (a server shedding load, a proxy cycling):
            # never sooner than first_reconnect_delay, and doubling while it goes
            # on, so an accept-then-drop server cannot make a fast loop
            # (centrifuge-js #408), yet one extra close does not cost a full backoff.
            delay = self._backoff(self._short_lived, config.first_reconnect_delay, sample)
            self._short_lived += 1
        self._attempts += 1
        return delay

    def soon(self) -> float:
        """At once, within the jitter of a stable connection's first reconnect: a
        host's sockets cut together (the host awake after a sleep) do not all come
        back in one tick."""
        return self._sample() * self._config.first_reconnect_delay

    def retry(self, attempt: int) -> float:
        """The delay before retrying something that failed ``attempt`` times."""
        return self._backoff(attempt, self._config.min_reconnect_delay, self._sample())

    def _backoff(self, attempt: int, min_delay: float, sample: float) -> float:
        return full_jitter(
            attempt, sample, min_delay=min_delay, max_delay=self._config.max_reconnect_delay
        )

    def _sample(self) -> float:
        return min(max(self._random(), 0.0), 1.0)
