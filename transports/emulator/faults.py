"""Injected faults as plain data: what the next publications or requests suffer.

Pure and seeded (the caller passes the emulator's ``random.Random``), so a
failing run replays identically with the same seed.
"""

from __future__ import annotations

import random
from typing import Any

import attrs

from transports.emulator.records import Publication
from transports.emulator.state import StateError

GET_ORDER_FAULT_KINDS = ("error", "rate_limit", "slow")
FAULT_SERVICES = ("get_order", "events", "any")
"""Which HTTP service a fault hits: Get order (the default), ``GET /events``, or both."""


@attrs.define
class DeliveryFaults:
    """Per-user publication delivery faults (history is never affected)."""

    duplicate: int = 0
    reorder: int = 0
    held: list[Publication] = attrs.field(factory=list)

    def route(self, pub: Publication, rng: random.Random) -> list[Publication]:
        """What to push now, in order, for one freshly published publication."""
        if self.reorder > 0:
            self.held.append(pub)
            self.reorder -= 1
            if self.reorder > 0:
                return []
            batch, self.held = self.held, []
            shuffled = batch[:]
            rng.shuffle(shuffled)
            if len(batch) > 1 and shuffled == batch:
                shuffled.reverse()
            return self._duplicated(shuffled)
        return self._duplicated([pub])

    def _duplicated(self, pubs: list[Publication]) -> list[Publication]:
        out: list[Publication] = []
        for pub in pubs:
            out.append(pub)
            if self.duplicate > 0:
                self.duplicate -= 1
                out.append(pub)
        return out


@attrs.define
class GetOrderFault:
    fault_id: int
    kind: str
    status: int = 500
    retry_after: int = 1
    delay: float = 1.0
    remaining: int | None = None
    until: float | None = None
    order_id: int | None = None
    service: str = "get_order"

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


class GetOrderFaults:
    def __init__(self) -> None:
        self._faults: list[GetOrderFault] = []
        self._next_id = 1

    def add(self, raw: dict[str, Any], now: float) -> GetOrderFault:
        kind = raw.get("kind")
        if kind not in GET_ORDER_FAULT_KINDS:
            raise StateError(f"kind must be one of {GET_ORDER_FAULT_KINDS}, got {kind!r}")
        service = raw.get("service", "get_order")
        if service is None:
            service = "get_order"
        if service not in FAULT_SERVICES:
            raise StateError(f"service must be one of {FAULT_SERVICES}, got {service!r}")
        try:
            count = raw.get("count")
            seconds = raw.get("seconds")
            order_id = raw.get("order_id")
            fault = GetOrderFault(
                fault_id=self._next_id,
                kind=kind,
                status=int(raw.get("status", 429 if kind == "rate_limit" else 500)),
                retry_after=int(raw.get("retry_after", 1)),
                delay=float(raw.get("delay", 1.0)),
                remaining=None if count is None else int(count),
                until=None if seconds is None else now + float(seconds),
                order_id=None if order_id is None else int(order_id),
                service=service,
            )
        except (TypeError, ValueError) as exc:
            raise StateError(f"bad fault: {exc}") from None
        self._next_id += 1
        self._faults.append(fault)
        return fault

    def clear(self) -> None:
        self._faults.clear()

    def take(
        self, order_id: int | None, now: float, service: str = "get_order"
    ) -> GetOrderFault | None:
        """The fault that applies to this request (consuming one of its uses), if any.

        A ``GET /events`` request is about no one order (``order_id=None``), so
        only faults without an ``order_id`` reach it.
        """
        self._faults = [
            f
            for f in self._faults
            if (f.remaining is None or f.remaining > 0) and (f.until is None or now < f.until)
        ]
        for fault in self._faults:
            if fault.service not in (service, "any"):
                continue
            if fault.order_id is None or fault.order_id == order_id:
                if fault.remaining is not None:
                    fault.remaining -= 1
                return fault
        return None
