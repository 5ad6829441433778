"""``GET`` endpoints served beside the webhook: health, readiness, metrics.

An endpoint is an async function of nothing that returns the answer; the
aiohttp and ASGI adapters route ``GET path`` to it.  None is signed (Xsolla
does not call them, an orchestrator or a scraper does) and none is logged
at info: a probe every few seconds must not flood the logs.

* ``/healthz``: 200 ``{"status": "ok"}``, the process serves requests;
* ``/readyz``: 200 ``{"status": "ready", "journal": URL}`` when the journal
  answers within its wait and can write what this receiver's deliveries write (the
  orders' statuses too, with ``record_orders``): a read-only database, a standby, a
  full disk, a grant taken back would answer every delivery 5xx, and the load
  balancer should send them elsewhere (a lock held by a long writer is busy, not
  broken, and stays ready: :mod:`~transports.journal.readiness`); else 503
  ``{"status": "unavailable", "journal": URL, "error": ...}`` (``URL`` without its
  password);
* ``/metrics``: Prometheus' text format (``orderfsm[prometheus]``, see
  ``orderfsm.metrics.prometheus``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio

from orderfsm.errors import JournalError
from transports.webhook.answers import JSON, WebhookAnswer
from transports.webhook.receiver import WebhookReceiver

Endpoint = Callable[[], Awaitable[WebhookAnswer]]
Endpoints = Mapping[str, Endpoint]

READY_MARGIN = 1.0
"""Seconds beyond the journal's own wait that a readiness check may take."""

logger = logging.getLogger("orderfsm.webhook")


def _json(status: int, body: dict[str, Any]) -> WebhookAnswer:
    return WebhookAnswer(status, json.dumps(body).encode(), JSON)


def health_endpoints(receiver: WebhookReceiver) -> dict[str, Endpoint]:
    """``/healthz`` and ``/readyz`` for a receiver (readiness asks its journal once)."""
    journal = receiver.journal

    async def healthz() -> WebhookAnswer:
        return _json(200, {"status": "ok"})

    async def readyz() -> WebhookAnswer:
        try:
            with anyio.fail_after(journal.settings.wait + READY_MARGIN):
                await journal.ready(record_orders=receiver.record_orders)
        except (JournalError, TimeoutError) as exc:
            error = str(exc) or f"no answer within {journal.settings.wait + READY_MARGIN} s"
            logger.debug(
                "not ready: %s", error, extra={"event": "webhook.not_ready", "reason": error}
            )
            return _json(503, {"status": "unavailable", "journal": journal.display, "error": error})
        return _json(200, {"status": "ready", "journal": journal.display})

    return {"/healthz": healthz, "/readyz": readyz}
