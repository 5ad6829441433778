"""Xsolla's webhook sender: realistic bodies, ``Signature`` header, retries.

Bodies follow xsolla.md §5.2 (combined mode, so ``billing`` is nested).  The
signature is ``sha1(raw body + secret)`` over the exact bytes sent, and a
delivery is retried on the configured (scaled-down) schedule until a 2xx, or
until one of the codes after which Xsolla stops retrying.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

import aiohttp
import anyio

from transports.emulator.records import WebhookAttempt
from transports.emulator.state import Order, StateError

DEFAULT_RETRY_INTERVALS: tuple[float, ...] = (0.05,) * 2 + (0.15,) * 7 + (0.6,) * 10
"""Xsolla's 2 x 5 min, 7 x 15 min, 10 x 60 min (19 retries), scaled by 1/6000."""

NO_RETRY_STATUSES = frozenset({400, 401, 402, 403, 404, 409, 415, 422})
"""Answers after which Xsolla gives up at once (xsolla.md §5.5)."""

NOTIFICATION_FOR_STATUS = {"paid": "order_paid", "canceled": "order_canceled"}

Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]


def sign(body: bytes, secret: str) -> str:
    return hashlib.sha1(body + secret.encode()).hexdigest()


def order_body(order: Order, notification_type: str, project_id: int, now: float) -> bytes:
    """The raw bytes of an ``order_paid`` / ``order_canceled`` webhook."""
    body = order_payload(order, notification_type, project_id, now)
    return json.dumps(body, separators=(",", ":")).encode()


def order_payload(
    order: Order, notification_type: str, project_id: int, now: float
) -> dict[str, Any]:
    """The webhook body as JSON data; the Event API hands out the same object."""
    paid = notification_type == "order_paid"
    payment_date = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    return {
        "items": [
            {
                "sku": item.sku,
                "type": item.type,
                "quantity": item.quantity,
                "amount": item.amount,
                "promotions": [],
                "is_pre_order": False,
            }
            for item in order.items
        ],
        "notification_type": notification_type,
        "order": {
            "id": order.order_id,
            "mode": "sandbox",
            "currency_type": "real",
            "currency": order.currency,
            "amount": order.amount,
            "status": "paid" if paid else "canceled",
            "platform": "xsolla",
            "comment": None,
            "invoice_id": order.invoice_id,
            "promotions": [],
            "coupons": [],
            "promocodes": [],
        },
        "user": {"external_id": order.user, "email": f"{order.user}@example.com", "country": "US"},
        "custom_parameters": {},
        "billing": {
            "notification_type": "payment" if paid else "refund",
            "settings": {"project_id": project_id, "merchant_id": 100000},
            "purchase": {"total": {"currency": order.currency, "amount": _number(order.amount)}},
            "transaction": {
                "id": int(order.invoice_id),
                "payment_method_order_id": f"pm-{order.invoice_id}",
                "dry_run": 1,
                "agreement": 1,
                "payment_date": payment_date,
                "payment_method": 1380,
                "payment_method_name": "Credit/debit cards",
            },
        },
    }


def _number(amount: str) -> float | str:
    try:
        return float(amount)
    except ValueError:
        return amount


class WebhookSender:
    def __init__(
        self,
        *,
        secret: str,
        url: str | None,
        retry_intervals: Sequence[float],
        timeout: float,
        spawn: Spawn,
    ) -> None:
        self.secret = secret
        self.urls: tuple[str, ...] = () if url is None else (url,)
        """Where to deliver: one after the other, attempt by attempt, as a load
        balancer in front of several receivers would spread them."""
        self._turn = 0
        self.retry_intervals = tuple(retry_intervals)
        self.timeout = timeout
        self.attempts: list[WebhookAttempt] = []
        self._by_order: dict[int, list[WebhookAttempt]] = {}
        self._spawn = spawn
        self._next_id = 1
        self._http: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str | None:
        return self.urls[0] if self.urls else None

    def configure(self, url: object, retry_intervals: object) -> None:
        """``url``: one URL, a list of them (attempts go round them), or null (none)."""
        urls = [url] if isinstance(url, str) else url
        if urls is not None and (
            not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls)
        ):
            raise StateError("url must be a string, a non-empty list of strings, or null")
        if retry_intervals is not None:
            if not isinstance(retry_intervals, list) or not all(
                isinstance(x, (int, float)) and x >= 0 for x in retry_intervals
            ):
                raise StateError("retry_intervals must be a list of non-negative numbers")
            self.retry_intervals = tuple(float(x) for x in retry_intervals)
        self.urls = () if urls is None else tuple(urls)

    def attempts_for(self, order_ids: Iterable[int] | None) -> list[WebhookAttempt]:
        """Every attempt, or those for these orders (indexed: a long soak asks often)."""
        if order_ids is None:
            return list(self.attempts)
        found = [a for oid in order_ids for a in self._by_order.get(oid, ())]
        return sorted(found, key=lambda a: (a.sent_at, a.delivery_id, a.attempt))

    def send(
        self, body: bytes, notification_type: str, order_id: int, *, bad_signature: bool
    ) -> int:
        """Start one delivery (with its retries) in the background; returns its id."""
        if not self.urls:
            raise StateError("no webhook URL configured")
        delivery_id = self._next_id
        self._next_id += 1
        good = sign(body, self.secret)
        signature = sign(body, self.secret + "-wrong") if bad_signature else good
        urls = self.urls

        async def deliver() -> None:
            await self._deliver(
                delivery_id, urls, body, signature, good, notification_type, order_id
            )

        self._spawn(deliver)
        return delivery_id

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _deliver(
        self,
        delivery_id: int,
        urls: tuple[str, ...],
        body: bytes,
        signature: str,
        good: str,
        notification_type: str,
        order_id: int,
    ) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        headers = {"Content-Type": "application/json", "Authorization": f"Signature {signature}"}
        for attempt in range(1, len(self.retry_intervals) + 2):
            url = urls[self._turn % len(urls)]
            self._turn += 1
            sent_at = time.time()
            status: int | None = None
            response, error = "", None
            try:
                limit = aiohttp.ClientTimeout(total=self.timeout)
                async with self._http.post(url, data=body, headers=headers, timeout=limit) as resp:
                    status = resp.status
                    response = (await resp.read()).decode("utf-8", "replace")
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            record = WebhookAttempt(
                delivery_id,
                attempt,
                notification_type,
                order_id,
                url,
                body.decode(),
                signature,
                signature == good,
                sent_at,
                status,
                response,
                error,
            )
            self.attempts.append(record)
            self._by_order.setdefault(order_id, []).append(record)
            if status is not None and (200 <= status < 300 or status in NO_RETRY_STATUSES):
                return
            if attempt <= len(self.retry_intervals):
                await anyio.sleep(self.retry_intervals[attempt - 1])
