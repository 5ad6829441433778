"""Run the handler again on stored deliveries (after a handler bug is fixed), saying what
was done with each one: replayed with its answer, or skipped and why."""

from __future__ import annotations

import time

import attrs

from orderfsm.journal import Delivery, plan_replay
from transports.webhook.answers import WebhookAnswer
from transports.webhook.checks import Verified, verified
from transports.webhook.receiver import WebhookReceiver


@attrs.frozen
class Replayed:
    delivery: Delivery
    ran: bool
    """Whether the handler ran (as a new attempt of the delivery's key)."""
    reason: str
    answer: WebhookAnswer | None = None
    verified: bool = True
    """False when the stored body does not verify with the receiver's secret."""

    @property
    def failed(self) -> bool:
        """Not done: the handler failed again (5xx), or the body does not verify with
        this secret (the wrong one, most likely)."""
        return not self.verified or (self.answer is not None and self.answer.status >= 500)

    def describe(self) -> str:
        """One line for the operator."""
        what = f"delivery {self.delivery.id} ({self.delivery.kind}"
        what += f" {self.delivery.order_id})" if self.delivery.order_id is not None else ")"
        if not self.ran:
            return f"{what}: {'skipped' if self.answer is None else 'not run'}: {self.reason}"
        assert self.answer is not None
        return f"{what}: replayed ({self.reason}): answered {self.answer.status}"


async def replay(receiver: WebhookReceiver, delivery: Delivery, *, force: bool = False) -> Replayed:
    """Replay one stored delivery through ``receiver`` (its handler, its journal).

    The body is verified again with the receiver's secret; the run is a new
    attempt of the key, recorded like a delivery (marked as a replay), so
    the journal's rules hold: it never runs beside another attempt, and a
    handled or refused notification runs again only with ``force``.
    """
    checked = verified(receiver.secret, delivery.headers, delivery.body, "replay")
    if not isinstance(checked, Verified):
        reason = "its signature does not verify with this secret"
        return Replayed(delivery, False, reason, verified=False)
    key = checked.delivery.key
    if key is None:
        return Replayed(delivery, False, f"{delivery.kind} is never deduplicated nor replayed")
    claim = (await receiver.journal.claims([key])).get(key)
    plan = plan_replay(claim, force, time.time())
    if not plan.run:
        return Replayed(delivery, False, plan.reason)
    if plan.reopen is not None and not await receiver.journal.reopen(key, plan.reopen):
        return Replayed(delivery, False, "another attempt took the key meanwhile; look again")
    again = Verified(checked.notification, attrs.evolve(checked.delivery, replay=True))
    answer, ran = await receiver.handle_verified(again)
    if not ran and answer.status >= 500:
        # The journal failed, or another attempt held the key past ``wait``: nothing
        # ran, and nothing is known to have; a failure to run again, not a skip.
        reason = f"the journal failed or the key is busy ({answer.status}); run it again"
        return Replayed(delivery, False, reason, answer)
    if not ran:
        return Replayed(
            delivery, False, f"another delivery answered it meanwhile ({answer.status})"
        )
    return Replayed(delivery, True, plan.reason, answer)
