"""The I/O shell around :class:`EventCursor`, and the custom transport built on it.

Runs on asyncio and trio alike; only the HTTP client differs (see
:mod:`transports.http`).  Requests never overlap: the next one is scheduled
from the previous answer.
"""

from __future__ import annotations

import logging
import random as _random
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import anyio
import attrs

from orderfsm.core import Observation
from orderfsm.interface import EVENTS, ObservationSink, TokenProvider
from transports.events.cursor import EventCursor, EventsConfig, Fail, Finish, Step
from transports.http import HttpClient, HttpError, HttpResponse
from transports.http.shell import ask, client_for, report_cancelled, send

DEFAULT_BASE_URL = "https://getupdate.xsolla.com"

logger = logging.getLogger("orderfsm.events")


class UserView(Protocol):
    @property
    def token(self) -> TokenProvider: ...


class OrderView(Protocol):
    """What the transport reads from the tracker's ``OrderContext``.

    Structural, so that this package depends on the transport contract only
    and not on the supervisor; ``OrderContext`` satisfies it.
    """

    @property
    def order_id(self) -> int: ...

    @property
    def project_id(self) -> int: ...

    @property
    def user(self) -> UserView: ...

    @property
    def http(self) -> HttpClient | None: ...


EventTransport = Callable[[OrderView, ObservationSink], Awaitable[None]]
"""A custom transport (``orderfsm.supervisor.custom.CustomTransport``)."""


def events_url(base_url: str, query: Mapping[str, str] | None = None) -> str:
    url = base_url.rstrip("/") + "/events"
    return f"{url}?{urllib.parse.urlencode(query)}" if query else url


async def follow_events(
    order_id: int,
    *,
    token: TokenProvider,
    sink: ObservationSink,
    project_id: int | None = None,
    http: HttpClient | None = None,
    base_url: str = DEFAULT_BASE_URL,
    config: EventsConfig | None = None,
    random: Callable[[], float] | None = None,
) -> Observation:
    """Read the user's Event API stream until the order is final; return that observation.

    Observations (``source="events"``, ``position.event_id`` set, ``raw`` =
    the event as received) and health reports go to ``sink`` as they happen.
    A terminal failure is reported as ``FAILED`` and then raised
    (``TokenRejected``, ``UnexpectedAnswer``, or ``ServiceUnavailable`` with
    ``give_up_after``).  Cancelling the call stops it and reports ``STOPPED``.
    """
    config = config or EventsConfig()
    cursor = EventCursor(order_id, config, random or _random.Random().random, project_id)
    current_token: str | None = None
    try:
        async with client_for(http) as client:

            async def get(bearer: str) -> HttpResponse:
                # The query is built at request time: it carries the latest after_id.
                url = events_url(base_url, cursor.query())
                return await send(client, "GET", url, bearer, config.request_timeout)

            step = cursor.start(anyio.current_time())
            while True:
                _emit(step, sink)
                if step.acknowledge and current_token is not None:
                    await _acknowledge(client, base_url, step.acknowledge, current_token, config)
                action = step.next
                if isinstance(action, Finish):
                    return action.observation
                if isinstance(action, Fail):
                    raise action.error
                current_token, step = await ask(cursor, action, current_token, token, get)
    except anyio.get_cancelled_exc_class():
        report_cancelled(sink, EVENTS, cursor.health)
        raise


def _emit(step: Step, sink: ObservationSink) -> None:
    for warning in step.warnings:
        logger.warning(warning, extra={"event": "events.warning"})
    for observation in step.observations:
        sink.observe(observation)
    if step.health is not None:
        sink.report(step.health)


async def _acknowledge(
    client: HttpClient, base_url: str, ids: tuple[int, ...], token: str, config: EventsConfig
) -> None:
    """Best effort: a failed mark is logged, and costs the order nothing."""
    for event_id in ids:
        url = f"{events_url(base_url)}/{event_id}/processed"
        try:
            response = await send(client, "POST", url, token, config.request_timeout)
        except HttpError as exc:
            logger.warning(
                "could not mark event %s processed: %s",
                event_id,
                exc,
                extra={"event": "events.ack_failed"},
            )
            continue
        if not 200 <= response.status < 300:
            logger.warning(
                "marking event %s processed answered %s",
                event_id,
                response.status,
                extra={"event": "events.ack_failed", "code": response.status},
            )


def event_api(
    base_url: str = DEFAULT_BASE_URL,
    *,
    interval: float | None = None,
    config: EventsConfig | None = None,
    random: Callable[[], float] | None = None,
) -> EventTransport:
    """A custom transport that follows each tracked order through the Event API.

    ::

        Tracker(project_id=P, token=jwt, extra=[event_api()])

    ``interval`` overrides ``config.interval``.  The user token and the HTTP
    client come from the tracker; each order reads the user's stream on its
    own, so N orders of one user cost N requests per interval.
    """
    settings = config or EventsConfig()
    if interval is not None:
        settings = attrs.evolve(settings, interval=interval)

    async def event_api_transport(order: OrderView, sink: ObservationSink) -> None:
        await follow_events(
            order.order_id,
            token=order.user.token,
            sink=sink,
            project_id=order.project_id,
            http=order.http,
            base_url=base_url,
            config=settings,
            random=random,
        )

    return event_api_transport
