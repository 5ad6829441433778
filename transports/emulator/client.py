"""Drive an emulator over its HTTP control surface, from asyncio or trio.

Uses stdlib ``urllib`` on a worker thread (``anyio.to_thread``), so it needs
no HTTP library and behaves identically on every anyio backend, for an
emulator in this process or in another one (``orderfsm emulator``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

import anyio

from orderfsm.errors import OrderFsmError
from transports.emulator.records import (
    ConnectionInfo,
    Publication,
    Stats,
    StoredEvent,
    User,
    WebhookAttempt,
)

UserRef = User | str


class EmulatorError(OrderFsmError):
    """The emulator refused a control request (unknown user or order, bad argument).

    ``error_code`` is the Xsolla error code of the refusal when it has one (the
    answer's ``errorCode``): 2002 for a payment the life cycle refuses.
    """

    def __init__(self, status: int, message: str, error_code: int | None = None) -> None:
        super().__init__(f"emulator answered {status}: {message}")
        self.status = status
        self.message = message
        self.error_code = error_code


def _uid(user: UserRef) -> str:
    return user.external_id if isinstance(user, User) else user


def _q(part: object) -> str:
    return urllib.parse.quote(str(part), safe="")


def _refusal(status: int, raw: bytes) -> EmulatorError:
    try:
        body = json.loads(raw)
        message = str(body.get("error", raw))
    except (ValueError, AttributeError):
        return EmulatorError(status, raw.decode("utf-8", "replace"))
    code = body.get("errorCode")
    return EmulatorError(status, message, code if isinstance(code, int) else None)


class EmulatorClient:
    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # --- addresses ----------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self._base_url

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http", "ws", 1) + "/connection/websocket"

    @property
    def api_url(self) -> str:
        return self.base_url + "/api"

    @property
    def events_url(self) -> str:
        """``GET`` it for the Event API (its base URL is :attr:`base_url`)."""
        return self.base_url + "/events"

    @property
    def control_url(self) -> str:
        return self.base_url + "/control"

    def get_order_url(self, project_id: int, order_id: int) -> str:
        return f"{self.api_url}/v2/project/{project_id}/order/{order_id}"

    # --- transport ------------------------------------------------------------

    async def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        url = self.control_url + path
        data = None if body is None else json.dumps(body).encode()
        return await anyio.to_thread.run_sync(self._blocking_call, method, url, data)

    def _blocking_call(self, method: str, url: str, data: bytes | None) -> Any:
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            exc.close()
            raise _refusal(exc.code, raw) from None
        except (urllib.error.URLError, OSError) as exc:
            raise EmulatorError(0, f"cannot reach the emulator at {url}: {exc}") from exc

    # --- users, tokens, orders --------------------------------------------------

    async def info(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/info")
        return result

    async def create_user(self, external_id: str | None = None) -> User:
        body = {} if external_id is None else {"external_id": external_id}
        return User.from_json(await self._call("POST", "/users", body))

    async def issue_token(self, user: UserRef) -> str:
        return str((await self._call("POST", f"/users/{_q(_uid(user))}/tokens", {}))["token"])

    async def revoke_token(self, token: str) -> None:
        await self._call("POST", "/tokens/revoke", {"token": token})

    async def create_order(
        self,
        user: UserRef,
        *,
        items: Sequence[Mapping[str, Any]] | None = None,
        amount: str = "30",
        currency: str = "USD",
        status: str = "new",
        publish: bool = True,
    ) -> int:
        body: dict[str, Any] = {
            "user": _uid(user),
            "amount": amount,
            "currency": currency,
            "status": status,
            "publish": publish,
        }
        if items is not None:
            body["items"] = [dict(i) for i in items]
        return int((await self._call("POST", "/orders", body))["order_id"])

    async def order(self, order_id: int) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", f"/orders/{_q(order_id)}")
        return result

    async def set_status(
        self, order_id: int, status: str, *, publish: bool = True, webhook: bool = True
    ) -> Publication | None:
        body = {"status": status, "publish": publish, "webhook": webhook}
        raw = (await self._call("POST", f"/orders/{_q(order_id)}/status", body))["publication"]
        return None if raw is None else Publication.from_json(raw)

    async def pay(self, order_id: int) -> Publication:
        """The payment completes: ``new``/``expired`` -> ``paid``, within the purchase limit."""
        return await self._move(order_id, "pay")

    async def deliver(self, order_id: int) -> Publication:
        """``paid`` -> ``done``."""
        return await self._move(order_id, "deliver")

    async def refund(self, order_id: int) -> Publication:
        """``paid``/``done`` -> ``canceled`` (sends ``order_canceled``)."""
        return await self._move(order_id, "refund")

    async def expire(self, order_id: int) -> Publication:
        """``new`` -> ``expired`` (no webhook, no event)."""
        return await self._move(order_id, "expire")

    async def _move(self, order_id: int, action: str) -> Publication:
        raw = await self._call("POST", f"/orders/{_q(order_id)}/{action}", {})
        return Publication.from_json(raw["publication"])

    async def run_script(self, order_id: int, steps: Sequence[tuple[float, str]]) -> None:
        body = {"steps": [[delay, status] for delay, status in steps]}
        await self._call("POST", f"/orders/{_q(order_id)}/script", body)

    async def publish_raw(self, user: UserRef, data: Any) -> Publication:
        raw = await self._call("POST", f"/users/{_q(_uid(user))}/publish", {"data": data})
        return Publication.from_json(raw["publication"])

    # --- WebSocket faults ---------------------------------------------------------

    async def close_connections(
        self, user: UserRef, code: int = 3000, reason: str = "connection closed"
    ) -> int:
        body = {"code": code, "reason": reason}
        return int((await self._call("POST", f"/users/{_q(_uid(user))}/close", body))["count"])

    async def unsubscribe(
        self, user: UserRef, code: int = 2000, reason: str = "server unsubscribe"
    ) -> int:
        """The server drops the user's channel on their open sockets (a ``push.unsubscribe``)."""
        body = {"code": code, "reason": reason}
        path = f"/users/{_q(_uid(user))}/unsubscribe"
        return int((await self._call("POST", path, body))["count"])

    async def withhold_channel(self, user: UserRef) -> None:
        """The user's connect replies from now on name no channel (nothing is pushed
        to those sockets); open sockets keep theirs."""
        await self._call("POST", f"/users/{_q(_uid(user))}/withhold_channel", {})

    async def give_channel(self, user: UserRef) -> int:
        """Connect replies name the channel again; open sockets without it get a
        ``push.subscribe`` and hear its publications from then on."""
        return int((await self._call("POST", f"/users/{_q(_uid(user))}/give_channel", {}))["count"])

    async def drop_connections(self, user: UserRef) -> int:
        return int((await self._call("POST", f"/users/{_q(_uid(user))}/drop", {}))["count"])

    async def stall_connections(self, user: UserRef, seconds: float | None = None) -> int:
        body = {"seconds": seconds}
        return int((await self._call("POST", f"/users/{_q(_uid(user))}/stall", body))["count"])

    async def suspend(self, user: UserRef) -> int:
        """The user's host sleeps: their sockets (and any opened meanwhile) go silent, unclosed."""
        return int((await self._call("POST", f"/users/{_q(_uid(user))}/suspend", {}))["count"])

    async def resume(self, user: UserRef) -> None:
        """Sockets opened from now on work; the silenced ones stay silent."""
        await self._call("POST", f"/users/{_q(_uid(user))}/resume", {})

    async def set_pings(self, enabled: bool, user: UserRef | None = None) -> None:
        body = {"enabled": enabled, "user": None if user is None else _uid(user)}
        await self._call("POST", "/pings", body)

    async def duplicate_publications(self, user: UserRef, count: int = 1) -> None:
        await self._call("POST", f"/users/{_q(_uid(user))}/duplicate", {"count": count})

    async def reorder_publications(self, user: UserRef, count: int = 2) -> None:
        await self._call("POST", f"/users/{_q(_uid(user))}/reorder", {"count": count})

    async def new_epoch(self, user: UserRef) -> str:
        return str((await self._call("POST", f"/users/{_q(_uid(user))}/epoch", {}))["epoch"])

    # --- Get order faults -----------------------------------------------------------

    async def get_order_fault(
        self,
        kind: str,
        *,
        status: int = 500,
        retry_after: int = 1,
        delay: float = 1.0,
        count: int | None = None,
        seconds: float | None = None,
        order_id: int | None = None,
        service: str = "get_order",
    ) -> int:
        body = {
            "service": service,
            "kind": kind,
            "status": status,
            "retry_after": retry_after,
            "delay": delay,
            "count": count,
            "seconds": seconds,
            "order_id": order_id,
        }
        if kind == "rate_limit":
            body["status"] = 429
        return int((await self._call("POST", "/faults/get_order", body))["fault_id"])

    async def clear_faults(self) -> None:
        await self._call("DELETE", "/faults")

    # --- the Event API ----------------------------------------------------------------

    async def events(self, user: UserRef | None = None) -> list[StoredEvent]:
        query = "" if user is None else f"?user={_q(_uid(user))}"
        raw = await self._call("GET", f"/events{query}")
        return [StoredEvent.from_json(x) for x in raw["events"]]

    async def add_event(self, user: UserRef, data: Any) -> StoredEvent:
        raw = await self._call("POST", f"/users/{_q(_uid(user))}/events", {"data": data})
        return StoredEvent.from_json(raw["event"])

    # --- webhooks -------------------------------------------------------------------

    async def configure_webhooks(
        self, url: str | Sequence[str] | None, retry_intervals: Sequence[float] | None = None
    ) -> None:
        """Where webhooks go: a URL, several (attempts go round them, as behind a
        load balancer), or ``None``; and the retry schedule."""
        intervals = None if retry_intervals is None else list(retry_intervals)
        urls = url if url is None or isinstance(url, str) else list(url)
        body = {"url": urls, "retry_intervals": intervals}
        await self._call("POST", "/webhooks/config", body)

    async def send_webhook(
        self,
        order_id: int,
        notification_type: str | None = None,
        *,
        copies: int = 1,
        bad_signature: bool = False,
    ) -> list[int]:
        body = {
            "notification_type": notification_type,
            "copies": copies,
            "bad_signature": bad_signature,
        }
        raw = await self._call("POST", f"/orders/{_q(order_id)}/webhook", body)
        return [int(x) for x in raw["delivery_ids"]]

    async def webhook_deliveries(
        self, order_ids: Sequence[int] | None = None
    ) -> list[WebhookAttempt]:
        """Every webhook attempt so far, or only those for ``order_ids``."""
        query = "" if order_ids is None else "?order_id=" + ",".join(map(str, order_ids))
        raw = await self._call("GET", f"/webhooks{query}")
        return [WebhookAttempt.from_json(x) for x in raw["deliveries"]]

    # --- observation -----------------------------------------------------------------

    async def publications(self, user: UserRef | None = None) -> list[Publication]:
        query = "" if user is None else f"?user={_q(_uid(user))}"
        raw = await self._call("GET", f"/publications{query}")
        return [Publication.from_json(x) for x in raw["publications"]]

    async def connections(self, user: UserRef | None = None) -> list[ConnectionInfo]:
        query = "" if user is None else f"?user={_q(_uid(user))}"
        raw = await self._call("GET", f"/connections{query}")
        return [ConnectionInfo.from_json(x) for x in raw["connections"]]

    async def stats(self) -> Stats:
        return Stats.from_json(await self._call("GET", "/stats"))

    async def wait_connected(self, user: UserRef, count: int = 1) -> None:
        """Return once ``user`` has at least ``count`` connected sockets.

        Polls without end: bound it with ``anyio.fail_after``.
        """
        while True:
            conns = await self.connections(user)
            if sum(c.state == "connected" for c in conns) >= count:
                return
            await anyio.sleep(0.02)

    async def shutdown(self) -> None:
        """Stop the emulator (for one started with ``orderfsm emulator``)."""
        await self._call("POST", "/shutdown", {})
