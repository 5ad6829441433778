"""Reading an order's news from the Event API: a sans-io cursor.

The cursor reads no clock and opens no socket.  It knows where the user's
event stream was read up to (``after_id``), which event ids it has seen, and
how the service has been behaving; the driver tells it what happened and
when, and gets back a :class:`Step`: what to report, which events to mark
processed, and what to do next.  Tests drive it with plain numbers.  How
it behaves when answers go wrong is shared with the Get order poller through
:class:`~transports.http.pacing.Pacing`.

An event is news for the order when ``data.order.id`` is the order's id and
``data.notification_type`` is ``order_paid`` (-> ``paid``) or
``order_canceled`` (-> ``canceled``), whatever ``data.order.status`` says
(inside ``order_canceled`` it is unconfirmed, xsolla.md §5.2).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import attrs

from orderfsm.core import FINAL_STATUSES, Observation, Position
from orderfsm.errors import TransportError
from orderfsm.interface import EVENTS, Health, HealthReport
from transports.events.page import (
    STATUS_FOR_NOTIFICATION,
    Busy,
    Malformed,
    Page,
    Rejected,
    Unexpected,
    classify,
)
from transports.http.base import HttpResponse
from transports.http.pacing import (
    Fail,
    Outcome,
    Pacing,
    PacingConfig,
    RefreshToken,
    Wait,
    fraction,
    non_negative,
    optional_positive,
    positive,
)


def _count(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"{attribute.name} must be a positive int, got {value!r}")


def _cursor(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value < 0:
        raise ValueError(f"{attribute.name} must be a non-negative int, got {value!r}")


@attrs.frozen
class EventsConfig:
    """Timing and options; the defaults follow Xsolla's Unity SDK (a request every 3 s)."""

    interval: float = attrs.field(default=3.0, validator=positive)
    """Seconds from one answer to the next request, while nothing is wrong."""
    jitter: float = attrs.field(default=0.1, validator=fraction)
    """Each wait is stretched or shrunk by up to this fraction."""
    first_delay: float = attrs.field(default=0.0, validator=non_negative)
    backoff_max: float = attrs.field(default=60.0, validator=positive)
    """Longest wait after repeated failures (it doubles from ``interval``)."""
    give_up_after: float | None = attrs.field(default=None, validator=optional_positive)
    """Fail with ``ServiceUnavailable`` after failing this long; ``None``: keep trying."""
    request_timeout: float = attrs.field(default=10.0, validator=positive)
    types: tuple[str, ...] = attrs.field(default=tuple(STATUS_FOR_NOTIFICATION), converter=tuple)
    """Sent as ``types`` so the server leaves out notifications that carry no status;
    empty: ask for everything."""
    send_project_id: bool = True
    """Send ``project_id`` as the Unity SDK does."""
    start_after: int = attrs.field(default=0, validator=_cursor)
    """The first ``after_id``.  0 reads the user's whole retained history, so a
    status that changed before tracking began is still seen."""
    page_size: int = attrs.field(default=100, validator=_count)
    """A page with this many entries is taken to be full: the next one is asked at once
    (if the page moved ``after_id``; else after ``interval``, as any page)."""
    mark_processed: bool = False
    """``POST /events/{id}/processed`` for each event that was news for the order.
    Off by default: marking belongs to whoever fulfils orders, not to a tracker."""
    dedupe_window: int = attrs.field(default=4096, validator=_count)
    """How many of the highest event ids seen are remembered to drop repeats; an
    id below all of them is taken for a repeat and dropped too."""


@attrs.frozen
class Finish:
    """The order reached a final status; ``observation`` is the one that said so."""

    observation: Observation


Next = Wait | RefreshToken | Finish | Fail


@attrs.frozen
class Step:
    next: Next
    observations: tuple[Observation, ...] = ()
    """News for the order, oldest first; ``raw`` is the event as received."""
    health: HealthReport | None = None
    """Set only when the health changes."""
    warnings: tuple[str, ...] = ()
    """Worth logging, changes nothing (a skipped entry, an unknown notification)."""
    acknowledge: tuple[int, ...] = ()
    """Event ids to mark processed (only with ``mark_processed``)."""


