"""The optional exporters: Prometheus scraped over HTTP and parsed with its own parser,
OpenTelemetry read back through the SDK's in-memory reader and span exporter."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from support_cli import start, watch_args
from support_tracker import emulator_tracker
from support_webhook import answer_of

from orderfsm.metrics.otel import instrument_receiver, instrument_tracker
from orderfsm.metrics.prometheus import register_tracker, serve_metrics
from orderfsm.supervisor.tracker import Tracker
from transports.emulator import Emulator
from transports.http import open_http_client
from transports.webhook import SyncWebhookReceiver, WebhookReceiver, authorization_header

pytestmark = pytest.mark.anyio

FORBIDDEN_LABELS = {"order_id", "order", "user", "user_id", "token"}


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(seed=29, ping_interval=1.0) as emulator:
        yield emulator


async def _one_done_order(emu: Emulator, tracker: Tracker) -> int:
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    tracker.track(order_id, token=user.token, user_id=user.external_id)
    await emu.wait_connected(user)
    await emu.run_script(order_id, [(0.05, "paid"), (0.05, "done")])
    await tracker.wait(order_id)
    return order_id


async def test_prometheus_scrape_shows_the_tracker(emu: Emulator) -> None:
    registry = CollectorRegistry()
    user = await emu.create_user()
    async with emulator_tracker(emu, user) as tracker:
        register_tracker(tracker, registry)
        async with serve_metrics(registry) as url, open_http_client() as http:
            await _one_done_order(emu, tracker)
            answer = await http.request("GET", url)
            missing = await http.request("GET", url.replace("/metrics", "/nothing"))
            stats = tracker.stats()
    assert answer.status == 200 and missing.status == 404
    assert answer.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.body.decode())
        for s in family.samples
    }
    names = {name for name, _ in samples}
    assert samples[("orderfsm_orders_tracked_total", ())] == 1
    assert samples[("orderfsm_orders_settled_total", (("outcome", "succeeded"),))] == 1
    assert samples[("orderfsm_orders_settled_total", (("outcome", "expired"),))] == 0
    assert samples[("orderfsm_orders_unsettled_total", (("reason", "timed_out"),))] == 0
    for source, count in stats.changes.items():
        assert samples[("orderfsm_status_changes_total", (("source", source),))] == count
    assert samples[("orderfsm_get_order_answers_total", (("code", "200"),))] >= 2
    # The order is done; its player's socket lingers (healthy) for their next order.
    assert samples[("orderfsm_websocket_connections", (("health", "healthy"),))] == 1
    assert samples[("orderfsm_websocket_sockets_opened_total", ())] == 1
    assert "orderfsm_orders_active" in names and "orderfsm_orders_polling" in names
    for family in text_string_to_metric_families(answer.body.decode()):
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        for s in family.samples:
            assert not FORBIDDEN_LABELS & set(s.labels), s


async def test_opentelemetry_metrics_and_spans(emu: Emulator) -> None:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    spans = InMemorySpanExporter()
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(spans))
    user = await emu.create_user()
    async with emulator_tracker(emu, user) as tracker:
        instrument_tracker(tracker, meter_provider=meters, tracer_provider=tracers)
        order_id = await _one_done_order(emu, tracker)
        data = reader.get_metrics_data()
    assert data is not None
    points = {
        (metric.name, tuple(sorted((point.attributes or {}).items()))): point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    }
    assert points[("orderfsm.orders_tracked", ())] == 1
    assert points[("orderfsm.orders_settled", (("outcome", "succeeded"),))] == 1
    assert points[("orderfsm.get_order_answers", (("code", "200"),))] >= 2
    finished = spans.get_finished_spans()
    track = [s for s in finished if s.name == "orderfsm.track"]
    assert len(track) == 1 and track[0].attributes is not None
    assert track[0].attributes["orderfsm.order_id"] == order_id
    assert track[0].attributes["orderfsm.outcome"] == "succeeded"
    requests = [s for s in finished if s.name == "orderfsm.get_order"]
    assert requests and all(
        s.attributes is not None and s.attributes["http.response.status_code"] == 200
        for s in requests
    )
    meters.shutdown()
    tracers.shutdown()


def test_watch_serves_its_metrics(emu: Emulator) -> None:
    """``orderfsm watch --metrics-port 0`` says where, and the scrape parses."""

    async def prepare() -> tuple[int, str]:
        user = await emu.create_user()
        return await emu.create_order(user), user.token

    order_id, token = anyio.run(prepare)
    args = watch_args(emu, order_id, "--token-env", "T", "--metrics-port", "0", "--timeout", "60")
    process = start(args, T=token)
    try:
        assert process.stdout is not None
        note = json.loads(process.stdout.readline())["note"]
        assert note.startswith("metrics: http://127.0.0.1:")
        with urllib.request.urlopen(note.removeprefix("metrics: "), timeout=10) as answer:
            scraped = answer.read().decode()
    finally:
        process.kill()
        process.communicate()
    names = {f.name for f in text_string_to_metric_families(scraped)}
    assert {"orderfsm_orders_tracked", "orderfsm_websocket_connections"} <= names


@pytest.mark.parametrize("receiver_class", [WebhookReceiver, SyncWebhookReceiver])
async def test_opentelemetry_for_a_webhook_receiver(
    receiver_class: type[WebhookReceiver | SyncWebhookReceiver],
) -> None:
    """Both receivers make a span of each delivery (the synchronous one made none)."""
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    spans = InMemorySpanExporter()
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(spans))
    receiver = receiver_class("otel-secret")
    instrument_receiver(receiver, meter_provider=meters, tracer_provider=tracers)
    body = b'{"notification_type": "order_paid", "order": {"id": 5}, "items": []}'
    await answer_of(receiver, {"Authorization": authorization_header(body, "otel-secret")}, body)
    await answer_of(receiver, {"Authorization": "Signature " + "0" * 40}, body)
    data = reader.get_metrics_data()
    assert data is not None
    points = {
        (metric.name, tuple(sorted((point.attributes or {}).items()))): point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    }
    assert points[("orderfsm.webhook_deliveries", (("outcome", "handled"),))] == 1
    assert points[("orderfsm.webhook_deliveries", (("outcome", "forged"),))] == 1
    delivered = [s for s in spans.get_finished_spans() if s.name == "orderfsm.webhook"]
    assert [s.attributes and s.attributes["http.response.status_code"] for s in delivered] == [
        204,
        400,
    ]
    meters.shutdown()
    tracers.shutdown()
