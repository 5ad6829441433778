"""The Event API's store: each notification kept as a numbered event per user.

Pure bookkeeping (wall-clock times are passed in).  Ids come from one counter
for the whole emulator, so they increase across users as well as within one,
and a user's events are kept in id order: a page is a binary search plus a
slice, however long the history grows.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection
from datetime import datetime, timezone
from typing import Any

import attrs

from transports.emulator.records import StoredEvent

PAGE_CAP = 100
"""Most events one ``GET /events`` answer carries (the real cap is undocumented)."""


def _about(data: Any) -> tuple[str, int | None]:
    """The notification type and order id of a webhook body, if it has them."""
    if not isinstance(data, dict):
        return "", None
    kind = data.get("notification_type")
    order = data.get("order")
    order_id = order.get("id") if isinstance(order, dict) else None
    return (
        kind if isinstance(kind, str) else "",
        order_id if type(order_id) is int else None,
    )


def wire(event: StoredEvent) -> dict[str, Any]:
    """An event as ``GET /events`` sends it."""
    created = datetime.fromtimestamp(event.created_at, timezone.utc)
    return {
        "id": event.event_id,
        "status": event.status,
        "created_at": created.isoformat(timespec="seconds"),
        "data": event.data,
    }


class EventLog:
    def __init__(self) -> None:
        self._by_user: dict[str, list[StoredEvent]] = {}
        self._ids: dict[str, list[int]] = {}
        self._next_id = 1

    def add(self, user: str, data: Any, now: float) -> StoredEvent:
        kind, order_id = _about(data)
        event = StoredEvent(self._next_id, user, kind, order_id, "new", now, data)
        self._next_id += 1
        self._by_user.setdefault(user, []).append(event)
        self._ids.setdefault(user, []).append(event.event_id)
        return event

    def page(
        self,
        user: str,
        after_id: int,
        types: Collection[str] | None = None,
        limit: int = PAGE_CAP,
    ) -> list[StoredEvent]:
        """The user's events with an id above ``after_id``, oldest first, at most ``limit``."""
        events = self._by_user.get(user, [])
        start = bisect.bisect_right(self._ids.get(user, []), after_id)
        out: list[StoredEvent] = []
        for event in events[start:]:
            if types is None or event.notification_type in types:
                out.append(event)
                if len(out) >= limit:
                    break
        return out

    def mark_processed(self, user: str, event_id: int) -> StoredEvent | None:
        """Mark one of the user's events; ``None`` if the user has no such event."""
        ids = self._ids.get(user, [])
        i = bisect.bisect_left(ids, event_id)
        if i == len(ids) or ids[i] != event_id:
            return None
        event = attrs.evolve(self._by_user[user][i], status="processed")
        self._by_user[user][i] = event
        return event

    def all(self, user: str | None = None) -> list[StoredEvent]:
        if user is not None:
            return list(self._by_user.get(user, []))
        return sorted(
            (e for events in self._by_user.values() for e in events), key=lambda e: e.event_id
        )

    def __len__(self) -> int:
        return self._next_id - 1
