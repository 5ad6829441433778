"""OpenTelemetry metrics and spans for a tracker (``pip install 'orderfsm[otel]'``).

Only the API package is used: with no SDK configured by the application,
every instrument and span is a no-op.  The metrics are observable
instruments whose callbacks read ``tracker.stats()`` when the SDK collects,
named ``orderfsm.<name>`` from the same catalog as the Prometheus ones.
Spans: ``orderfsm.track`` from the start of an order's tracking to its end
(``orderfsm.order_id``, ``orderfsm.outcome``), and ``orderfsm.get_order``
around each Get order request (``http.response.status_code``)::

    from orderfsm.metrics.otel import instrument_tracker

    async with Tracker(...) as tracker:
        instrument_tracker(tracker)   # the global meter and tracer providers by default
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from orderfsm.metrics.catalog import RECEIVER, TRACKER, MetricSpec, samples
from orderfsm.metrics.counters import Listener
from orderfsm.metrics.records import UNSETTLED, TrackerStats

if TYPE_CHECKING:
    from transports.webhook import ReceiverStats
    from transports.webhook.counters import DeliveryListener

NAME = "orderfsm"
StatsT = TypeVar("StatsT")


class Instrumentable(Protocol):
    def stats(self) -> TrackerStats: ...

    def instrument(self, listener: Listener) -> None: ...


def _version() -> str:
    from orderfsm import __version__

    return __version__


def register_instruments(
    meter: Meter, specs: Sequence[MetricSpec[StatsT]], read: Callable[[], StatsT]
) -> None:
    """One observable instrument per catalog entry, each reading ``read()`` when collected."""
    for spec in specs:

        def callback(
            options: CallbackOptions, spec: MetricSpec[StatsT] = spec
        ) -> Iterable[Observation]:
            del options
            return [
                Observation(value, {} if label is None else {spec.label or "": label})
                for label, value in samples(spec, read())
            ]

        create = (
            meter.create_observable_counter
            if spec.kind == "counter"
            else meter.create_observable_up_down_counter
        )
        create(f"{NAME}.{spec.name}", [callback], unit=spec.unit, description=spec.help)


class _Answer:
    __slots__ = ("_span",)

    def __init__(self, span: Span) -> None:
        self._span = span

    def answered(self, label: str) -> None:
        if label.isdigit():
            self._span.set_attribute("http.response.status_code", int(label))
            if int(label) >= 400:
                self._span.set_status(Status(StatusCode.ERROR))
        else:
            self._span.set_attribute("error.type", label)
            self._span.set_status(Status(StatusCode.ERROR))


class TrackerSpans:
    """A tracker listener that turns tracking and Get order requests into spans."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer
        self._orders: dict[int, Span] = {}

    def tracked(self, order_id: int) -> None:
        self._orders[order_id] = self._tracer.start_span(
            f"{NAME}.track", attributes={f"{NAME}.order_id": order_id}
        )

    def finished(self, order_id: int, label: str) -> None:
        span = self._orders.pop(order_id, None)
        if span is None:
            return
        span.set_attribute(f"{NAME}.outcome", label)
        if label in UNSETTLED:
            span.set_status(Status(StatusCode.ERROR, label))
        span.end()

    @contextmanager
    def request(self, what: str) -> Iterator[_Answer]:
        name = f"{NAME}.{what.lower().replace(' ', '_')}"
        with self._tracer.start_as_current_span(name, kind=SpanKind.CLIENT) as span:
            yield _Answer(span)


def instrument_tracker(
    tracker: Instrumentable,
    *,
    meter_provider: Any = None,
    tracer_provider: Any = None,
    spans: bool = True,
) -> None:
    """Publish ``tracker.stats()`` as OpenTelemetry instruments and, with ``spans``,
    trace each order's tracking and each Get order request."""
    meter = metrics.get_meter(NAME, _version(), meter_provider=meter_provider)
    register_instruments(meter, TRACKER, tracker.stats)
    if spans:
        tracer = trace.get_tracer(NAME, _version(), tracer_provider=tracer_provider)
        tracker.instrument(TrackerSpans(tracer))


class _Delivery:
    __slots__ = ("_span",)

    def __init__(self, span: Span) -> None:
        self._span = span

    def answered(self, outcome: str, status: int) -> None:
        self._span.set_attribute("http.response.status_code", status)
        self._span.set_attribute(f"{NAME}.outcome", outcome)
        if status >= 500:
            self._span.set_status(Status(StatusCode.ERROR, outcome))


class ReceiverSpans:
    """A receiver listener that makes a server span of each webhook delivery."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    @contextmanager
    def delivery(self) -> Iterator[_Delivery]:
        with self._tracer.start_as_current_span(f"{NAME}.webhook", kind=SpanKind.SERVER) as span:
            yield _Delivery(span)


class InstrumentableReceiver(Protocol):
    def stats(self) -> ReceiverStats: ...

    def instrument(self, listener: DeliveryListener | None) -> None: ...


def instrument_receiver(
    receiver: InstrumentableReceiver,
    *,
    meter_provider: Any = None,
    tracer_provider: Any = None,
    spans: bool = True,
) -> None:
    """Publish a webhook receiver's ``stats()`` as OpenTelemetry instruments and, with
    ``spans``, trace each delivery (``orderfsm.webhook``, with its status and outcome)."""
    meter = metrics.get_meter(NAME, _version(), meter_provider=meter_provider)
    register_instruments(meter, RECEIVER, receiver.stats)
    if spans:
        tracer = trace.get_tracer(NAME, _version(), tracer_provider=tracer_provider)
        receiver.instrument(ReceiverSpans(tracer))
