"""Get order: ``GET /api/v2/project/{project_id}/order/{order_id}``.

Answers as xsolla.md §3 documents: the 200 body with items and prices, and
errors in the Store shape ``{statusCode, errorCode, errorMessage}``.  Error
codes the docs do not give (401, 429, 5xx) use the emulator's own
``errorCode`` values; clients must key on the HTTP status.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
from aiohttp import web

from transports.emulator.faults import GetOrderFault
from transports.emulator.services import Services
from transports.emulator.state import Order

_REASONS = {401: "Unauthorized", 404: "Order not found", 429: "Too many requests"}


def store_error(status: int, error_code: int, message: str) -> web.Response:
    body = {
        "statusCode": status,
        "errorCode": error_code,
        "errorMessage": f"[0401-{error_code:04d}]: {message}",
    }
    return web.json_response(body, status=status)


def order_json(order: Order) -> dict[str, Any]:
    def price(amount: str) -> dict[str, str]:
        return {"amount": amount, "amount_without_discount": amount, "currency": order.currency}

    return {
        "order_id": order.order_id,
        "status": order.status,
        "content": {
            "price": price(order.amount),
            "is_free": False,
            "items": [
                {
                    "sku": item.sku,
                    "quantity": item.quantity,
                    "is_free": False,
                    "price": price(item.amount),
                }
                for item in order.items
            ],
        },
    }


async def suffer(fault: GetOrderFault | None) -> web.Response | None:
    """Play an injected fault: the error answer to send, or ``None`` to answer normally."""
    if fault is None:
        return None
    if fault.kind == "rate_limit":
        response = store_error(429, 1429, _REASONS[429])
        response.headers["Retry-After"] = str(fault.retry_after)
        return response
    if fault.kind == "error":
        reason = _REASONS.get(fault.status, "Internal server error")
        return store_error(fault.status, fault.status * 10 + 1, reason)
    await anyio.sleep(fault.delay)
    return None


def bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" else None


def routes(services: Services) -> list[web.RouteDef]:
    async def get_order(request: web.Request) -> web.StreamResponse:
        raw_id = request.match_info["order_id"]
        order_id = int(raw_id) if raw_id.isdigit() else None
        order = services.world.orders.get(order_id) if order_id is not None else None
        now = time.time()
        services.get_order_log.append({"order_id": raw_id, "at": now})
        if order is not None:
            order.get_order_requests.append(now)

        fault = services.get_order_faults.take(order_id, anyio.current_time())
        failed = await suffer(fault)
        if failed is not None:
            return failed

        user = services.world.authenticate(bearer_token(request))
        if user is None:
            return store_error(401, 1501, "Authorization failed: invalid or expired token")
        if (
            request.match_info["project_id"] != str(services.config.project_id)
            or order is None
            or order.user != user.external_id
        ):
            return store_error(404, 9001, _REASONS[404])
        return web.json_response(order_json(order))

    return [web.get("/api/v2/project/{project_id}/order/{order_id}", get_order)]
