"""When to use which transport: a pure decision, time passed in.

Xsolla's guidance (``xsolla.md`` §2.4): open the WebSocket first, give it at
most five minutes, fall back to polling Get order every 3 s when it has
problems or its time is up, stop after ten minutes.  One rule is ours: an
``expired`` order is given a grace period (a payment already under way can
still move it to ``paid``), on the cheapest sources, before it counts as a
failure.  The policy turns that
into a :class:`Plan` for one order from a :class:`Situation` and ``now``; the
supervisor carries the plan out and asks again when something changes or at
``Plan.review_at``.  Because nothing here sleeps or reads a clock, every
timing rule is tested by passing numbers.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from orderfsm.interface import Health
from orderfsm.supervisor.arguments import seconds_field


@attrs.frozen
class Situation:
    """What the supervisor knows about one order's transports."""

    started_at: float
    """When tracking of the order began."""
    websocket: Health | None
    """The shared connection's health, or ``None`` when no WebSocket is configured."""
    websocket_since: float
    """When ``websocket`` last changed."""
    can_poll: bool = True
    """Whether a Get order poller is configured."""
    lapsed_since: float | None = None
    """When the order was seen ``expired``; ``None`` unless that is its status now."""
    owned: bool = True
    """This instance follows the order through Xsolla; in a fleet another one may,
    and this one follows the journal only."""


@attrs.frozen
class Plan:
    websocket: bool
    """Keep the order on the user's WebSocket."""
    poll_interval: float | None
    """Poll Get order this often, or not at all."""
    timed_out: bool = False
    """The deadline has passed: tracking ends with a timeout."""
    review_at: float | None = None
    """The plan may change at this time even if nothing else happens."""
    lapsed: bool = False
    """The order stayed ``expired`` through its grace (or until the deadline): it
    settles as expired, a failure."""


class Policy(Protocol):
    """Replaceable: any object with this method can steer the supervisor."""

    def plan(self, situation: Situation, now: float) -> Plan: ...


@attrs.frozen
class DefaultPolicy:
    """Each duration checked when the policy is made (a ``ValueError`` or ``TypeError``
    naming it): a poll interval of 0 was taken, and killed the tracker at the first
    dropped socket."""

    websocket_lifespan: float | None = attrs.field(
        default=300.0, validator=seconds_field(zero=True, none=True)
    )
    """How long the WebSocket may take to settle the order (``None``: forever)."""
    deadline: float | None = attrs.field(default=600.0, validator=seconds_field(none=True))
    """When tracking gives up with a timeout (``None``: never)."""
    poll_interval: float = attrs.field(default=3.0, validator=seconds_field())
    """Polling cadence while the WebSocket cannot be relied on."""
    safety_poll_interval: float | None = attrs.field(
        default=None, validator=seconds_field(none=True)
    )
    """A slow poll even while the WebSocket is healthy, to bound the delay when a
    socket dies silently; off by default (zero extra load)."""
    connect_grace: float = attrs.field(default=10.0, validator=seconds_field(zero=True))
    """How long a first connection may take before polling starts alongside it."""
    expired_grace: float = attrs.field(default=600.0, validator=seconds_field(zero=True))
    """How long an ``expired`` order is still followed before it counts as a failure:
    long enough for a payment already under way (a bank's 3-D Secure page, say) to
    complete; the deadline, if sooner, ends it too."""
    expired_poll_interval: float = attrs.field(default=15.0, validator=seconds_field())
    """Polling cadence during the grace, when polling is needed at all: a payment
    after expiry is rare, so it is not worth Xsolla's 3 s cadence."""

    def plan(self, situation: Situation, now: float) -> Plan:
        reviews: list[float] = []
        deadline_at = None if self.deadline is None else situation.started_at + self.deadline
        lapsed_since = situation.lapsed_since
        if lapsed_since is not None:
            grace_ends = lapsed_since + self.expired_grace
            if deadline_at is not None and deadline_at < grace_ends:
                grace_ends = deadline_at
            if now >= grace_ends:
                return Plan(websocket=False, poll_interval=None, lapsed=True)
            reviews.append(grace_ends)
        elif deadline_at is not None:
            if now >= deadline_at:
                return Plan(websocket=False, poll_interval=None, timed_out=True)
            reviews.append(deadline_at)

        if not situation.owned:
            review = min(reviews) if reviews else None
            return Plan(websocket=False, poll_interval=None, review_at=review)

        health = situation.websocket
        websocket = health is not None and health not in (Health.FAILED, Health.STOPPED)
        if websocket and self.websocket_lifespan is not None:
            lifespan_ends = situation.started_at + self.websocket_lifespan
            websocket = now < lifespan_ends
            if websocket:
                reviews.append(lifespan_ends)

        poll: float | None = self.poll_interval
        if websocket:
            if health is Health.HEALTHY:
                poll = self.safety_poll_interval
            elif health is Health.CONNECTING:
                connected_by = situation.websocket_since + self.connect_grace
                if now < connected_by:
                    poll = None
                    reviews.append(connected_by)
        if not situation.can_poll:
            poll = None
        elif poll is not None and lapsed_since is not None:
            poll = max(poll, self.expired_poll_interval)
        return Plan(
            websocket=websocket,
            poll_interval=poll,
            review_at=min(reviews) if reviews else None,
        )
