"""The emulator's operations, shared by the control surface and the REST API.

One object per running emulator, living on its asyncio loop: it owns the
world, the WebSocket hub, the fault tables and the webhook sender, and runs
background work (scripts, webhook deliveries) in one task group.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import anyio
import attrs
from anyio.abc import TaskGroup

from transports.emulator.eventlog import EventLog
from transports.emulator.faults import GetOrderFaults
from transports.emulator.lifecycle import MOVES, superseded, target
from transports.emulator.records import Publication, StoredEvent
from transports.emulator.session import Timing
from transports.emulator.state import CHANNEL_MODES, ChannelMode, StateError, World
from transports.emulator.webhooks import (
    DEFAULT_RETRY_INTERVALS,
    NOTIFICATION_FOR_STATUS,
    WebhookSender,
    order_body,
    order_payload,
)
from transports.emulator.websocket import Hub


@attrs.frozen
class Config:
    host: str = "127.0.0.1"
    port: int = 0
    project_id: int = 12345
    secret: str = "PROJECT_SECRET_KEY"
    ping_interval: float = 25.0
    pong_timeout: float = 10.0
    stale_timeout: float = 15.0
    seed: int = 0
    history_size: int = 300
    history_limit: int = 300
    channel_mode: ChannelMode = attrs.field(
        default="recovery", validator=attrs.validators.in_(CHANNEL_MODES)
    )
    webhook_url: str | None = None
    webhook_retry_intervals: tuple[float, ...] = DEFAULT_RETRY_INTERVALS
    webhook_timeout: float = 5.0


class Services:
    def __init__(self, config: Config, background: TaskGroup) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.world = World(
            project_id=config.project_id,
            secret=config.secret,
            rng=self.rng,
            history_size=config.history_size,
            history_limit=config.history_limit,
            channel_mode=config.channel_mode,
        )
        timing = Timing(config.ping_interval, config.pong_timeout, config.stale_timeout)
        self.hub = Hub(self.world, timing, self.rng)
        self.get_order_faults = GetOrderFaults()
        self.get_order_log: list[dict[str, Any]] = []
        self.events = EventLog()
        self.events_requests = 0
        self._background = background
        self.webhooks = WebhookSender(
            secret=config.secret,
            url=config.webhook_url,
            retry_intervals=config.webhook_retry_intervals,
            timeout=config.webhook_timeout,
            spawn=self.spawn,
        )
        self.base_url = ""
        self.scripts_running: dict[int, int] = {}

    def spawn(self, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._background.start_soon(job)

    # --- orders -----------------------------------------------------------------

    def create_order(self, raw: dict[str, Any]) -> int:
        """A new order; with a limited item it expires the user's earlier unpaid ones."""
        status = raw.get("status", "new")
        order = self.world.create_order(
            raw.get("user"),
            items=raw.get("items"),
            amount=str(raw.get("amount", "30")),
            currency=str(raw.get("currency", "USD")),
            status=status,
            now=time.time(),
        )
        publish = bool(raw.get("publish", True))
        if publish:
            self.hub.publish(order.user, {"order_id": order.order_id, "status": order.status})
        for earlier in superseded(order, self.world.orders_of(order.user)):
            self.set_status(earlier.order_id, "expired", publish=publish)
        return order.order_id

    def set_status(
        self, order_id: object, status: object, *, publish: bool = True, webhook: bool = True
    ) -> Publication | None:
        order = self.world.order(order_id)
        if not isinstance(status, str) or not status:
            raise StateError("status must be a non-empty string")
        order.status = status
        pub = None
        if publish:
            pub = self.hub.publish(order.user, {"order_id": order.order_id, "status": status})
        kind = NOTIFICATION_FOR_STATUS.get(status)
        if webhook and kind is not None:
            # The Event API records every notification, webhook URL or not.
            now = time.time()
            data = order_payload(order, kind, self.config.project_id, now)
            self.events.add(order.user, data, now)
            if self.webhooks.url is not None:
                body = json.dumps(data, separators=(",", ":")).encode()
                self.webhooks.send(body, kind, order.order_id, bad_signature=False)
        return pub

    def move(self, order_id: object, action: str) -> Publication | None:
        """A checked life-cycle move (``pay``, ``deliver``, ``refund``, ``expire``).

        Refused with a :class:`StateError` when the life cycle does not allow it;
        otherwise exactly a ``set_status`` to the move's target status.
        """
        order = self.world.order(order_id)
        status = target(action, order, self.world.orders_of(order.user))
        return self.set_status(order.order_id, status)

    def add_event(self, external_id: object, data: Any) -> StoredEvent:
        """Any JSON value as a user's next event (malformed events for client tests)."""
        user = self.world.user(external_id)
        return self.events.add(user.external_id, data, time.time())

    def send_webhook(
        self, order_id: object, kind: object, *, copies: int, bad_signature: bool
    ) -> list[int]:
        order = self.world.order(order_id)
        if kind is None:
            kind = NOTIFICATION_FOR_STATUS.get(order.status)
            if kind is None:
                raise StateError(f"no webhook for status {order.status!r}; pass notification_type")
        if kind not in ("order_paid", "order_canceled"):
            raise StateError(f"unsupported notification_type {kind!r}")
        body = order_body(order, kind, self.config.project_id, time.time())
        return [
            self.webhooks.send(body, kind, order.order_id, bad_signature=bad_signature)
            for _ in range(copies)
        ]

    def run_script(self, order_id: object, steps: object) -> None:
        """Play ``[delay, status or action]`` steps in the background.

        A raw status is a ``set_status``; an action named in ``MOVES`` is the
        checked move, and a refused one ends the script (the reason goes to the
        order's ``script_errors``).
        """
        order = self.world.order(order_id)
        if not isinstance(steps, list):
            raise StateError("steps must be a list of [delay, status or action]")
        parsed: list[tuple[float, str]] = []
        for step in steps:
            if (
                not isinstance(step, (list, tuple))
                or len(step) != 2
                or not isinstance(step[0], (int, float))
                or step[0] < 0
                or not isinstance(step[1], str)
                or not step[1]
            ):
                raise StateError(f"bad script step {step!r}")
            parsed.append((float(step[0]), step[1]))
        oid = order.order_id
        self.scripts_running[oid] = self.scripts_running.get(oid, 0) + 1

        async def play(script: Sequence[tuple[float, str]] = tuple(parsed)) -> None:
            try:
                for delay, step in script:
                    await anyio.sleep(delay)
                    if step not in MOVES:
                        self.set_status(oid, step)
                        continue
                    try:
                        self.move(oid, step)
                    except StateError as exc:
                        order.script_errors.append(str(exc))
                        return
            finally:
                self.scripts_running[oid] -= 1

        self.spawn(play)

    # --- observation ----------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "connects": self.hub.connects,
            "open_connections": self.hub.open_counts(),
            "get_order_requests": {
                str(oid): list(order.get_order_requests)
                for oid, order in self.world.orders.items()
                if order.get_order_requests
            },
            "get_order_total": len(self.get_order_log),
            "publications": len(self.world.publications),
            "webhook_attempts": len(self.webhooks.attempts),
            "events_requests": self.events_requests,
        }

    def info(self) -> dict[str, Any]:
        c = self.config
        return {
            "base_url": self.base_url,
            "ws_url": self.base_url.replace("http", "ws", 1) + "/connection/websocket",
            "api_url": self.base_url + "/api",
            "events_url": self.base_url + "/events",
            "project_id": c.project_id,
            "secret": c.secret,
            "ping_interval": c.ping_interval,
            "pong_timeout": c.pong_timeout,
            "stale_timeout": c.stale_timeout,
            "seed": c.seed,
            "history_size": c.history_size,
            "history_limit": c.history_limit,
            "channel_mode": c.channel_mode,
            "webhook_url": self.webhooks.url,
        }
