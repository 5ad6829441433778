"""The blocking tracker, from plain synchronous code, against the emulator on loopback.

No test here runs an event loop of its own: the tracker brings its own thread
(and the emulator its own); the emulator is driven through ``anyio.run``, as
a script would.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import anyio
import psutil
import pytest
from support_webhook import SECRET, order_paid, signed

from orderfsm import Status, StatusChange, TrackerClosed
from orderfsm.blocking import Tracker, WaitTimeout
from transports.emulator import Emulator
from transports.emulator.records import User
from transports.webhook import SyncWebhookReceiver

STEPS = [(0.05, "paid"), (0.05, "done")]


@pytest.fixture(scope="module")
def xsolla() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


def new_order(xsolla: Emulator) -> tuple[User, int]:
    user = anyio.run(xsolla.create_user)
    return user, anyio.run(xsolla.create_order, user)


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    """The loop of the tracker's own thread: each test runs on both."""
    return str(request.param)


def tracker_for(xsolla: Emulator, user: User, backend: str, **options: object) -> Tracker:
    return Tracker(
        project_id=xsolla.project_id,
        token=user.token,
        ws_url=xsolla.ws_url,
        api_url=xsolla.api_url,
        backend=backend,
        **options,  # type: ignore[arg-type]
    )


def sockets_to(xsolla: Emulator) -> int:
    """This process's connections to the emulator (the emulator's own side excluded)."""
    port = urlsplit(xsolla.base_url).port
    return sum(1 for c in psutil.Process().net_connections() if c.raddr and c.raddr.port == port)


def test_wait_changes_callbacks_and_queue_and_nothing_left_behind(
    xsolla: Emulator, backend: str
) -> None:
    user, order_id = new_order(xsolla)
    threads_before = set(threading.enumerate())
    called_in: list[tuple[int, str]] = []
    drained: queue.Queue[StatusChange] = queue.Queue()

    def on_change(change: StatusChange) -> None:
        called_in.append((threading.get_ident(), str(change.status)))

    with tracker_for(xsolla, user, backend, on_change=on_change, queue=drained) as tracker:
        tracker.track(order_id)
        anyio.run(xsolla.wait_connected, user)
        assert sockets_to(xsolla) >= 1  # its WebSocket, while it runs
        anyio.run(xsolla.run_script, order_id, STEPS)
        seen = [str(change.status) for change in tracker.changes(order_id, timeout=30)]
        result = tracker.wait(order_id, timeout=30)
    assert seen == ["new", "paid", "done"]
    assert result.status is Status.DONE and result.succeeded
    # Every callback ran in this thread, in order; the queue got every change too.
    assert called_in == [(threading.get_ident(), s) for s in seen]
    assert [str(drained.get_nowait().status) for _ in seen] == seen and drained.empty()
    assert set(threading.enumerate()) - threads_before == set()  # no thread of its own left
    assert sockets_to(xsolla) == 0


def test_a_wait_that_times_out_leaves_the_order_tracked(xsolla: Emulator, backend: str) -> None:
    user, order_id = new_order(xsolla)
    with tracker_for(xsolla, user, backend) as tracker:
        with pytest.raises(WaitTimeout):
            tracker.wait(order_id, timeout=0.3)
        assert tracker.status(order_id) is Status.NEW
        anyio.run(xsolla.run_script, order_id, STEPS)
        assert tracker.wait(order_id, timeout=30).status is Status.DONE


def test_closing_ends_a_wait_in_another_thread_with_tracker_closed(
    xsolla: Emulator, backend: str
) -> None:
    user, order_id = new_order(xsolla)
    tracker = tracker_for(xsolla, user, backend)
    outcome: list[BaseException] = []
    started = threading.Event()

    def waiter() -> None:
        tracker.track(order_id)
        started.set()
        try:
            tracker.wait(order_id)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    assert started.wait(30)
    tracker.close()
    thread.join(30)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], TrackerClosed)


def test_a_sync_token_function_and_a_closed_tracker_refusing_calls(
    xsolla: Emulator, backend: str
) -> None:
    user, order_id = new_order(xsolla)
    asked: list[str] = []

    def token() -> str:  # a plain function (it may fetch a fresh JWT with blocking I/O)
        asked.append(threading.current_thread().name)
        return user.token

    tracker = Tracker(
        project_id=xsolla.project_id,
        token=token,
        ws_url=xsolla.ws_url,
        api_url=xsolla.api_url,
        backend=backend,
    )
    with tracker:
        anyio.run(xsolla.run_script, order_id, STEPS)
        assert tracker.wait(order_id, timeout=30).status is Status.DONE
    assert asked and threading.current_thread().name not in asked
    with pytest.raises(RuntimeError, match="closed"):
        tracker.track(order_id)


def test_a_sync_receiver_feeds_it_from_a_wsgi_thread(backend: str) -> None:
    """A WSGI app's receiver (no loop) tells the tracker of its process: webhooks alone."""
    with Tracker(
        project_id=1, transports=("webhook",), until="paid", fetch_details=False, backend=backend
    ) as tracker:
        receiver = SyncWebhookReceiver(SECRET, sink=tracker)
        body = order_paid(4242)
        worker = threading.Thread(target=receiver.handle, args=(signed(body), body))
        worker.start()
        result = tracker.wait(4242, timeout=30)
        worker.join(30)
    assert result.status is Status.PAID and result.source == "webhook"


