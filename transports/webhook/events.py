"""What the receiver logs, in one place: stable event names, no secret.

A delivery's log line carries its type, order, answer and outcome, and the
peer; never its ``Authorization`` value or its body (which a refusal's
reason does not quote either).
"""

from __future__ import annotations

import logging

from orderfsm.errors import JournalError
from transports.webhook.answers import WebhookAnswer
from transports.webhook.checks import Verified

logger = logging.getLogger("orderfsm.webhook")


def log_answer(checked: Verified, answer: WebhookAnswer, outcome: str, peer: str | None) -> None:
    kind = checked.notification.notification_type
    level = logging.INFO if outcome == "ignored" else logging.DEBUG
    if logger.isEnabledFor(level):
        logger.log(
            level,
            "webhook %s answered %s (%s)",
            kind,
            answer.status,
            outcome,
            extra={
                "event": "webhook.answered",
                "notification_type": kind,
                "order_id": checked.delivery.order_id,
                "code": answer.status,
                "outcome": outcome,
                "peer": peer,
            },
        )


def journal_failed(when: str, error: JournalError, checked: Verified) -> None:
    logger.error(
        "the journal failed %s: %s",
        when,
        error,
        extra={"event": "journal.failed", "order_id": checked.delivery.order_id},
    )
