"""The emulator's world: users, tokens, orders and per-user channel streams.

Pure bookkeeping (no I/O, no clock reads: wall-clock times are passed in), so
the WebSocket protocol engine, the REST handler and the control surface all
read one consistent picture.  Streams follow Centrifuge's model: an epoch, a
monotonically increasing offset, and a bounded history.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, Literal, get_args

import attrs

from transports.emulator.records import Publication

CHANNEL_PREFIX = "orders#"
"""Xsolla's channel naming is undocumented; this one is the emulator's own."""

ChannelMode = Literal["recovery", "history", "none"]
"""What a user's channel offers, as Centrifugo's channel options would make it.
Whether Xsolla keeps history or recovery on is unknown (``xsolla.md`` §8), so
the emulator serves each: ``recovery`` (history, ``force_recovery``),
``history`` (history only: subscriptions carry no position and recovery
requests are not honoured) and ``none`` (no history: ``history`` answers 108
and publications carry no offset)."""
CHANNEL_MODES: tuple[ChannelMode, ...] = get_args(ChannelMode)


class StateError(Exception):
    """A control request refers to something that does not exist or is invalid.

    ``error_code`` is an Xsolla error code the answer carries as ``errorCode``
    (2002 for a refused payment), for the few refusals Xsolla gives a code to.
    """

    def __init__(self, message: str, status: int = 400, error_code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


@attrs.define
class Stream:
    """One channel's publication stream, Centrifuge style."""

    epoch: str
    size: int
    offset: int = 0
    history: deque[Publication] = attrs.field(factory=deque)

    def append(self, data: Any, channel: str, now: float) -> Publication:
        self.offset += 1
        pub = Publication(channel, self.offset, self.epoch, data, now)
        self.history.append(pub)
        while len(self.history) > self.size:
            self.history.popleft()
        return pub

    def since(self, offset: int) -> list[Publication] | None:
        """Publications after ``offset``, or None when some of them were dropped."""
        if offset > self.offset or offset < 0:
            return None
        missing = self.offset - offset
        if missing > len(self.history):
            return None
        return list(self.history)[len(self.history) - missing :] if missing else []


