"""Every metric the exporters publish, declared once: name, kind, help, label, where to read it.

The Prometheus collector and the OpenTelemetry instruments are both built
from this table, so the two never disagree on a name or a meaning.  Names
are given without a prefix or a ``_total``: Prometheus gets
``orderfsm_<name>_total`` for counters, OpenTelemetry ``orderfsm.<name>``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

import attrs

from orderfsm.interface import Health
from orderfsm.metrics.records import OUTCOMES, UNSETTLED, TrackerStats

if TYPE_CHECKING:
    from transports.centrifuge import WebSocketStats
    from transports.webhook import ReceiverStats

StatsT = TypeVar("StatsT")
Reading = int | float | Mapping[str, int] | Mapping[str, float] | None
"""A number, or numbers by label value; ``None`` when the metric does not apply."""


@attrs.frozen
class MetricSpec(Generic[StatsT]):
    name: str
    kind: Literal["counter", "gauge"]
    help: str
    read: Callable[[StatsT], Reading]
    label: str | None = None
    always: tuple[str, ...] = ()
    """Label values published even at zero, so their series exist from the first scrape."""
    unit: str = "1"
    """The OpenTelemetry unit (UCUM); Prometheus names carry theirs in the name."""


def _ws(read: Callable[[WebSocketStats], Reading]) -> Callable[[TrackerStats], Reading]:
    def reading(stats: TrackerStats) -> Reading:
        return None if stats.websocket is None else read(stats.websocket)

    return reading


TRACKER: tuple[MetricSpec[TrackerStats], ...] = (
    MetricSpec(
        "orders_tracked",
        "counter",
        "Orders whose tracking started.",
        lambda s: s.orders_tracked,
        unit="{order}",
    ),
    MetricSpec(
        "orders_active",
        "gauge",
        "Orders tracked and not finished.",
        lambda s: s.orders_active,
        unit="{order}",
    ),
    MetricSpec(
        "orders_settled",
        "counter",
        "Orders settled, by outcome.",
        lambda s: s.settled,
        "outcome",
        OUTCOMES,
        "{order}",
    ),
    MetricSpec(
        "orders_settled_late",
        "counter",
        "Orders whose tracking ended unsettled that settled after all, by outcome"
        " (each also in orders_settled and orders_unsettled).",
        lambda s: s.settled_late,
        "outcome",
        OUTCOMES,
        "{order}",
    ),
    MetricSpec(
        "orders_unsettled",
        "counter",
        "Orders whose tracking ended without a settlement, by reason.",
        lambda s: s.unsettled,
        "reason",
        UNSETTLED,
        "{order}",
    ),
    MetricSpec(
        "status_changes",
        "counter",
        "Status changes applied, by the source that saw them first.",
        lambda s: s.changes,
        "source",
        unit="{change}",
    ),
    MetricSpec(
        "conflicts",
        "counter",
        "Contradicting statuses reported.",
        lambda s: s.conflicts,
        unit="{conflict}",
    ),
    MetricSpec(
        "orders_polling",
        "gauge",
        "Orders being polled with Get order now.",
        lambda s: s.polling,
        unit="{order}",
    ),
    MetricSpec(
        "get_order_checks",
        "counter",
        "One-off Get order calls made because news may have been missed.",
        lambda s: s.checks,
        unit="{request}",
    ),
    MetricSpec(
        "get_order_answers",
        "counter",
        "Get order answers by HTTP status; timeout, connection_failed and bad_response "
        "for requests that got none.",
        lambda s: s.get_order,
        "code",
        unit="{response}",
    ),
    MetricSpec(
        "host_sleeps",
        "counter",
        "Times the host was seen waking from a sleep.",
        lambda s: s.host_sleeps,
        unit="{sleep}",
    ),
    MetricSpec(
        "early_news_dropped",
        "counter",
        "Orders not tracked whose news from observe() was dropped unreplayed, to keep"
        " only those heard of most recently.",
        lambda s: s.early_dropped,
        unit="{order}",
    ),
    MetricSpec(
        "websocket_connections",
        "gauge",
        "Open WebSocket connections (one per user), by health.",
        _ws(lambda w: w.connections),
        "health",
        tuple(h.value for h in Health),
        "{connection}",
    ),
    MetricSpec(
        "websocket_sockets_opened",
        "counter",
        "WebSocket handshakes that succeeded (connections and reconnections).",
        _ws(lambda w: w.sockets_opened),
        unit="{socket}",
    ),
    MetricSpec(
        "websocket_reconnects",
        "counter",
        "WebSocket connections that ended and were retried.",
        _ws(lambda w: w.reconnects),
        unit="{connection}",
    ),
    MetricSpec(
        "websocket_failures",
        "counter",
        "WebSocket connections that ended for good.",
        _ws(lambda w: w.failures),
        unit="{connection}",
    ),
    MetricSpec(
        "websocket_closes",
        "counter",
        "Why WebSocket connections ended: the close or error code, or the client's reason.",
        _ws(lambda w: w.closes),
        "code",
        unit="{connection}",
    ),
)


RECEIVER: tuple[MetricSpec[ReceiverStats], ...] = (
    MetricSpec(
        "webhook_deliveries",
        "counter",
        "Webhook deliveries by outcome.",
        lambda s: s.deliveries,  # every outcome, zeros included
        "outcome",
        unit="{delivery}",
    ),
    MetricSpec(
        "webhook_answers",
        "counter",
        "Webhook deliveries by the HTTP status answered.",
        lambda s: s.answers,
        "code",
        unit="{delivery}",
    ),
    MetricSpec(
        "webhook_handler_runs",
        "counter",
        "Runs of the application's webhook handler.",
        lambda s: s.handler_runs,
        unit="{run}",
    ),
    MetricSpec(
        "webhook_handler_seconds",
        "counter",
        "Time spent in the application's webhook handler.",
        lambda s: s.handler_seconds,
        unit="s",
    ),
    MetricSpec(
        "webhook_journal_calls",
        "counter",
        "Deliveries that went through the journal.",
        lambda s: s.journal_calls,
        unit="{delivery}",
    ),
    MetricSpec(
        "webhook_journal_seconds",
        "counter",
        "Time deliveries spent in the journal (claim, wait for a first answer, record).",
        lambda s: s.journal_seconds,
        unit="s",
    ),
    MetricSpec(
        "webhook_journal_failures",
        "counter",
        "Journal calls that failed (answered 5xx).",
        lambda s: s.journal_failures,
        unit="{failure}",
    ),
    MetricSpec(
        "webhook_journal_outage_seconds",
        "counter",
        "Time from a journal failure until the next call that worked.",
        lambda s: s.journal_outage_seconds,
        unit="s",
    ),
)


def samples(spec: MetricSpec[StatsT], stats: StatsT) -> list[tuple[str | None, float]]:
    """``(label value, number)`` pairs of one metric (label ``None`` for an unlabelled one);
    empty when it does not apply."""
    value = spec.read(stats)
    if value is None:
        return []
    if not isinstance(value, Mapping):
        return [(None, value)]
    counts: Mapping[str, float] = value
    rest = sorted(set(counts) - set(spec.always))
    return [(label, counts.get(label, 0)) for label in (*spec.always, *rest)]
