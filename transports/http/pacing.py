"""When to ask an HTTP service again, and when to stop: one sans-io pacing object.

Get order polling and the Event API reader differ in what an answer means
but not in how to behave when answers go wrong: count the failures, back
off exponentially from the interval up to ``backoff_max``, spread every
wait with jitter so that trackers started together drift apart, never come
back earlier than ``Retry-After`` asks, fetch a fresh token once after a
rejection, give up after ``give_up_after``, and report each change of health
once.  That policy lives here so that the two transports cannot drift apart.

Like the engines that use it, :class:`Pacing` reads no clock and draws no
randomness of its own: time comes in as ``now``, and the random source is
passed in, so tests drive it with plain numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import attrs

from orderfsm.errors import OrderFsmError, ServiceUnavailable
from orderfsm.interface import Health, HealthReport
from transports.http.answers import Busy, Rejected, Unexpected
from transports.http.errors import TokenProviderFailed

TOKEN_ATTEMPTS = 5
"""Token callable failures in a row before a reader gives up (the WebSocket's too)."""
RETRY_AFTER_MAX = 300.0
"""A ``Retry-After`` is honoured up to this many seconds: a day's (a year's) is a
server's bug or a rate limiter's penalty box, and slept out it leaves the order
unread past any deadline (the tracker's one-off checks stop at the same bound)."""


def positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    """attrs validator: a finite number above zero."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a positive number, got {value!r}")


def non_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    """attrs validator: a finite number, zero allowed."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a non-negative number, got {value!r}")


