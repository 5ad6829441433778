"""Receiving Xsolla webhooks: verify, deduplicate, dispatch, answer.

The core (:class:`WebhookReceiver`) knows no web framework; thin adapters
serve it with ``aiohttp.web`` (:func:`webhook_app`) or as a raw ASGI app
(:func:`asgi_app`), and the aiohttp one is imported only when asked for.
:class:`SyncWebhookReceiver` is the same for synchronous code (WSGI views).
Deduplication across processes and hosts is the journal's
(``transports.journal``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transports.webhook.answers import ACCEPTED, WebhookAnswer, error_answer
from transports.webhook.asgi import WebhookASGIApp, asgi_app
from transports.webhook.checks import Verified, verified
from transports.webhook.counters import DELIVERY_OUTCOMES, ReceiverStats
from transports.webhook.endpoints import Endpoint, health_endpoints
from transports.webhook.errors import (
    BodyTooLarge,
    ForbiddenSource,
    IncorrectAmount,
    IncorrectInvoice,
    InvalidPayload,
    InvalidSignature,
    InvalidUser,
    WebhookError,
)
from transports.webhook.networks import XSOLLA_NETWORKS, AllowList
from transports.webhook.receiver import (
    DEFAULT_MAX_BODY,
    Handler,
    TransactionalHandler,
    WebhookReceiver,
)
from transports.webhook.records import (
    Notification,
    OrderCanceled,
    OrderPaid,
    Payment,
    Refund,
    Transaction,
    UnknownNotification,
    UserValidation,
    WebhookItem,
    WebhookOrder,
    WebhookUser,
    idempotency_key,
    order_id_of,
    parse_notification,
)
from transports.webhook.serve import serve_aiohttp_app, serve_asgi_app, serve_receiver
from transports.webhook.signature import authorization_header, sign, verify
from transports.webhook.sync import SyncHandler, SyncWebhookReceiver

if TYPE_CHECKING:
    from transports.webhook.aiohttp_app import add_webhook_route, make_handler, webhook_app


def __getattr__(name: str) -> Any:
    if name in ("webhook_app", "add_webhook_route", "make_handler"):
        from transports.webhook import aiohttp_app

        return getattr(aiohttp_app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ACCEPTED",
    "DEFAULT_MAX_BODY",
    "DELIVERY_OUTCOMES",
    "XSOLLA_NETWORKS",
    "AllowList",
    "BodyTooLarge",
    "Endpoint",
    "ForbiddenSource",
    "Handler",
    "IncorrectAmount",
    "IncorrectInvoice",
    "InvalidPayload",
    "InvalidSignature",
    "InvalidUser",
    "Notification",
    "OrderCanceled",
    "OrderPaid",
    "Payment",
    "ReceiverStats",
    "Refund",
    "SyncHandler",
    "SyncWebhookReceiver",
    "Transaction",
    "TransactionalHandler",
    "UnknownNotification",
    "UserValidation",
    "Verified",
    "WebhookASGIApp",
    "WebhookAnswer",
    "WebhookError",
    "WebhookItem",
    "WebhookOrder",
    "WebhookReceiver",
    "WebhookUser",
    "add_webhook_route",
    "asgi_app",
    "authorization_header",
    "error_answer",
    "health_endpoints",
    "idempotency_key",
    "make_handler",
    "order_id_of",
    "parse_notification",
    "serve_aiohttp_app",
    "serve_asgi_app",
    "serve_receiver",
    "sign",
    "verified",
    "verify",
    "webhook_app",
]
