"""When to ask Get order again, and what each answer means: a sans-io decider.

The decider reads no clock and opens no socket.  The driver tells it what
happened (an answer, a transport error, a token failure) and the time, and
gets back a :class:`Step`: what to report, and what to do next (wait until a
moment, fetch a fresh token and ask again at once, finish, or fail).  Tests
drive it with plain numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs

from orderfsm.core import FINAL_STATUSES, Observation
from orderfsm.errors import OrderFsmError, ServiceUnavailable, TransportError
from orderfsm.interface import POLLING, Health, HealthReport
from transports.http.base import HttpResponse
from transports.polling.answers import Busy, Got, Malformed, NotFound, Rejected, classify
from transports.polling.errors import TokenProviderFailed
from transports.polling.order import OrderDetails


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a positive number, got {value!r}")


def _non_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a non-negative number, got {value!r}")


def _fraction(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, (int, float)) and 0 <= value < 1):
        raise ValueError(f"{attribute.name} must be in [0, 1), got {value!r}")


def _optional_positive(_: object, attribute: attrs.Attribute[float | None], value: object) -> None:
    if value is not None:
        _positive(_, attribute, value)  # type: ignore[arg-type]


@attrs.frozen
class PollConfig:
    """Timing of the poller; the defaults follow Xsolla's advice (3 s between requests)."""

    interval: float = attrs.field(default=3.0, validator=_positive)
    """Seconds from one answer to the next request."""
    jitter: float = attrs.field(default=0.1, validator=_fraction)
    """Each wait is stretched or shrunk by up to this fraction, so that many
    trackers started together drift apart instead of polling in lockstep."""
    first_delay: float = attrs.field(default=0.0, validator=_non_negative)
    """Seconds before the first request."""
    not_found_grace: float = attrs.field(default=60.0, validator=_non_negative)
    """How long 404 is taken to mean "not visible yet" before it means "no such order"."""
    backoff_max: float = attrs.field(default=60.0, validator=_positive)
    """Longest wait after repeated failures (it doubles from ``interval``)."""
    give_up_after: float | None = attrs.field(default=None, validator=_optional_positive)
    """Fail with ``ServiceUnavailable`` after failing this long without a good
    answer; ``None`` keeps trying and leaves the decision to the supervisor."""
    request_timeout: float = attrs.field(default=10.0, validator=_positive)
    """Seconds for one whole request."""


@attrs.frozen
class Wait:
    """Ask again at ``until`` (on the same clock as ``now``), with the current token."""

    until: float


@attrs.frozen
class RefreshToken:
    """Fetch a fresh token and ask again at once."""


@attrs.frozen
class Finish:
    """The order reached a final status; polling is over."""

    details: OrderDetails


@attrs.frozen
class Fail:
    """Polling cannot go on; ``error`` says why."""

    error: OrderFsmError


Next = Wait | RefreshToken | Finish | Fail


@attrs.frozen
class Step:
    next: Next
    observation: Observation | None = None
    """A status not reported before; ``observation.raw`` is the :class:`OrderDetails`."""
    health: HealthReport | None = None
    """Set only when the poller's health changes."""
    warning: str | None = None
    """Something worth logging that changes nothing (an unknown status)."""


