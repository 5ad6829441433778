"""Values the control API hands back, shared by the server and the clients.

Pure attrs records with ``from_json`` / ``to_json``, so an emulator in
another process answers with exactly the types an in-process one does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs


def _pick(cls: type[Any], raw: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in attrs.fields(cls)}
    return {k: v for k, v in raw.items() if k in names}


@attrs.frozen
class User:
    external_id: str
    token: str
    channel: str
    """The emulator's own channel name (``orders#<external_id>``); do not depend on it."""

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> User:
        return cls(**_pick(cls, raw))


@attrs.frozen
class Publication:
    channel: str
    offset: int
    epoch: str
    data: Any
    published_at: float
    """Wall clock (``time.time()``) when it was published, for latency measurements."""

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Publication:
        return cls(**_pick(cls, raw))

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    def wire(self) -> dict[str, Any]:
        """The ``pub`` object as Centrifuge sends it (zero values omitted)."""
        pub: dict[str, Any] = {"data": self.data}
        if self.offset:
            pub["offset"] = self.offset
        return pub


@attrs.frozen
class WebhookAttempt:
    delivery_id: int
    attempt: int
    """1-based attempt number within the delivery."""
    notification_type: str
    order_id: int
    url: str
    body: str
    """The exact raw body sent (the signature is over these bytes, UTF-8)."""
    signature: str
    signature_valid: bool
    sent_at: float
    status: int | None
    """The receiver's HTTP status, or None when no answer came (see ``error``)."""
    response_body: str
    error: str | None

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> WebhookAttempt:
        return cls(**_pick(cls, raw))

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class ConnectionInfo:
    conn_id: int
    user: str | None
    client: str
    state: str
    """``connecting``, ``connected``, ``stalled``, ``suspended`` (a host suspend) or ``closed``."""
    opened_at: float
    closed_at: float | None
    close_code: int | None
    close_reason: str
    pings_sent: int
    pongs_received: int

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ConnectionInfo:
        return cls(**_pick(cls, raw))


@attrs.frozen
class Stats:
    connects: int
    """Successful ``connect`` commands so far."""
    open_connections: dict[str, int]
    """Open sockets per user external id."""
    get_order_requests: dict[int, list[float]]
    """Wall-clock times of Get order requests, per (existing) order id."""
    get_order_total: int
    publications: int
    webhook_attempts: int
    events_requests: int = 0
    """``GET /events`` requests so far, any answer."""

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Stats:
        fields = _pick(cls, raw)
        fields["get_order_requests"] = {
            int(k): list(v) for k, v in raw.get("get_order_requests", {}).items()
        }
        return cls(**fields)


@attrs.frozen
class StoredEvent:
    """One Event API event as the emulator keeps it (the control view).

    ``GET /events`` hands out ``{"id", "status", "created_at", "data"}``;
    this record adds whose event it is and what it is about, for tests.
    """

    event_id: int
    user: str
    notification_type: str
    """``data.notification_type`` when there is one (``""`` for raw junk)."""
    order_id: int | None
    status: str
    """``new``, or ``processed`` once ``POST /events/{id}/processed`` was called."""
    created_at: float
    """Wall clock (``time.time()``)."""
    data: Any

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> StoredEvent:
        return cls(**_pick(cls, raw))

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)
