"""Whether this instance can still follow an order through Xsolla: what its lease means.

In a fleet the lease on an order says "this instance follows it through
Xsolla" (:mod:`orderfsm.supervisor.fleet_leases`).  An instance whose sources
for an order are over (a WebSocket-only tracker's socket at the end of its
lifespan, or failed for good; polling given up) keeps the order, following
the journal, since other instances' news still reaches its waiters; but
renewing the lease on it would keep the instances that poll from taking it,
and nobody would ask Xsolla any more (``done``, which no webhook says, never
heard).  So the scheduler judges, at each look at an order, whether this
instance can follow it, asking the policy what it would plan if this
instance held the lease; the fleet leases only the orders it can follow, and
lets go at once of the others (:func:`orderfsm.journal.orders.let_go`).

Kept apart from the scheduler's loop (:mod:`orderfsm.supervisor.runner`)
because it is the fleet's side of a plan: a tracker outside a fleet ends such
an order (``NoSourceLeft``) instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from orderfsm.supervisor.policy import Plan, Policy, Situation

if TYPE_CHECKING:
    from orderfsm.supervisor.order import TrackedOrder


def follows_xsolla(plan: Plan) -> bool:
    """Whether ``plan`` follows the order through Xsolla (a socket or polling)."""
    return plan.websocket or plan.poll_interval is not None


class HandsOver:
    """The scheduler's judgement of what it can follow (mixed into ``Scheduler``).

    A mixin rather than an object of its own: it reads the plan the scheduler
    made, and starts the last Get order the scheduler's checks make; what it
    uses of it is declared here.
    """

    policy: Policy

    if TYPE_CHECKING:

        def _looking_before_giving_up(self, order: TrackedOrder) -> bool: ...

        def _can_look(self, order: TrackedOrder) -> bool: ...

    def _judge_following(
        self, order: TrackedOrder, plan: Plan, situation: Situation, now: float
    ) -> float | None:
        """Note whether this instance can follow ``order`` through Xsolla, and give up
        owning it when it cannot (the fleet lets its lease go); a time to judge again
        that the plan does not give (``None``: none).

        An order this instance owns is followed while its plan has a source, or a
        last Get order is under way: before handing an order over, this instance asks
        Get order once more, as a tracker outside a fleet does before giving up (a
        payment the socket missed would otherwise wait for another instance's first
        look, or for nobody in a fleet where none polls).  For one it does not own,
        the policy is asked what it would plan if the lease were this instance's
        (the socket's lifespan ends, say, while another instance holds the order:
        that plan's review time is when to judge again).
        """
        review = None
        if order.owned:
            follows = (
                follows_xsolla(plan)
                or order.last_look is False
                or self._looking_before_giving_up(order)
            )
            if not follows:
                order.owned = False  # nothing to own: the journal is all it follows now
                order.let_go = True
                order.last_look = None  # a later lapse, or a later hand-over, looks again
        else:
            would = self.policy.plan(attrs.evolve(situation, owned=True), now)
            # An expired order's last look waiting for its owner's verdict: should the
            # owner go, this instance takes the order over and looks itself.  (Not one
            # that let the order go: it looks anyway, with no lease to take back.)
            waits = order.last_look is False and not order.let_go
            follows = follows_xsolla(would) or (waits and self._can_look(order))
            review = would.review_at
        if follows is not order.follows:
            order.follows = follows
            if order.fleet is not None:
                order.fleet.lease_soon()  # leased, or let go, now: not a third of a lease later
        return review