class EventCursor:
    """One order's reader of the user's event stream, between answers.

    What a page means is decided here; when to ask again after a failure is
    the shared :class:`~transports.http.pacing.Pacing` policy.
    """

    def __init__(
        self,
        order_id: int,
        config: EventsConfig,
        random: Callable[[], float],
        project_id: int | None = None,
    ) -> None:
        self.order_id = order_id
        self.project_id = project_id
        self.config = config
        self._pacing = Pacing(
            PacingConfig.of(config),
            random,
            source=EVENTS,
            subject=f"order {order_id}",
            answer="Event API answer",
        )
        self._after_id = config.start_after
        self._seen: set[int] = set()
        self._lowest: list[int] = []
        """``_seen`` as a min-heap: the window forgets its lowest id first."""
        self._forgotten = 0
        """The highest id the window forgot; nothing at or below it is news any more."""

    @property
    def after_id(self) -> int:
        """The highest event id read so far (the next request's ``after_id``)."""
        return self._after_id

    @property
    def health(self) -> Health | None:
        return self._pacing.health

    def query(self) -> dict[str, str]:
        """The next request's query parameters."""
        query = {"after_id": str(self._after_id)}
        if self.config.types:
            query["types"] = ",".join(self.config.types)
        if self.config.send_project_id and self.project_id is not None:
            query["project_id"] = str(self.project_id)
        return query

    def start(self, now: float) -> Step:
        return Step(
            Wait(now + self.config.first_delay),
            health=self._pacing.report(Health.CONNECTING, now, "reading the Event API"),
        )

    def on_response(
        self, response: HttpResponse, now: float, wall_now: float | None = None
    ) -> Step:
        """An answer arrived at ``now``; ``wall_now`` (Unix time) reads a dated ``Retry-After``."""
        self._check_running()
        verdict = classify(response, wall_now)
        if isinstance(verdict, (Rejected, Busy, Unexpected)):
            return self._paced(self._pacing.judge(verdict, self.order_id, now))
        if isinstance(verdict, Malformed):
            return self._paced(self._pacing.unusable(verdict.error, now))
        return self._read(verdict, now)

    def on_error(self, error: TransportError, now: float) -> Step:
        """No answer: a timeout, a refused or dropped connection, a broken response."""
        self._check_running()
        return self._paced(self._pacing.unusable(error, now))

    def on_token_error(self, error: BaseException, now: float) -> Step:
        """The caller's token callable raised (or returned a non-token)."""
        self._check_running()
        return self._paced(self._pacing.token_failed(error, now))

    # --- internals ----------------------------------------------------------

    def _check_running(self) -> None:
        if self._pacing.over:
            raise RuntimeError("the event reader already finished or failed")

    def _paced(self, outcome: Outcome) -> Step:
        return Step(outcome.next, health=outcome.health)

    def _read(self, page: Page, now: float) -> Step:
        self._pacing.recovered()
        read_up_to = self._after_id
        warnings = list(page.warnings)
        news: list[Observation] = []
        matched: list[int] = []
        for event in page.events:
            if not self._remember(event.event_id):
                continue  # a repeat: already reported
            if event.order_id != self.order_id:
                continue
            status = STATUS_FOR_NOTIFICATION.get(event.notification_type or "")
            if status is None:
                warnings.append(
                    f"order {self.order_id}: ignoring event {event.event_id} "
                    f"of type {event.notification_type!r}"
                )
                continue
            matched.append(event.event_id)
            news.append(
                Observation(
                    self.order_id,
                    status,
                    source=EVENTS,
                    at=now,
                    position=Position(event_id=event.event_id),
                    raw=event.raw,
                )
            )
            if status in FINAL_STATUSES:
                break
        acknowledge = tuple(matched) if self.config.mark_processed else ()
        if news and news[-1].status in FINAL_STATUSES:
            health = self._pacing.finish(now, f"final status {news[-1].status}")
            return Step(Finish(news[-1]), tuple(news), health, tuple(warnings), acknowledge)
        if page.size >= self.config.page_size and self._after_id > read_up_to:
            # Catching up on a backlog: not "caught up" yet, so not HEALTHY either.
            # (A full page that moved the cursor nowhere would come back the same:
            # asked again at once, it would be asked in a busy loop.)
            return Step(Wait(now), tuple(news), None, tuple(warnings), acknowledge)
        health = self._pacing.report(Health.HEALTHY, now, "Event API answered")
        next_at = self._pacing.next_poll(now)
        return Step(Wait(next_at), tuple(news), health, tuple(warnings), acknowledge)

    def _remember(self, event_id: int) -> bool:
        """Note an event id; False if it was seen already, or may have been.

        The window keeps the highest ids and forgets the lowest first, so a
        forgotten id sits below every remembered one: an id at or below the
        highest forgotten one is dropped as a repeat rather than reported a
        second time (a late event that old is given up: "exactly once" wins).
        """
        if event_id in self._seen or event_id <= self._forgotten:
            return False
        self._seen.add(event_id)
        heapq.heappush(self._lowest, event_id)
        while len(self._lowest) > self.config.dedupe_window:
            forgotten = heapq.heappop(self._lowest)
            self._seen.discard(forgotten)
            self._forgotten = max(self._forgotten, forgotten)
        self._after_id = max(self._after_id, event_id)
        return True


__all__ = ["EventCursor", "EventsConfig", "Fail", "Finish", "Next", "RefreshToken", "Step", "Wait"]
