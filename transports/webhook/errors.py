"""Refusals the application's handler may raise, and the receiver's own refusals.

Each class carries Xsolla's error ``code`` and the HTTP ``status`` answered.
Raising one of the 400s from a handler is a deliberate answer: Xsolla does
not retry it (and, with auto-refund on, refunds an ``order_paid``), and a
repeated delivery gets the same answer.  Any other exception answers 500 so
that Xsolla retries.
"""

from __future__ import annotations

from orderfsm.errors import InvalidPayload, InvalidSignature, WebhookError


class InvalidUser(WebhookError):
    code = "INVALID_USER"


class IncorrectAmount(WebhookError):
    code = "INCORRECT_AMOUNT"


class IncorrectInvoice(WebhookError):
    code = "INCORRECT_INVOICE"


class ForbiddenSource(WebhookError):
    """A signed delivery's peer address is outside the allow-list: answered 503, so
    Xsolla retries (a 4xx to ``order_paid`` can refund the player at once)."""

    code = "INVALID_CLIENT_IP"


class BodyTooLarge(WebhookError):
    code = "INVALID_PARAMETER"


STATUS: dict[type[WebhookError], int] = {ForbiddenSource: 503, BodyTooLarge: 413}


def status_for(error: WebhookError) -> int:
    """400 for Xsolla's refusals, unless the class says otherwise."""
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


__all__ = [
    "BodyTooLarge",
    "ForbiddenSource",
    "IncorrectAmount",
    "IncorrectInvoice",
    "InvalidPayload",
    "InvalidSignature",
    "InvalidUser",
    "WebhookError",
    "status_for",
]