def fraction(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    """attrs validator: a share of a wait, below one so that a wait never reaches zero."""
    if not (isinstance(value, (int, float)) and 0 <= value < 1):
        raise ValueError(f"{attribute.name} must be in [0, 1), got {value!r}")


def optional_positive(_: object, attribute: attrs.Attribute[float | None], value: object) -> None:
    """attrs validator: ``None`` (no limit) or a positive number."""
    if value is not None:
        positive(_, attribute, value)  # type: ignore[arg-type]


@attrs.frozen
class Wait:
    """Ask again at ``until`` (on the same clock as ``now``), with the current token."""

    until: float


@attrs.frozen
class RefreshToken:
    """Fetch a fresh token and ask again at once."""


@attrs.frozen
class Fail:
    """The transport cannot go on; ``error`` says why."""

    error: OrderFsmError


class Timing(Protocol):
    """The part of a transport's own config that pacing reads."""

    @property
    def interval(self) -> float: ...

    @property
    def jitter(self) -> float: ...

    @property
    def backoff_max(self) -> float: ...

    @property
    def give_up_after(self) -> float | None: ...


@attrs.frozen
class PacingConfig:
    """The pacing policy; each transport's config carries these under the same names."""

    interval: float = attrs.field(validator=positive)
    """Seconds between requests while all is well, and the first backoff."""
    jitter: float = attrs.field(validator=fraction)
    """Each wait is stretched or shrunk by up to this fraction."""
    backoff_max: float = attrs.field(validator=positive)
    """Longest wait after repeated failures (it doubles from ``interval``)."""
    give_up_after: float | None = attrs.field(default=None, validator=optional_positive)
    """Fail with ``ServiceUnavailable`` after failing this long; ``None``: keep trying."""

    @classmethod
    def of(cls, timing: Timing) -> PacingConfig:
        return cls(timing.interval, timing.jitter, timing.backoff_max, timing.give_up_after)


@attrs.frozen
class Outcome:
    """What to do after a failure, and the health change it caused (if any)."""

    next: Wait | RefreshToken | Fail
    health: HealthReport | None = None


class Pacing:
    """The failure state of one reader of one service, between answers.

    The engine that owns it decides what an answer means and hands the
    failures here; each method returns the :class:`Outcome` to act on.
    ``source`` names the transport in health reports; ``subject`` ("order 7")
    and ``answer`` ("Event API answer") word the errors it raises itself.
    """

    def __init__(
        self,
        config: PacingConfig,
        random: Callable[[], float],
        *,
        source: str,
        subject: str,
        answer: str = "answer",
    ) -> None:
        self.config = config
        self._random = random
        self._source = source
        self._subject = subject
        self._answer = answer
        self._health: Health | None = None
        self._failing_since: float | None = None
        self._failures = 0
        self._token_failures = 0
        self._refreshed = False
        self._over = False

    @property
    def health(self) -> Health | None:
        return self._health

    @property
    def over(self) -> bool:
        """Finished or failed: the reader must not be fed any more."""
        return self._over

    def report(
        self, health: Health, now: float, reason: str, error: OrderFsmError | None = None
    ) -> HealthReport | None:
        """The report for moving to ``health``, or ``None`` if that is no change."""
        if health is self._health:
            return None
        self._health = health
        return HealthReport(self._source, health, now, reason, error)

    def jittered(self, delay: float) -> float:
        return delay * (1 + self.config.jitter * (2 * self._random() - 1))

    def next_poll(self, now: float) -> float:
        """When to ask again after an answer that was not a failure."""
        return now + self.jittered(self.config.interval)

    def recovered(self) -> None:
        """A good answer: the next failure backs off from ``interval`` again."""
        self._failing_since = None
        self._failures = 0
        self._token_failures = 0
        self._refreshed = False

    def not_rejected(self) -> None:
        """An answer that is neither good nor a 401/403: a later 401 earns a fresh token."""
        self._refreshed = False

    def judge(self, verdict: Rejected | Busy | Unexpected, order_id: int, now: float) -> Outcome:
        """An error answer that means the same from either service."""
        if isinstance(verdict, Rejected):
            # One fresh token; turned away again with it, the token is bad.
            if self._refreshed:
                return self.fail(verdict.exception(order_id), now)
            self._refreshed = True
            return Outcome(RefreshToken())
        self._refreshed = False
        if isinstance(verdict, Busy):
            return self.failed(verdict.exception(order_id), now, verdict.retry_after)
        return self.fail(verdict.exception(order_id), now)

    def unusable(self, error: OrderFsmError, now: float) -> Outcome:
        """No usable answer: none came (a timeout, a refused or dropped connection,
        a broken response), or it was not what the service documents."""
        self._refreshed = False
        return self.failed(error, now)

    def failed(self, error: OrderFsmError, now: float, retry_after: float | None = None) -> Outcome:
        """A passing failure: back off, unless it has lasted ``give_up_after``."""
        if self._failing_since is None:
            self._failing_since = now
        self._failures += 1
        if retry_after is not None:
            retry_after = min(retry_after, RETRY_AFTER_MAX)
        limit = self.config.give_up_after
        if limit is not None and now - self._failing_since >= limit:
            reason = f"no good {self._answer} for {now - self._failing_since:g} s"
            return self._give_up(reason, error, now)
        if (
            limit is not None
            and retry_after is not None
            and now + retry_after > self._failing_since + limit
        ):
            # No good answer can come before giving up without asking sooner than the
            # service allows: give up now, not after sleeping past the limit.
            reason = f"asked to come back in {retry_after:g} s, past give_up_after ({limit:g} s)"
            return self._give_up(reason, error, now)
        backoff = min(
            self.config.backoff_max, self.config.interval * 2 ** min(self._failures - 1, 32)
        )
        delay = self.jittered(backoff)
        if retry_after is not None:
            # Never earlier than asked; spread upwards only, so the crowd told
            # to come back at the same second does not return in one burst.
            delay = max(delay, retry_after * (1 + self.config.jitter * self._random()))
        return Outcome(Wait(now + delay), self.report(Health.DEGRADED, now, str(error), error))

    def _give_up(self, reason: str, error: OrderFsmError, now: float) -> Outcome:
        gave_up = ServiceUnavailable(f"{self._subject}: {reason}; last: {error}")
        gave_up.__cause__ = error
        return self.fail(gave_up, now)

    def token_failed(self, error: BaseException, now: float) -> Outcome:
        """The caller's token callable raised, timed out or returned a non-token: backed
        off like a 5xx (an application's token service has blips too; one must not end
        the polling of an order for good), and given up after :data:`TOKEN_ATTEMPTS`
        in a row, as the WebSocket does: a callable that always fails is a bug to
        name now, not a timeout ten minutes later."""
        if isinstance(error, TokenProviderFailed):
            failure = error
        else:
            failure = TokenProviderFailed(f"{self._subject}: token provider failed: {error!r}")
            failure.__cause__ = error
        self._token_failures += 1
        if self._token_failures >= TOKEN_ATTEMPTS:
            return self.fail(failure, now)
        return self.failed(failure, now)

    def fail(self, error: OrderFsmError, now: float) -> Outcome:
        """Stop for good."""
        self._over = True
        return Outcome(Fail(error), self.report(Health.FAILED, now, str(error), error))

    def finish(self, now: float, reason: str) -> HealthReport | None:
        """The reader's work is done (the order is final)."""
        self._over = True
        return self.report(Health.STOPPED, now, reason)


__all__ = [
    "RETRY_AFTER_MAX",
    "Fail",
    "Outcome",
    "Pacing",
    "PacingConfig",
    "RefreshToken",
    "Timing",
    "Wait",
    "fraction",
    "non_negative",
    "optional_positive",
    "positive",
]
