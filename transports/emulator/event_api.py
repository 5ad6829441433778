"""Xsolla's Event API (xsolla.md §6): ``GET /events`` and ``POST /events/{id}/processed``.

Every ``order_paid`` / ``order_canceled`` notification becomes an event of
the order's owner, whose ``data`` is the webhook body.  A user sees only
their own events, authenticated like Get order (``Authorization: Bearer``)
or with a ``token`` query parameter.  Errors use the Store error shape, as
Get order's do; the real service's error bodies are undocumented, so clients
must key on the HTTP status.
"""

from __future__ import annotations

import anyio
from aiohttp import web

from transports.emulator.eventlog import PAGE_CAP, wire
from transports.emulator.rest import bearer_token, store_error, suffer
from transports.emulator.services import Services
from transports.emulator.state import User


def _whose(services: Services, request: web.Request) -> User | None:
    token = bearer_token(request) or request.query.get("token")
    return services.world.authenticate(token)


def _unauthorized() -> web.Response:
    return store_error(401, 1501, "Authorization failed: invalid or expired token")


def _count(raw: str | None, name: str, default: int) -> int | web.Response:
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        return store_error(400, 1400, f"{name} must be a non-negative integer, got {raw!r}")
    return int(raw)


def routes(services: Services) -> list[web.RouteDef]:
    async def events(request: web.Request) -> web.StreamResponse:
        services.events_requests += 1
        fault = services.get_order_faults.take(None, anyio.current_time(), "events")
        failed = await suffer(fault)
        if failed is not None:
            return failed
        user = _whose(services, request)
        if user is None:
            return _unauthorized()
        project = request.query.get("project_id")
        if project is not None and project != str(services.config.project_id):
            return store_error(404, 9002, f"Project {project!r} not found")
        after_id = _count(request.query.get("after_id"), "after_id", 0)
        if isinstance(after_id, web.Response):
            return after_id
        limit = _count(request.query.get("limit"), "limit", PAGE_CAP)
        if isinstance(limit, web.Response):
            return limit
        raw_types = request.query.get("types")
        types = None
        if raw_types:
            types = frozenset(t.strip() for t in raw_types.split(",") if t.strip())
        page = services.events.page(user.external_id, after_id, types, max(1, min(limit, PAGE_CAP)))
        return web.json_response({"events": [wire(e) for e in page]})

    async def processed(request: web.Request) -> web.StreamResponse:
        user = _whose(services, request)
        if user is None:
            return _unauthorized()
        raw_id = request.match_info["event_id"]
        event = None
        if raw_id.isdigit():
            event = services.events.mark_processed(user.external_id, int(raw_id))
        if event is None:
            return store_error(404, 9003, "Event not found")
        return web.Response(status=204)

    return [
        web.get("/events", events),
        web.post("/events/{event_id}/processed", processed),
    ]