class PollDecider:
    """The state of one order's poller, between answers."""

    def __init__(self, order_id: int, config: PollConfig, random: Callable[[], float]) -> None:
        self.order_id = order_id
        self.config = config
        self._random = random
        self._health: Health | None = None
        self._reported_status: str | None = None
        self._just_refreshed = False
        self._not_found_since: float | None = None
        self._failing_since: float | None = None
        self._failures = 0
        self._over = False

    @property
    def health(self) -> Health | None:
        return self._health

    def start(self, now: float) -> Step:
        return Step(
            Wait(now + self.config.first_delay),
            health=self._set_health(Health.CONNECTING, now, "polling Get order"),
        )

    def on_response(
        self, response: HttpResponse, now: float, wall_now: float | None = None
    ) -> Step:
        """An answer arrived at ``now``; ``wall_now`` (Unix time) reads a dated ``Retry-After``."""
        self._check_running()
        verdict = classify(response, self.order_id, wall_now)
        if isinstance(verdict, Rejected):
            if self._just_refreshed:
                return self._fail(verdict.exception(self.order_id), now)
            self._just_refreshed = True
            return Step(RefreshToken())
        self._just_refreshed = False
        if isinstance(verdict, Got):
            return self._got(verdict.details, now)
        if isinstance(verdict, NotFound):
            if self._not_found_since is None:
                self._not_found_since = now
            if now - self._not_found_since >= self.config.not_found_grace:
                return self._fail(verdict.exception(self.order_id), now)
            return Step(Wait(now + self._jittered(self.config.interval)))
        if isinstance(verdict, Busy):
            return self._failed_attempt(verdict.exception(self.order_id), now, verdict.retry_after)
        if isinstance(verdict, Malformed):
            return self._failed_attempt(verdict.error, now)
        return self._fail(verdict.exception(self.order_id), now)

    def on_error(self, error: TransportError, now: float) -> Step:
        """No answer: a timeout, a refused or dropped connection, a broken response."""
        self._check_running()
        self._just_refreshed = False
        return self._failed_attempt(error, now)

    def on_token_error(self, error: BaseException, now: float) -> Step:
        """The caller's token callable raised (or returned a non-token)."""
        self._check_running()
        if isinstance(error, TokenProviderFailed):
            failure = error
        else:
            failure = TokenProviderFailed(
                f"order {self.order_id}: token provider failed: {error!r}"
            )
            failure.__cause__ = error
        return self._fail(failure, now)

    # --- internals ----------------------------------------------------------

    def _check_running(self) -> None:
        if self._over:
            raise RuntimeError("the poller already finished or failed")

    def _got(self, details: OrderDetails, now: float) -> Step:
        self._not_found_since = None
        self._failing_since = None
        self._failures = 0
        status = details.known_status
        warning = None
        observation = None
        if status is None:
            warning = f"order {self.order_id}: ignoring unknown status {details.status!r}"
        elif details.status != self._reported_status:
            self._reported_status = details.status
            observation = Observation(self.order_id, status, source=POLLING, at=now, raw=details)
        if status in FINAL_STATUSES:
            self._over = True
            health = self._set_health(Health.STOPPED, now, f"final status {status}")
            return Step(Finish(details), observation, health, warning)
        health = self._set_health(Health.HEALTHY, now, "Get order answered")
        next_at = now + self._jittered(self.config.interval)
        return Step(Wait(next_at), observation, health, warning)

    def _failed_attempt(
        self, error: OrderFsmError, now: float, retry_after: float | None = None
    ) -> Step:
        if self._failing_since is None:
            self._failing_since = now
        self._failures += 1
        limit = self.config.give_up_after
        if limit is not None and now - self._failing_since >= limit:
            gave_up = ServiceUnavailable(
                f"order {self.order_id}: no good answer for {now - self._failing_since:g} s; "
                f"last: {error}"
            )
            gave_up.__cause__ = error
            return self._fail(gave_up, now)
        backoff = min(
            self.config.backoff_max, self.config.interval * 2 ** min(self._failures - 1, 32)
        )
        delay = self._jittered(backoff)
        if retry_after is not None:
            # Never earlier than asked; spread upwards only, so the crowd told
            # to come back at the same second does not return in one burst.
            delay = max(delay, retry_after * (1 + self.config.jitter * self._random()))
        health = self._set_health(Health.DEGRADED, now, str(error), error)
        return Step(Wait(now + delay), health=health)

    def _fail(self, error: OrderFsmError, now: float) -> Step:
        self._over = True
        health = self._set_health(Health.FAILED, now, str(error), error)
        return Step(Fail(error), health=health)

    def _jittered(self, delay: float) -> float:
        return delay * (1 + self.config.jitter * (2 * self._random() - 1))

    def _set_health(
        self, health: Health, now: float, reason: str, error: OrderFsmError | None = None
    ) -> HealthReport | None:
        if health is self._health:
            return None
        self._health = health
        return HealthReport(POLLING, health, now, reason, error)
