"""The checks every delivery passes before anything runs: signature, then shape.

Pure apart from the clock read for ``received_at``: headers and raw bytes in,
a :class:`Verified` delivery (the record to handle and what the journal
keeps) or a :class:`Refused` one (the answer, and what was wrong) out.  A
refusal is logged with its reason, never the header's value.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping

import attrs

from orderfsm.errors import InvalidPayload, InvalidSignature, WebhookError
from orderfsm.journal import NewDelivery
from transports.webhook.answers import WebhookAnswer, error_answer
from transports.webhook.errors import status_for
from transports.webhook.records import (
    Notification,
    idempotency_key,
    order_id_of,
    parse_notification,
)
from transports.webhook.signature import verify

Headers = Mapping[str, str] | Iterable[tuple[str, str]]

KEPT_HEADERS = ("authorization", "content-type")
"""What a stored delivery keeps of its headers: enough to verify it again."""

logger = logging.getLogger("orderfsm.webhook")


def _pairs(headers: Headers) -> Iterable[tuple[str, str]]:
    return headers.items() if isinstance(headers, Mapping) else headers


def _header(headers: Headers, name: str) -> str | None:
    """The single value of ``name``, case-insensitively; two values count as none."""
    found = [value for key, value in _pairs(headers) if key.lower() == name]
    return found[0] if len(found) == 1 else None


def signed(secret: str | bytes, headers: Headers, body: bytes) -> bool:
    """Whether ``body`` carries a valid signature with ``secret``, nothing logged."""
    try:
        verify(_header(headers, "authorization"), body, secret)
    except InvalidSignature:
        return False
    return True


def refusal(error: WebhookError) -> WebhookAnswer:
    return error_answer(status_for(error), error.code, str(error) or error.code)


@attrs.frozen
class Verified:
    """A delivery that passed every check: what the handler and the journal need."""

    notification: Notification
    delivery: NewDelivery


@attrs.frozen
class Refused:
    """A delivery that did not pass: the answer, and what was wrong (``forged``, ``invalid``)."""

    answer: WebhookAnswer
    outcome: str


def verified(
    secret: str | bytes, headers: Headers, body: bytes, peer: str | None
) -> Verified | Refused:
    """Verify and parse one delivery: the record to handle, or the refusal to answer."""
    try:
        verify(_header(headers, "authorization"), body, secret)
        notification = parse_notification(body)
    except (InvalidSignature, InvalidPayload) as exc:
        outcome = "forged" if isinstance(exc, InvalidSignature) else "invalid"
        logger.info(
            "refused a webhook from %s: %s",
            peer,
            exc,
            extra={"event": "webhook.refused", "peer": peer, "outcome": outcome},
        )
        return Refused(refusal(exc), outcome)
    kept = tuple((k, v) for k, v in _pairs(headers) if k.lower() in KEPT_HEADERS)
    delivery = NewDelivery(
        kind=notification.notification_type,
        key=idempotency_key(notification, body),
        order_id=order_id_of(notification),
        body=body,
        headers=kept,
        peer=peer,
        received_at=time.time(),
    )
    return Verified(notification, delivery)
