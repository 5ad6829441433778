"""Webhook test helpers: Xsolla's reference data, and a receiver served for real on loopback.

``serve_receiver`` runs aiohttp.web (asyncio only) or the ASGI app under
hypercorn (asyncio and trio), through the shipped ``transports.webhook.serve``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
import pytest

from transports.backend import on_asyncio
from transports.webhook import (
    Notification,
    SyncWebhookReceiver,
    WebhookReceiver,
    authorization_header,
)
from transports.webhook import serve_receiver as serve_webhooks
from transports.webhook.endpoints import Endpoints

KINDS = ["aiohttp", "asgi"]

SECRET = "PROJECT_SECRET_KEY"


def order_paid(order_id: int = 689810880, kind: str = "order_paid", **extra: Any) -> bytes:
    # Key order as in a real capture: items first, not notification_type.
    body = {
        "items": [
            {
                "sku": "com.xsolla.item_1",
                "type": "virtual_good",
                "quantity": 1,
                "amount": "1.99",
                "promotions": [],
                "is_pre_order": False,
                "is_free": "false",
            }
        ],
        "notification_type": kind,
        "order": {
            "id": order_id,
            "mode": "sandbox",
            "currency_type": "real",
            "currency": "USD",
            "amount": "1.9900",
            "status": "paid",
            "platform": "xsolla",
            "comment": None,
            "invoice_id": "1234567890",
        },
        "user": {"external_id": "user-1", "email": "a@example.com", "country": "US"},
        **extra,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"Authorization": authorization_header(body, secret), "Content-Type": "application/json"}


# xsolla.md §5.4: sha1(body + "PROJECT_SECRET_KEY"), bodies exactly as shown.
VECTORS = [
    (b'{"notification_type": "order_paid"}', "7a26ac37af1c6225a34c3657c4b56e7c16cfe651"),
    (b'{"notification_type": "order_canceled"}', "6adc79ede9f19b2d78831468c82ef3e53ef12b32"),
    (b'{"notification_type": "payment"}', "89404631c86da9f508954da7b50799199a6b1d3a"),
    (b'{"notification_type": "user_validation"}', "aa484089c3488897042406bb6b5666d585e10620"),
    (b"", "78143a5ac4b892a68ce8b0b8b49e26667db0fa07"),
]


class Recorder:
    """An application handler that remembers what it handled, failing on demand."""

    def __init__(self, fail_times: int = 0, delay: float = 0.0) -> None:
        self.fail_times = fail_times
        self.delay = delay
        self.handled: list[Notification] = []
        self.calls = 0

    async def __call__(self, notification: Notification) -> None:
        self.calls += 1
        await anyio.sleep(self.delay)
        if self.fail_times:
            self.fail_times -= 1
            raise RuntimeError("database is down")
        self.handled.append(notification)


@asynccontextmanager
async def serve_receiver(
    receiver: WebhookReceiver, kind: str, endpoints: Endpoints | None = None
) -> AsyncIterator[str]:
    """The receiver's URL (``.../webhook``), served by aiohttp.web or as ASGI by hypercorn."""
    if kind == "aiohttp" and not on_asyncio():
        pytest.skip("aiohttp.web serves on asyncio only; trio uses the ASGI app")
    server: Literal["aiohttp", "asgi"] = "aiohttp" if kind == "aiohttp" else "asgi"
    async with serve_webhooks(receiver, server=server, endpoints=endpoints) as url:
        yield url


async def answer_of(
    receiver: WebhookReceiver | SyncWebhookReceiver, headers: dict[str, str], body: bytes
) -> int:
    """The status either receiver answers (the synchronous one from a worker thread)."""
    if isinstance(receiver, WebhookReceiver):
        return (await receiver.handle(headers, body)).status
    return (await anyio.to_thread.run_sync(receiver.handle, headers, body)).status
