"""A clean stop (SIGTERM on a deploy, the end of ``serve_receiver``) lets the deliveries in
flight finish and record their answers, and refuses new ones in a way Xsolla retries.

A delivery cut between its handler's effect and its recorded answer gets no
answer; Xsolla retries it once the claim's lease is over, and the plain handler
runs again: a double grant on every deploy that caught a slow handler.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from support_cli import spawn, start
from support_fleet import TESTS, fleet, post
from support_journal import connect
from support_webhook import KINDS, SECRET, order_paid, serve_receiver, signed

from orderfsm.journal import JournalSettings
from transports.journal import open_journal
from transports.webhook import Notification, OrderPaid, WebhookReceiver

pytestmark = pytest.mark.anyio

SLOW = 1, 9
"""The delivery whose handler is in flight at the stop, and one sent during the stop."""


async def refused(url: str, order_id: int) -> bool:
    """Refused at once: no connection (0) or 503, which Xsolla retries (a 4xx it would not).
    Not left waiting in a listener's queue until the process exits (a timeout raises)."""
    with anyio.fail_after(5):
        return await post(url, order_paid(order_id), within=10) in (0, 503)


@pytest.mark.parametrize("server_loop", ["asyncio", "trio"])
async def test_a_sigterm_waits_for_the_handler_in_flight_and_records_its_answer(
    server_loop: str, tmp_path: Path
) -> None:
    store = str(tmp_path / "journal.sqlite3")
    log = tmp_path / "effects.log"
    log.touch()
    gate = tmp_path / "gate"
    gate.mkdir()
    slow, late = SLOW
    env = {
        "JOURNAL_APP_LOG": str(log),
        "JOURNAL_APP_GATE": str(gate),
        "JOURNAL_APP_PAUSE": f"return:{slow}",
    }
    options = ("--handler", "journal_app:plain")
    async with fleet(store, 1, *options, backend=server_loop, env=env) as group:
        server = group.receivers[0]
        answers: list[int] = []
        async with anyio.create_task_group() as tg:

            async def deliver() -> None:
                answers.append(await post(server.url, order_paid(slow), within=30))

            tg.start_soon(deliver)
            await server.wait_for(f"PAUSED return {slow}")  # its effect is written
            server.process.send_signal(signal.SIGTERM)
            await anyio.sleep(1.5)  # longer than hypercorn's old 1 s of grace
            assert await refused(server.url, late)
            (gate / f"go-{slow}").touch()
        with anyio.fail_after(30):
            assert await server.process.wait() == 0
    assert answers == [204]
    assert log.read_text().split() == [str(slow)]  # the effect once
    db = connect(store)
    try:
        claims = db.execute("SELECT key, state, status FROM orderfsm_claims").fetchall()
    finally:
        db.close()
    # Answered, so a retry would repeat the 204; the late delivery never got in.
    assert claims == [(f"order_paid:{slow}", "answered", 204)]


@pytest.mark.parametrize("left_by", ["return", "cancellation"])
@pytest.mark.parametrize("kind", KINDS)
async def test_leaving_serve_receiver_waits_for_the_delivery_in_flight(
    kind: str, left_by: str
) -> None:
    """Left as the block ends, or by cancellation (anyio's usual way to stop a server:
    the hypercorn server was cut at once then, the drain notwithstanding)."""
    started, release = anyio.Event(), anyio.Event()
    handled: list[int] = []

    async def handler(notification: Notification) -> None:
        started.set()
        await release.wait()
        assert isinstance(notification, OrderPaid)
        handled.append(notification.order_id)

    slow, late = SLOW
    receiver = WebhookReceiver(SECRET, handler)
    answers: list[int] = []
    urls: list[str] = []
    serving, stop, stopped = anyio.Event(), anyio.Event(), anyio.Event()

    async def serve() -> None:
        with anyio.CancelScope() as scope:
            async with serve_receiver(receiver, kind) as url:
                urls.append(url)
                serving.set()
                await stop.wait()
                if left_by == "cancellation":
                    scope.cancel()
                    await anyio.lowlevel.checkpoint()  # the cancel reaches the block here
        stopped.set()

    async def deliver() -> None:
        answers.append(await post(urls[0], order_paid(slow), within=30))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            await serving.wait()
            tg.start_soon(deliver)
            await started.wait()
            stop.set()
            await anyio.sleep(1.5)  # longer than hypercorn's old 1 s of grace
            assert not stopped.is_set()
            assert await refused(urls[0], late)
            release.set()
    assert answers == [204]
    assert handled == [slow]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_handler_that_never_returns_holds_the_stop_for_one_lease_only(kind: str) -> None:
    lease = 1.0
    started = anyio.Event()

    async def stuck(notification: Notification) -> None:
        started.set()
        await anyio.sleep_forever()

    journal = open_journal(None, JournalSettings(lease=lease))
    receiver = WebhookReceiver(SECRET, stuck, store=journal)
    answers: list[int] = []
    async with anyio.create_task_group() as tg:
        async with serve_receiver(receiver, kind) as url:

            async def deliver() -> None:
                answers.append(await post(url, order_paid(SLOW[0]), within=30))

            tg.start_soon(deliver)
            with anyio.fail_after(10):
                await started.wait()
            leaving = anyio.current_time()
        stopped = anyio.current_time() - leaving
    await journal.aclose()
    # Cut after the lease (the claim runs out a lease later and Xsolla's retry runs
    # it again), rather than holding a deploy for as long as it hangs; its client
    # gets no answer, or hypercorn's 500 for a cancelled app, both retried.
    assert lease <= stopped < lease + 5
    assert answers in ([0], [500])


