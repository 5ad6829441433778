"""Custom transports inside the tracker: their news counts, their failures do not crash it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anyio
import pytest
from support_tracker import emulator_tracker

from orderfsm import Observation, Status
from orderfsm.errors import TokenRejected, TransportError
from orderfsm.interface import Health, HealthReport, ObservationSink
from orderfsm.supervisor import stragglers
from orderfsm.supervisor.custom import OrderContext
from orderfsm.supervisor.policy import DefaultPolicy
from orderfsm.supervisor.tracker import Tracker
from orderfsm.testing import eventually
from transports.emulator import Emulator

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(ping_interval=0, seed=31) as emulator:
        yield emulator


def custom_tracker(*extra: object) -> Tracker:
    return Tracker(
        project_id=1,
        token="unused",
        transports=(),
        extra=extra,  # type: ignore[arg-type]
        fetch_details=False,
        policy=DefaultPolicy(deadline=30.0),
    )


async def test_a_custom_transport_alone_follows_an_order() -> None:
    async def scripted(order: OrderContext, sink: ObservationSink) -> None:
        for status in ("new", "paid", "paid", "done"):
            await anyio.sleep(0.01)
            sink.observe(Observation(order.order_id, status, "scripted", anyio.current_time()))
        await anyio.sleep_forever()

    async with custom_tracker(scripted) as tracker:
        result = await tracker.wait(42)
    assert result.status is Status.DONE and result.source == "scripted"
    assert [c.status for c in result.changes] == [Status.NEW, Status.PAID, Status.DONE]


async def test_when_every_custom_transport_gave_up_wait_fails_at_once() -> None:
    async def refused(order: OrderContext, sink: ObservationSink) -> None:
        raise TokenRejected("no")

    async with custom_tracker(refused) as tracker:
        with anyio.fail_after(2), pytest.raises(TokenRejected):
            await tracker.wait(42)


async def test_a_custom_transports_end_is_logged_reported_and_named_in_the_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression: an ``OrderFsmError`` ended a transport without a log line or a
    ``FAILED`` report, and the order's error did not say which transport it came
    from (nor carry the transport's exception as its cause)."""
    refusal = TokenRejected("the token was refused")

    async def refused_here(order: OrderContext, sink: ObservationSink) -> None:
        await anyio.sleep(0.01)
        raise refusal

    async def buggy_here(order: OrderContext, sink: ObservationSink) -> None:
        await anyio.sleep(0.01)
        raise KeyError("bug")

    reports: list[HealthReport] = []
    for transport, kind, event in (
        (refused_here, TokenRejected, "transport.ended"),
        (buggy_here, TransportError, "transport.failed"),
    ):
        reports.clear()
        caplog.clear()
        async with Tracker(
            project_id=1,
            transports=(),
            extra=[transport],
            fetch_details=False,
            on_report=lambda order_id, report: reports.append(report),
        ) as tracker:
            with anyio.fail_after(2), pytest.raises(kind) as info:
                await tracker.wait(42)
        name = transport.__name__
        assert name in str(info.value)
        if kind is TokenRejected:
            assert info.value.__cause__ is refusal
        else:
            assert type(info.value.__cause__) is KeyError
        (report,) = reports
        assert (report.source, report.health, report.error) == (name, Health.FAILED, info.value)
        (record,) = [r for r in caplog.records if getattr(r, "event", "") == event]
        assert record.levelname == ("WARNING" if kind is TokenRejected else "ERROR")
        assert (record.order_id, record.source) == (42, name)  # type: ignore[attr-defined]


async def test_a_buggy_custom_transport_does_not_crash_the_tracker() -> None:
    async def buggy(order: OrderContext, sink: ObservationSink) -> None:
        async with anyio.create_task_group():
            raise KeyError("bug")

    async def fine(order: OrderContext, sink: ObservationSink) -> None:
        await anyio.sleep(0.2)
        sink.observe(Observation(order.order_id, "canceled", "fine", anyio.current_time()))
        await anyio.sleep_forever()

    async with custom_tracker(buggy, fine) as tracker:
        result = await tracker.wait(7)
        assert result.status is Status.CANCELED
    async with custom_tracker(buggy) as tracker:
        with anyio.fail_after(2), pytest.raises(TransportError):
            await tracker.wait(8)


async def test_webhook_style_observations_before_tracking_are_not_lost() -> None:
    async with Tracker(project_id=1, transports=("webhook",), fetch_details=False) as tracker:
        tracker.observe(Observation(99, "paid", "webhook", anyio.current_time()))
        tracker.observe(Observation(99, "canceled", "webhook", anyio.current_time()))
        result = await tracker.wait(99)
    assert result.status is Status.CANCELED
    assert [c.status for c in result.changes] == [Status.PAID, Status.CANCELED]


async def test_repeated_news_for_an_order_not_tracked_is_kept_once_per_status() -> None:
    """A source repeating the same news for an order nobody tracks (a webhook retried
    for hours, a custom feed) grew that order's kept list without end; one sighting
    of each status is all a later ``track`` needs, and it still gets them all."""
    import tracemalloc

    async with Tracker(project_id=1, transports=("webhook",), fetch_details=False) as tracker:
        tracker.observe(Observation(99, "paid", "webhook", anyio.current_time()))
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(20_000):
                tracker.observe(Observation(99, "paid", "webhook", anyio.current_time()))
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        tracker.observe(Observation(99, "canceled", "webhook", anyio.current_time()))
        result = await tracker.wait(99)
    assert grown < 100_000  # bytes; about 4 MB before
    assert [c.status for c in result.changes] == [Status.PAID, Status.CANCELED]


