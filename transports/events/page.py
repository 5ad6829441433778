"""What one ``GET /events`` answer says: a verdict, and the events in it.

Pure: a response in, a verdict out.  Only the 200 is the Event API's own;
every other status is read as Get order's are (see
:mod:`transports.http.answers`: the two services share Xsolla's error
shapes and ``Retry-After``), so both transports agree on every status code.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from orderfsm.core import Status
from transports.events.errors import InvalidEventsAnswer
from transports.http.answers import Busy, Rejected, Service, Unexpected, classify_failure
from transports.http.base import HttpResponse

EVENT_API = Service("Event API", rejected="Event API rejected the token")

STATUS_FOR_NOTIFICATION = {"order_paid": Status.PAID, "order_canceled": Status.CANCELED}
"""The notifications that carry an order's status (webhook bodies, xsolla.md §5.2)."""


@attrs.frozen
class Event:
    """One entry of ``events``; ``raw`` is the entry exactly as received."""

    event_id: int
    data: Any
    raw: Any = attrs.field(eq=False, repr=False)

    @property
    def order_id(self) -> int | None:
        """``data.order.id``, read leniently (a digit string counts)."""
        order = self.data.get("order") if isinstance(self.data, dict) else None
        value = order.get("id") if isinstance(order, dict) else None
        if type(value) is str and value.isdigit():
            return int(value)
        return value if type(value) is int else None

    @property
    def notification_type(self) -> str | None:
        kind = self.data.get("notification_type") if isinstance(self.data, dict) else None
        return kind if isinstance(kind, str) else None


@attrs.frozen
class Page:
    """A good answer: its events in id order, plus what was wrong with skipped entries."""

    events: tuple[Event, ...]
    size: int
    """How many entries the answer held, skipped ones included (to tell a full page)."""
    warnings: tuple[str, ...] = ()


@attrs.frozen
class Malformed:
    error: InvalidEventsAnswer


Verdict = Page | Rejected | Busy | Malformed | Unexpected


def classify(response: HttpResponse, wall_now: float | None = None) -> Verdict:
    if response.status == 200:
        try:
            return parse_page(response.body)
        except InvalidEventsAnswer as exc:
            return Malformed(exc)
    return classify_failure(response, EVENT_API, wall_now)


def _event_id(value: object) -> int | None:
    if type(value) is str and value.isdigit():
        value = int(value)
    return value if type(value) is int and value > 0 else None


def parse_page(body: bytes | str) -> Page:
    """Read a 200 body; a bad entry is skipped with a warning, a bad page raises.

    One malformed event must not hide the good ones after it, so entries are
    judged one by one; only a body that is not ``{"events": [...]}`` at all
    is an :class:`InvalidEventsAnswer`.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidEventsAnswer(f"Event API answer is not JSON: {exc}") from None
    entries = data.get("events") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise InvalidEventsAnswer(
            f"Event API answer has no 'events' list: {str(data)[:120]!r}"
        ) from None
    events: list[Event] = []
    warnings: list[str] = []
    for i, entry in enumerate(entries):
        event_id = _event_id(entry.get("id")) if isinstance(entry, dict) else None
        if event_id is None or not isinstance(entry, dict):
            warnings.append(f"skipping events[{i}]: no positive integer id: {str(entry)[:120]!r}")
            continue
        events.append(Event(event_id, entry.get("data"), entry))
    events.sort(key=lambda e: e.event_id)
    return Page(tuple(events), len(entries), tuple(warnings))


__all__ = [
    "EVENT_API",
    "STATUS_FOR_NOTIFICATION",
    "Busy",
    "Event",
    "Malformed",
    "Page",
    "Rejected",
    "Unexpected",
    "Verdict",
    "classify",
    "parse_page",
]
