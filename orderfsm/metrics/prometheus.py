"""Prometheus metrics for a tracker (``pip install 'orderfsm[prometheus]'``).

A collector reads ``tracker.stats()`` at scrape time, so following orders
costs nothing extra between scrapes.  Names follow Prometheus' conventions
(see :mod:`orderfsm.metrics.catalog`): the ``orderfsm_`` prefix, ``_total``
on counters, few and fixed label values (outcomes, sources, status and close
codes), never an order id or a user::

    from orderfsm.metrics.prometheus import register_tracker, serve_metrics

    async with Tracker(...) as tracker:
        register_tracker(tracker)                 # on prometheus_client's default registry
        async with serve_metrics(port=9464):      # GET /metrics, on the running loop
            ...

``stats()`` copies its counts in single C calls, so prometheus_client's own
``start_http_server`` (a thread) may scrape it too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from orderfsm.journal import Answer
from orderfsm.metrics.catalog import RECEIVER, TRACKER, MetricSpec, samples
from orderfsm.metrics.records import TrackerStats

if TYPE_CHECKING:
    from transports.webhook import ReceiverStats

PREFIX = "orderfsm"
StatsT = TypeVar("StatsT")


class HasStats(Protocol):
    def stats(self) -> TrackerStats: ...


class HasReceiverStats(Protocol):
    def stats(self) -> ReceiverStats: ...


def families(
    specs: Sequence[MetricSpec[StatsT]], stats: StatsT, prefix: str = PREFIX
) -> Iterator[Metric]:
    """The metric families of one stats record, as the catalog declares them."""
    for spec in specs:
        found = samples(spec, stats)
        if not found:
            continue
        labels = [spec.label] if spec.label else []
        family_type = CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily
        family = family_type(f"{prefix}_{spec.name}", spec.help, labels=labels)
        for label, value in found:
            family.add_metric([] if label is None else [label], value)
        yield family


class StatsCollector(Collector, Generic[StatsT]):
    """Calls ``read()`` at each scrape and publishes the record as the catalog says."""

    def __init__(
        self, read: Callable[[], StatsT], specs: Sequence[MetricSpec[StatsT]], prefix: str
    ) -> None:
        self._read = read
        self._specs = specs
        self._prefix = prefix

    def collect(self) -> Iterator[Metric]:
        return families(self._specs, self._read(), self._prefix)


def register_tracker(
    tracker: HasStats, registry: CollectorRegistry = REGISTRY, *, prefix: str = PREFIX
) -> StatsCollector[TrackerStats]:
    """Export ``tracker.stats()`` on ``registry``; one tracker per registry and prefix
    (prometheus_client refuses a second collector with the same names)."""
    collector = StatsCollector(tracker.stats, TRACKER, prefix)
    registry.register(collector)
    return collector


def register_receiver(
    receiver: HasReceiverStats, registry: CollectorRegistry = REGISTRY, *, prefix: str = PREFIX
) -> StatsCollector[ReceiverStats]:
    """Export a webhook receiver's ``stats()`` on ``registry``."""
    collector = StatsCollector(receiver.stats, RECEIVER, prefix)
    registry.register(collector)
    return collector


def metrics_endpoint(
    registry: CollectorRegistry = REGISTRY,
) -> Callable[[], Awaitable[Answer]]:
    """``GET /metrics`` for the webhook server (``serve_receiver(..., endpoints=...)``)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    async def metrics() -> Answer:
        return Answer(200, generate_latest(registry), CONTENT_TYPE_LATEST)

    return metrics


@asynccontextmanager
async def serve_metrics(
    registry: CollectorRegistry = REGISTRY, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve ``GET /metrics`` on the running loop (aiohttp.web on asyncio, hypercorn
    under trio) until the block ends; yields its URL.  ``port=0`` picks a free port."""
    from transports.backend import on_asyncio
    from transports.webhook.serve import serve_aiohttp_app, serve_asgi_app

    if on_asyncio():
        from aiohttp import web
        from prometheus_client.aiohttp import make_aiohttp_handler

        app = web.Application()
        app.router.add_get("/metrics", make_aiohttp_handler(registry))
        async with serve_aiohttp_app(app, host, port) as base:
            yield base + "/metrics"
    else:
        async with serve_asgi_app(metrics_asgi_app(registry), host, port) as base:
            yield base + "/metrics"


def metrics_asgi_app(registry: CollectorRegistry = REGISTRY) -> Any:
    """prometheus_client's ASGI app at ``/metrics`` only (404 elsewhere), lifespan-aware."""
    from prometheus_client import make_asgi_app

    metrics = make_asgi_app(registry)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["type"] == "http" and scope["path"] == "/metrics":
            await metrics(scope, receive, send)
        elif scope["type"] == "http":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    return app
