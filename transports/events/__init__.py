"""Following an order through Xsolla's Event API (``GET /events``, xsolla.md §6).

:func:`event_api` builds a custom transport for the tracker;
:func:`follow_events` runs one order standalone.  The decisions live in the
sans-io :class:`EventCursor`; the driver only sleeps and sends requests.
"""

from __future__ import annotations

from transports.events.cursor import EventCursor, EventsConfig, Finish, Next, Step
from transports.events.driver import (
    DEFAULT_BASE_URL,
    EventTransport,
    OrderView,
    event_api,
    events_url,
    follow_events,
)
from transports.events.errors import InvalidEventsAnswer
from transports.events.page import STATUS_FOR_NOTIFICATION, Event, Page, classify, parse_page
from transports.http.pacing import Fail, RefreshToken, Wait

__all__ = [
    "DEFAULT_BASE_URL",
    "STATUS_FOR_NOTIFICATION",
    "Event",
    "EventCursor",
    "EventTransport",
    "EventsConfig",
    "Fail",
    "Finish",
    "InvalidEventsAnswer",
    "Next",
    "OrderView",
    "Page",
    "RefreshToken",
    "Step",
    "Wait",
    "classify",
    "event_api",
    "events_url",
    "follow_events",
    "parse_page",
]
