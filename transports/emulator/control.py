"""The control surface: plain HTTP + JSON under ``/control/`` (see API.md).

It is the only way to drive the emulator, so tests in any language, the
Python client and a subprocess emulator all go through the same code.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from aiohttp import web

from transports.emulator.lifecycle import MOVES
from transports.emulator.services import Services
from transports.emulator.state import StateError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _ok(payload: Any = None) -> web.Response:
    return web.json_response({} if payload is None else payload)


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise StateError(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise StateError("body must be a JSON object")
    return body


def _int(value: object, name: str, default: int | None = None) -> int:
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise StateError(f"{name} must be an integer")
    return value


def _seconds(value: object, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise StateError(f"{name} must be a non-negative number")
    return float(value)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except StateError as exc:
        body: dict[str, Any] = {"error": str(exc)}
        if exc.error_code is not None:
            body["errorCode"] = exc.error_code
        return web.json_response(body, status=exc.status)


def routes(s: Services, request_shutdown: Callable[[], None]) -> list[web.RouteDef]:
    w, hub = s.world, s.hub

    def user_of(request: web.Request) -> str:
        return w.user(request.match_info["user"]).external_id

    async def info(request: web.Request) -> web.Response:
        return _ok(s.info())

    async def create_user(request: web.Request) -> web.Response:
        body = await _body(request)
        user, token = w.create_user(body.get("external_id"), _now())
        return _ok({"external_id": user.external_id, "token": token, "channel": user.channel})

    async def issue_token(request: web.Request) -> web.Response:
        return _ok({"token": w.issue_token(user_of(request), _now())})

    async def revoke(request: web.Request) -> web.Response:
        w.revoke((await _body(request)).get("token"))
        return _ok()

    async def create_order(request: web.Request) -> web.Response:
        return _ok({"order_id": s.create_order(await _body(request))})

    async def get_order(request: web.Request) -> web.Response:
        return _ok(w.order(request.match_info["order_id"]).to_json())

    async def set_status(request: web.Request) -> web.Response:
        body = await _body(request)
        pub = s.set_status(
            request.match_info["order_id"],
            body.get("status"),
            publish=bool(body.get("publish", True)),
            webhook=bool(body.get("webhook", True)),
        )
        return _ok({"publication": None if pub is None else pub.to_json()})

    def move(action: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            pub = s.move(request.match_info["order_id"], action)
            return _ok({"publication": None if pub is None else pub.to_json()})

        return handler

    async def script(request: web.Request) -> web.Response:
        s.run_script(request.match_info["order_id"], (await _body(request)).get("steps"))
        return _ok()

    async def publish(request: web.Request) -> web.Response:
        body = await _body(request)
        if "data" not in body:
            raise StateError("data is required")
        return _ok({"publication": hub.publish(user_of(request), body["data"]).to_json()})

    async def close(request: web.Request) -> web.Response:
        body = await _body(request)
        code = _int(body.get("code"), "code", 3000)
        if not 3000 <= code <= 4999:
            raise StateError("code must be in 3000..4999")
        reason = body.get("reason")
        reason = reason if isinstance(reason, str) else ""
        return _ok({"count": hub.close_user(user_of(request), code, reason[:120])})

    async def unsubscribe(request: web.Request) -> web.Response:
        body = await _body(request)
        code = _int(body.get("code"), "code", 2000)
        reason = body.get("reason")
        reason = reason if isinstance(reason, str) else "server unsubscribe"
        return _ok({"count": hub.unsubscribe_user(user_of(request), code, reason[:120])})

    async def withhold_channel(request: web.Request) -> web.Response:
        hub.withhold_channel(user_of(request))
        return _ok({})

    async def give_channel(request: web.Request) -> web.Response:
        return _ok({"count": hub.give_channel(user_of(request))})

    async def drop(request: web.Request) -> web.Response:
        return _ok({"count": hub.drop_user(user_of(request))})

    async def stall(request: web.Request) -> web.Response:
        seconds = _seconds((await _body(request)).get("seconds"), "seconds")
        return _ok({"count": hub.stall_user(user_of(request), seconds)})

    async def suspend(request: web.Request) -> web.Response:
        return _ok({"count": hub.suspend(user_of(request))})

    async def resume(request: web.Request) -> web.Response:
        hub.resume(user_of(request))
        return _ok()

    async def pings(request: web.Request) -> web.Response:
        body = await _body(request)
        enabled = body.get("enabled")
        if not isinstance(enabled, bool):
            raise StateError("enabled must be true or false")
        user = body.get("user")
        hub.set_pings(enabled, None if user is None else w.user(user).external_id)
        return _ok()

    async def duplicate(request: web.Request) -> web.Response:
        count = _int((await _body(request)).get("count"), "count", 1)
        hub.faults_for(user_of(request)).duplicate += count
        return _ok()

    async def reorder(request: web.Request) -> web.Response:
        count = _int((await _body(request)).get("count"), "count", 2)
        if count < 2:
            raise StateError("reorder needs count >= 2")
        faults = hub.faults_for(user_of(request))
        faults.reorder = max(faults.reorder, count - len(faults.held))
        return _ok()

    async def epoch(request: web.Request) -> web.Response:
        return _ok({"epoch": w.new_epoch(user_of(request))})

    async def add_event(request: web.Request) -> web.Response:
        body = await _body(request)
        if "data" not in body:
            raise StateError("data is required")
        return _ok({"event": s.add_event(user_of(request), body["data"]).to_json()})

    async def events(request: web.Request) -> web.Response:
        user = request.query.get("user")
        external_id = None if user is None else w.user(user).external_id
        return _ok({"events": [e.to_json() for e in s.events.all(external_id)]})

    async def get_order_fault(request: web.Request) -> web.Response:
        fault = s.get_order_faults.add(await _body(request), _clock())
        return _ok({"fault_id": fault.fault_id})

    async def clear_faults(request: web.Request) -> web.Response:
        s.get_order_faults.clear()
        return _ok()

    async def webhook_config(request: web.Request) -> web.Response:
        body = await _body(request)
        s.webhooks.configure(body.get("url"), body.get("retry_intervals"))
        return _ok()

    async def send_webhook(request: web.Request) -> web.Response:
        body = await _body(request)
        copies = _int(body.get("copies"), "copies", 1)
        ids = s.send_webhook(
            request.match_info["order_id"],
            body.get("notification_type"),
            copies=copies,
            bad_signature=bool(body.get("bad_signature", False)),
        )
        return _ok({"delivery_ids": ids})

    async def webhooks(request: web.Request) -> web.Response:
        wanted = request.query.get("order_id")
        try:
            order_ids = None if wanted is None else [int(x) for x in wanted.split(",")]
        except ValueError:
            raise StateError(
                f"order_id must be integers separated by commas, got {wanted!r}"
            ) from None
        attempts = s.webhooks.attempts_for(order_ids)
        return _ok({"deliveries": [a.to_json() for a in attempts]})

    async def publications(request: web.Request) -> web.Response:
        user = request.query.get("user")
        channel = None if user is None else w.user(user).channel
        pubs = [x.to_json() for x in w.publications if channel is None or x.channel == channel]
        return _ok({"publications": pubs})

    async def connections(request: web.Request) -> web.Response:
        user = request.query.get("user")
        conns = [c.to_json() for c in (hub.connections if user is None else hub.of_user(user))]
        return _ok({"connections": conns})

    async def stats(request: web.Request) -> web.Response:
        return _ok(s.stats())

    async def shutdown(request: web.Request) -> web.Response:
        request_shutdown()
        return _ok()

    return [
        web.get("/control/info", info),
        web.post("/control/users", create_user),
        web.post("/control/users/{user}/tokens", issue_token),
        web.post("/control/tokens/revoke", revoke),
        web.post("/control/orders", create_order),
        web.get("/control/orders/{order_id}", get_order),
        web.post("/control/orders/{order_id}/status", set_status),
        web.post("/control/orders/{order_id}/script", script),
        web.post("/control/orders/{order_id}/webhook", send_webhook),
        *(web.post(f"/control/orders/{{order_id}}/{action}", move(action)) for action in MOVES),
        web.post("/control/users/{user}/publish", publish),
        web.post("/control/users/{user}/close", close),
        web.post("/control/users/{user}/drop", drop),
        web.post("/control/users/{user}/unsubscribe", unsubscribe),
        web.post("/control/users/{user}/withhold_channel", withhold_channel),
        web.post("/control/users/{user}/give_channel", give_channel),
        web.post("/control/users/{user}/stall", stall),
        web.post("/control/users/{user}/suspend", suspend),
        web.post("/control/users/{user}/resume", resume),
        web.post("/control/users/{user}/duplicate", duplicate),
        web.post("/control/users/{user}/reorder", reorder),
        web.post("/control/users/{user}/epoch", epoch),
        web.post("/control/pings", pings),
        web.post("/control/users/{user}/events", add_event),
        web.get("/control/events", events),
        web.post("/control/faults/get_order", get_order_fault),
        web.delete("/control/faults", clear_faults),
        web.post("/control/webhooks/config", webhook_config),
        web.get("/control/webhooks", webhooks),
        web.get("/control/publications", publications),
        web.get("/control/connections", connections),
        web.get("/control/stats", stats),
        web.post("/control/shutdown", shutdown),
    ]


def _now() -> float:
    return time.time()


def _clock() -> float:
    return anyio.current_time()
