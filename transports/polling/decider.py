"""When to ask Get order again, and what each answer means: a sans-io decider.

The decider reads no clock and opens no socket.  The driver tells it what
happened (an answer, a transport error, a token failure) and the time, and
gets back a :class:`Step`: what to report, and what to do next (wait until a
moment, fetch a fresh token and ask again at once, finish, or fail).  Tests
drive it with plain numbers.  How to behave when answers go wrong (backoff,
jitter, giving up, one token refresh) is shared with the Event API reader
through :class:`~transports.http.pacing.Pacing`.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from orderfsm.core import Observation, Status
from orderfsm.core.settle import check_goal, verdict
from orderfsm.errors import TransportError
from orderfsm.interface import POLLING, Health, HealthReport
from transports.http.base import HttpResponse
from transports.http.pacing import (
    Fail,
    Outcome,
    Pacing,
    PacingConfig,
    RefreshToken,
    Wait,
    fraction,
    non_negative,
    optional_positive,
    positive,
)
from transports.polling.answers import (
    Busy,
    Got,
    Malformed,
    Misdirected,
    Rejected,
    Unexpected,
    classify,
)
from transports.polling.order import OrderDetails


@attrs.frozen
class PollConfig:
    """Timing of the poller; the defaults follow Xsolla's advice (3 s between requests)."""

    interval: float = attrs.field(default=3.0, validator=positive)
    """Seconds from one answer to the next request."""
    jitter: float = attrs.field(default=0.1, validator=fraction)
    """Each wait is stretched or shrunk by up to this fraction, so that many
    trackers started together drift apart instead of polling in lockstep."""
    first_delay: float = attrs.field(default=0.0, validator=non_negative)
    """Seconds before the first request."""
    not_found_grace: float = attrs.field(default=60.0, validator=non_negative)
    """How long 404 is taken to mean "not visible yet" before it means "no such order"."""
    backoff_max: float = attrs.field(default=60.0, validator=positive)
    """Longest wait after repeated failures (it doubles from ``interval``)."""
    give_up_after: float | None = attrs.field(default=None, validator=optional_positive)
    """Fail with ``ServiceUnavailable`` after failing this long without a good
    answer; ``None`` keeps trying and leaves the decision to the supervisor."""
    request_timeout: float = attrs.field(default=10.0, validator=positive)
    """Seconds for one whole request."""
    until: Status = attrs.field(default=Status.DONE, converter=check_goal)
    """Polling ends once the order is settled for this goal (``done``, or ``paid``
    for a server that grants on payment) or refunded.  An ``expired`` order is
    polled on: a payment under way can still complete (stop it when you give up)."""


@attrs.frozen
class Finish:
    """The order is settled (see ``PollConfig.until``); polling is over."""

    details: OrderDetails


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
    busy: bool = False
    """The service said "not now" (429, 5xx, 408, 409, 422, 425) or did not answer:
    most likely trouble of the service, or of the way to it, that the next order's
    request would meet as well."""


class PollDecider:
    """The state of one order's poller, between answers.

    What an answer means is decided here; when to ask again after a failure
    is the shared :class:`~transports.http.pacing.Pacing` policy.
    """

    def __init__(self, order_id: int, config: PollConfig, random: Callable[[], float]) -> None:
        self.order_id = order_id
        self.config = config
        self._pacing = Pacing(
            PacingConfig.of(config), random, source=POLLING, subject=f"order {order_id}"
        )
        self._reported_status: str | None = None
        self._not_found_since: float | None = None

    @property
    def health(self) -> Health | None:
        return self._pacing.health

    def start(self, now: float) -> Step:
        return Step(
            Wait(now + self.config.first_delay),
            health=self._pacing.report(Health.CONNECTING, now, "polling Get order"),
        )

    def on_response(
        self, response: HttpResponse, now: float, wall_now: float | None = None
    ) -> Step:
        """An answer arrived at ``now``; ``wall_now`` (Unix time) reads a dated ``Retry-After``."""
        self._check_running()
        verdict = classify(response, self.order_id, wall_now)
        if isinstance(verdict, (Rejected, Busy, Unexpected)):
            busy = isinstance(verdict, Busy)
            return self._paced(self._pacing.judge(verdict, self.order_id, now), busy)
        if isinstance(verdict, Malformed):
            return self._paced(self._pacing.unusable(verdict.error, now))
        if isinstance(verdict, Misdirected):
            return self._paced(self._pacing.fail(verdict.exception(self.order_id), now))
        if isinstance(verdict, Got):
            return self._got(verdict.details, now)
        self._pacing.not_rejected()
        if self._not_found_since is None:
            self._not_found_since = now
        if now - self._not_found_since >= self.config.not_found_grace:
            return self._paced(self._pacing.fail(verdict.exception(self.order_id), now))
        return Step(Wait(self._pacing.next_poll(now)))

    def on_error(self, error: TransportError, now: float) -> Step:
        """No answer: a timeout, a refused or dropped connection, a broken response."""
        self._check_running()
        return self._paced(self._pacing.unusable(error, now), busy=True)

    def on_token_error(self, error: BaseException, now: float) -> Step:
        """The caller's token callable raised (or returned a non-token)."""
        self._check_running()
        return self._paced(self._pacing.token_failed(error, now))

    # --- internals ----------------------------------------------------------

    def _check_running(self) -> None:
        if self._pacing.over:
            raise RuntimeError("the poller already finished or failed")

    def _paced(self, outcome: Outcome, busy: bool = False) -> Step:
        return Step(outcome.next, health=outcome.health, busy=busy)

    def _got(self, details: OrderDetails, now: float) -> Step:
        self._not_found_since = None
        self._pacing.recovered()
        status = details.known_status
        warning = None
        observation = None
        if status is None:
            warning = f"order {self.order_id}: ignoring unknown status {details.status!r}"
        elif details.status != self._reported_status:
            self._reported_status = details.status
            observation = Observation(self.order_id, status, source=POLLING, at=now, raw=details)
        if status is not None and verdict(status, self.config.until).settled:
            health = self._pacing.finish(now, f"settled: {status}")
            return Step(Finish(details), observation, health, warning)
        health = self._pacing.report(Health.HEALTHY, now, "Get order answered")
        return Step(Wait(self._pacing.next_poll(now)), observation, health, warning)


__all__ = ["Fail", "Finish", "Next", "PollConfig", "PollDecider", "RefreshToken", "Step", "Wait"]