@attrs.frozen
class Item:
    sku: str = "com.xsolla.item_1"
    quantity: int = 1
    amount: str = "30"
    type: str = "virtual_good"
    limit: int | None = None
    """Set for a limited item (limited SKU, promo code, promotion): how many paid
    orders with it one user may hold. ``None``: not limited."""

    @classmethod
    def from_json(cls, raw: object) -> Item:
        if not isinstance(raw, Mapping):
            raise StateError(f"an item must be an object, got {raw!r}")
        limit = raw.get("limit")
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise StateError(f"bad item {raw!r}: limit must be a positive integer or null")
        try:
            return cls(
                sku=str(raw.get("sku", cls.sku)),
                quantity=int(raw.get("quantity", 1)),
                amount=str(raw.get("amount", "30")),
                type=str(raw.get("type", "virtual_good")),
                limit=limit,
            )
        except (TypeError, ValueError) as exc:
            raise StateError(f"bad item {raw!r}: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        raw = attrs.asdict(self)
        if self.limit is None:
            del raw["limit"]
        return raw


@attrs.define
class Order:
    order_id: int
    user: str
    status: str
    items: tuple[Item, ...]
    amount: str
    currency: str
    invoice_id: str
    created_at: float
    get_order_requests: list[float] = attrs.field(factory=list)
    script_errors: list[str] = attrs.field(factory=list)
    """Why a checked step of a ``run_script`` was refused (the script stopped there)."""

    @property
    def skus(self) -> frozenset[str]:
        return frozenset(item.sku for item in self.items)

    def to_json(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "user": self.user,
            "status": self.status,
            "items": [i.to_json() for i in self.items],
            "amount": self.amount,
            "currency": self.currency,
            "invoice_id": self.invoice_id,
            "created_at": self.created_at,
            "get_order_requests": list(self.get_order_requests),
            "script_errors": list(self.script_errors),
        }


@attrs.define
class User:
    external_id: str
    channel: str
    tokens: list[str] = attrs.field(factory=list)


class World:
    """Everything the emulator knows, mutated only from the emulator's loop."""

    def __init__(
        self,
        *,
        project_id: int,
        secret: str,
        rng: random.Random,
        history_size: int = 300,
        history_limit: int = 300,
        channel_mode: ChannelMode = "recovery",
    ) -> None:
        self.channel_mode = channel_mode
        self.project_id = project_id
        self.secret = secret
        self.rng = rng
        self.history_size = history_size
        self.history_limit = history_limit
        self.users: dict[str, User] = {}
        self.tokens: dict[str, str] = {}  # token -> external id
        self.revoked: set[str] = set()
        self.withheld: set[str] = set()
        """Users whose connect replies name no channel (``withhold_channel``)."""
        self.orders: dict[int, Order] = {}
        self._orders_by_user: dict[str, list[Order]] = {}
        self.streams: dict[str, Stream] = {}
        self.publications: list[Publication] = []
        self._next_order_id = 59614241
        self._next_user = 1

    # --- users and tokens -------------------------------------------------

    def create_user(self, external_id: str | None, now: float) -> tuple[User, str]:
        if external_id is None:
            external_id = f"user-{self._next_user}"
            self._next_user += 1
        if not isinstance(external_id, str) or not external_id:
            raise StateError("external_id must be a non-empty string")
        if external_id in self.users:
            raise StateError(f"user {external_id!r} already exists", 409)
        channel = CHANNEL_PREFIX + external_id
        user = User(external_id, channel)
        self.users[external_id] = user
        self.streams[channel] = Stream(self.new_epoch_id(), self.history_size)
        return user, self.issue_token(external_id, now)

    def user(self, external_id: object) -> User:
        if not isinstance(external_id, str) or external_id not in self.users:
            raise StateError(f"unknown user {external_id!r}", 404)
        return self.users[external_id]

    def issue_token(self, external_id: str, now: float) -> str:
        user = self.user(external_id)
        token = self._jwt(
            {
                "sub": external_id,
                "iat": int(now),
                "exp": int(now) + 86400,
                "jti": f"{self.rng.getrandbits(64):016x}",
            }
        )
        user.tokens.append(token)
        self.tokens[token] = external_id
        return token

    def revoke(self, token: object) -> None:
        if not isinstance(token, str) or token not in self.tokens:
            raise StateError("unknown token", 404)
        self.revoked.add(token)

    def authenticate(self, token: object) -> User | None:
        if not isinstance(token, str) or token in self.revoked:
            return None
        external_id = self.tokens.get(token)
        return None if external_id is None else self.users[external_id]

    def _jwt(self, claims: Mapping[str, Any]) -> str:
        def b64(raw: bytes) -> str:
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = b64(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{header}.{payload}".encode()
        sig = hmac.new(self.secret.encode(), signing_input, hashlib.sha256).digest()
        return f"{header}.{payload}.{b64(sig)}"

    # --- orders ---------------------------------------------------------------

    def create_order(
        self,
        external_id: object,
        *,
        items: Iterable[object] | None,
        amount: str,
        currency: str,
        status: str,
        now: float,
    ) -> Order:
        user = self.user(external_id)
        parsed = (Item(),) if items is None else tuple(Item.from_json(i) for i in items)
        if not parsed:
            raise StateError("an order needs at least one item")
        if not isinstance(status, str) or not status:
            raise StateError("status must be a non-empty string")
        order_id = self._next_order_id
        self._next_order_id += 1
        invoice = str(self.rng.randrange(10**9, 10**10))
        order = Order(
            order_id, user.external_id, status, parsed, str(amount), str(currency), invoice, now
        )
        self.orders[order_id] = order
        self._orders_by_user.setdefault(user.external_id, []).append(order)
        return order

    def orders_of(self, external_id: str) -> list[Order]:
        """One user's orders, oldest first (the life-cycle rules look at no one else's)."""
        return list(self._orders_by_user.get(external_id, ()))

    def order(self, order_id: object) -> Order:
        try:
            key = int(order_id)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise StateError(f"bad order id {order_id!r}", 404) from None
        if key not in self.orders:
            raise StateError(f"unknown order {order_id!r}", 404)
        return self.orders[key]

    # --- streams --------------------------------------------------------------

    def new_epoch_id(self) -> str:
        return "".join(self.rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(8))

    def stream(self, channel: str) -> Stream:
        return self.streams[channel]

    def publish(self, external_id: str, data: Any, now: float) -> Publication:
        user = self.user(external_id)
        pub = self.streams[user.channel].append(data, user.channel, now)
        self.publications.append(pub)
        return pub

    def new_epoch(self, external_id: str) -> str:
        user = self.user(external_id)
        stream = self.streams[user.channel]
        stream.epoch = self.new_epoch_id()
        stream.offset = 0
        stream.history.clear()
        return stream.epoch