CTRL_C_IN_THE_DRAIN = """
import os, signal, sys, threading
import anyio
from support_fleet import post
from support_webhook import SECRET, order_paid
from transports.webhook import WebhookReceiver, serve_receiver

async def main() -> None:
    started = anyio.Event()

    async def stuck(notification: object) -> None:
        started.set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        async with serve_receiver(WebhookReceiver(SECRET, stuck), server="asgi") as url:
            tg.start_soon(post, url, order_paid(1), 30.0)
            await started.wait()
            # Ctrl-C once the block is left, while the drain waits for the handler.
            threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()

anyio.run(main, backend=sys.argv[1])
"""


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_ctrl_c_during_the_drain_ends_the_asgi_server(loop: str) -> None:
    """Ctrl-C while the drain waits (trio raises KeyboardInterrupt into it, asyncio's
    runner cancels the main task) ends the process: the interrupted drain used to skip
    the server's stop, leaving hypercorn running in its shielded scope and the task
    group waiting for it forever."""
    process = spawn([sys.executable, "-c", CTRL_C_IN_THE_DRAIN, loop], PYTHONPATH=str(TESTS))
    try:
        _, err = process.communicate(timeout=20)  # far less than the 60 s lease
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError("still running after Ctrl-C") from None
    assert process.returncode != 0, err  # interrupted, not a clean end


@pytest.mark.parametrize("server_loop", ["asyncio", "trio"])
def test_a_second_ctrl_c_stops_the_webhook_server_at_once_and_quietly(server_loop: str) -> None:
    """The README: a second SIGTERM or Ctrl-C stops the process at once.  On asyncio the
    second Ctrl-C raised KeyboardInterrupt into the loop, and the cancelled request's
    tracebacks (aiohttp's) filled the operator's terminal."""
    server = start(
        [
            *("webhook-server", "--secret-env", "SECRET", "--port", "0"),
            *("--backend", server_loop, "--handler", "journal_app:plain"),
        ],
        SECRET=SECRET,
        PYTHONPATH=str(TESTS),
        JOURNAL_APP_PAUSE="enter:1",  # its handler never returns: the drain would last a lease
    )
    assert server.stdout is not None
    try:
        url = server.stdout.readline().strip()
        body = order_paid(1)
        request = urllib.request.Request(url, body, signed(body), method="POST")
        threading.Thread(target=_answer_of, args=(request,), daemon=True).start()
        assert server.stdout.readline().startswith("PAUSED enter 1")
        server.send_signal(signal.SIGINT)
        time.sleep(1)  # draining
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=10)
    finally:
        server.kill()
        server.communicate()
    assert server.returncode in (-signal.SIGINT, 130)  # a shell says 130 for both
    assert "Traceback" not in err, err


def _answer_of(request: urllib.request.Request) -> None:
    with contextlib.suppress(OSError):  # no answer: the process stopped in the handler
        urllib.request.urlopen(request, timeout=30).close()