def cleanup_fails(status: str | None, in_place: anyio.Event | None = None) -> object:
    """A transport with a task group whose child fails in its cleanup, as a cancelled
    transport's child may: on trio its cancellation then ends in a group of both.
    ``in_place`` is set once the child runs."""

    async def transport(order: OrderContext, sink: ObservationSink) -> None:
        async def child() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                raise RuntimeError("cleanup failed")

        async with anyio.create_task_group() as tg:
            tg.start_soon(child)
            await anyio.sleep(0.05)
            if in_place is not None:
                in_place.set()
            if status is not None:
                sink.observe(Observation(order.order_id, status, "mine", anyio.current_time()))
            await anyio.sleep_forever()

    return transport


async def test_a_custom_transport_failing_as_it_is_cancelled_costs_its_order_only() -> None:
    """Regression (trio): the group of the cancellation and the child's failure escaped
    the transport's task and tore the tracker's task group down, every order with it."""
    async with custom_tracker(cleanup_fails("canceled")) as tracker:
        first = await tracker.wait(42)
        second = await tracker.wait(43)  # the tracker still serves orders
    assert first.status is second.status is Status.CANCELED


async def test_a_custom_transport_failing_as_the_tracker_closes_does_not_break_the_exit() -> None:
    in_place = anyio.Event()
    async with custom_tracker(cleanup_fails(None, in_place)) as tracker:
        tracker.track(42)
        await in_place.wait()
    # the exit returned: the failure was logged, not raised through the task group


async def test_a_custom_transports_health_never_stands_for_the_trackers_own(
    emu: Emulator,
) -> None:
    """Regression: a custom transport reporting its own socket's failure under the
    name ``websocket`` made the tracker let go of its real WebSocket and keep the
    custom one's error: the order, settled on Xsolla, was never followed again."""

    async def own_socket_failed(order: OrderContext, sink: ObservationSink) -> None:
        now = anyio.current_time()
        refused = TokenRejected("my socket's token was refused")
        sink.report(HealthReport("websocket", Health.FAILED, now, "my socket", error=refused))
        await anyio.sleep_forever()

    user = await emu.create_user()
    order_id = await emu.create_order(user.external_id)
    heard: list[HealthReport] = []
    async with emulator_tracker(
        emu,
        user,
        transports=("websocket",),
        extra=[own_socket_failed],
        on_report=lambda _, report: heard.append(report),
    ) as tracker:
        tracker.track(order_id)
        await emu.wait_connected(user)
        await eventually(lambda: any(r.reason == "my socket" for r in heard))
        await emu.run_script(order_id, [(0.0, "paid"), (0.1, "done")])
        with anyio.fail_after(10):
            result = await tracker.wait(order_id)
    assert result.status is Status.DONE and result.source == "websocket"
    assert any(r.reason == "my socket" for r in heard)  # the application still hears it


async def test_an_at_from_another_clock_does_not_stretch_the_expired_grace() -> None:
    """Regression: a custom transport stamping ``expired`` with ``time.time()`` (an
    epoch, far ahead of the loop's clock) put the end of the grace decades away:
    with no deadline the order never settled."""

    async def wall_clock(order: OrderContext, sink: ObservationSink) -> None:
        await anyio.sleep(0.05)
        sink.observe(Observation(order.order_id, "expired", "mine", time.time()))
        await anyio.sleep_forever()

    async with Tracker(
        project_id=1,
        transports=("webhook",),
        extra=[wall_clock],
        fetch_details=False,
        policy=DefaultPolicy(deadline=None, expired_grace=0.3),
    ) as tracker:
        started = anyio.current_time()
        with anyio.fail_after(5):
            result = await tracker.wait(42)
    assert result.status is Status.EXPIRED
    (change,) = result.changes
    assert started <= change.at <= anyio.current_time()  # on the loop's clock


async def test_a_custom_transport_slow_to_stop_is_named_while_the_tracker_waits_for_it(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a transport that ignores its cancellation held the tracker's exit
    without a word (structured concurrency cannot leave it behind; the exit can
    say what it waits for).  Named whether its order ended or the tracker closes."""
    monkeypatch.setattr(stragglers, "STUCK_AFTER", 0.3)
    returned: dict[int, float] = {}

    async def stubborn(order: OrderContext, sink: ObservationSink) -> None:
        try:
            if order.order_id == 1:
                sink.observe(Observation(1, "canceled", "stubborn", anyio.current_time()))
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(1.5)
            returned[order.order_id] = anyio.current_time()

    async with custom_tracker(stubborn) as tracker:
        await tracker.wait(1)  # its transport cancelled: it takes 1.5 s to return
        tracker.track(2)  # this one runs until the tracker closes
        await anyio.sleep(0.1)
    closed = anyio.current_time()
    stuck = [r for r in caplog.records if getattr(r, "event", "") == "transport.stuck"]
    assert sorted(r.order_id for r in stuck) == [1, 2]  # type: ignore[attr-defined]
    assert {r.source for r in stuck} == {"stubborn"}  # type: ignore[attr-defined]
    assert all(r.levelname == "WARNING" for r in stuck)
    assert closed >= max(returned.values())  # the exit did wait for it