def test_a_callback_may_block_on_the_tracker_and_later_callbacks_wait_for_it(
    xsolla: Emulator, backend: str
) -> None:
    user, order_id = new_order(xsolla)
    seen: list[str] = []

    def on_change(change: StatusChange) -> None:
        seen.append(str(change.status))
        if change.status is Status.PAID:  # e.g. a launcher that waits for the delivery here
            seen.append(f"waited: {tracker.wait(order_id, timeout=30).status}")

    with tracker_for(xsolla, user, backend, on_change=on_change) as tracker:
        tracker.track(order_id)
        anyio.run(xsolla.wait_connected, user)
        anyio.run(xsolla.run_script, order_id, STEPS)
        tracker.wait(order_id, timeout=30)
        tracker.dispatch()
    assert seen == ["new", "paid", "waited: done", "done"]


def test_callbacks_never_run_two_at_once_when_several_threads_dispatch(
    xsolla: Emulator, backend: str
) -> None:
    """A GUI's timer calls ``dispatch`` while a worker thread blocks in ``wait``: each ran
    the callback of the change it took, at the same time as the other, so ``done``
    could be shown before ``paid`` and the app's state was touched from two threads."""
    user, order_id = new_order(xsolla)
    busy = threading.Lock()
    ran: list[tuple[str, bool]] = []

    def on_change(change: StatusChange) -> None:
        alone = busy.acquire(blocking=False)
        ran.append((str(change.status), alone))
        time.sleep(0.1)  # a slow label update
        if alone:
            busy.release()

    with tracker_for(xsolla, user, backend, on_change=on_change) as tracker:
        tracker.track(order_id)
        anyio.run(xsolla.wait_connected, user)
        waiter = threading.Thread(target=tracker.wait, args=(order_id,), kwargs={"timeout": 30})
        waiter.start()
        anyio.run(xsolla.run_script, order_id, STEPS)
        deadline = time.monotonic() + 30
        while (waiter.is_alive() or len(ran) < 3) and time.monotonic() < deadline:
            tracker.dispatch()  # the GUI's timer
            time.sleep(0.005)
        waiter.join()
    assert ran == [("new", True), ("paid", True), ("done", True)]


def test_close_from_two_threads_returns_in_each_with_every_thread_ended(
    xsolla: Emulator, backend: str
) -> None:
    """A quit button's thread closes the tracker while the script leaves ``with``: the second
    ``close`` returned at once, while the first was still stopping the tracker's thread
    and sockets."""
    for _ in range(3):
        user, order_id = new_order(xsolla)
        threads_before = set(threading.enumerate())
        tracker = tracker_for(xsolla, user, backend)
        tracker.track(order_id)
        anyio.run(xsolla.wait_connected, user)
        other = threading.Thread(target=tracker.close)
        other.start()
        while True:  # until the other thread is closing it: calls are refused
            try:
                tracker.status(order_id)
            except RuntimeError:
                break
        tracker.close()
        assert set(threading.enumerate()) - threads_before - {other} == set()
        other.join(30)


def test_a_full_queue_costs_no_change_and_never_holds_the_tracker_up(
    xsolla: Emulator, caplog: pytest.LogCaptureFixture, backend: str
) -> None:
    """A bounded queue the app drains slowly: the tracker's thread put into it with
    ``put_nowait``, so ``queue.Full`` took the change from the queue and from
    ``on_change`` too (it came first), final statuses included.  Every change reaches
    both, in order, the queue's as it has room; meanwhile tracking goes on (``wait``
    returns while the queue is full), and ``close`` does not wait for a queue nobody
    drains any more: it names what the queue never had room for."""
    user, order_id = new_order(xsolla)
    later = anyio.run(xsolla.create_order, user)
    threads_before = set(threading.enumerate())
    called: list[tuple[int, str]] = []
    drained: queue.Queue[StatusChange] = queue.Queue(maxsize=1)

    def on_change(change: StatusChange) -> None:
        called.append((change.order_id, str(change.status)))

    with tracker_for(xsolla, user, backend, on_change=on_change, queue=drained) as tracker:
        tracker.track(order_id)
        anyio.run(xsolla.wait_connected, user)
        anyio.run(xsolla.run_script, order_id, STEPS)
        assert tracker.wait(order_id, timeout=30).status is Status.DONE  # the queue full
        tracker.dispatch()
        assert called == [(order_id, s) for s in ("new", "paid", "done")]
        got = [drained.get(timeout=5) for _ in range(3)]
        assert [(c.order_id, str(c.status)) for c in got] == called
        # Not drained any more (the app is closing): its next order fills the queue.
        tracker.track(later)
        anyio.run(xsolla.run_script, later, STEPS)
        assert tracker.wait(later, timeout=30).status is Status.DONE
        tracker.dispatch()
        assert called[3:] == [(later, s) for s in ("new", "paid", "done")]
    assert [(c.order_id, str(c.status)) for c in drained.queue] == [(later, "new")]
    assert set(threading.enumerate()) - threads_before == set()
    (undelivered,) = [r for r in caplog.records if getattr(r, "event", "") == "queue.undelivered"]
    assert f"order {later}: paid, order {later}: done" in undelivered.getMessage()
