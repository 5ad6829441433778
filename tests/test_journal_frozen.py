"""A PostgreSQL server that stops answering without closing its connections (a host
that hangs, a disk that stopped answering, a network cut without a reset): the
deliveries meanwhile are answered 5xx at their deadline, never 4xx and never late,
and once it answers again every notification is handled exactly once, by the same
receiver, with no restart."""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from support_postgres import frozen, own_server, postgres_server
from support_webhook import SECRET, order_paid, signed

from orderfsm.journal import JournalSettings
from transports.journal import open_journal
from transports.journal.base import STATEMENT_PAST_WAIT
from transports.journal.testing import TemporaryPostgres
from transports.webhook import WebhookReceiver

WAIT = 0.5
"""The journal's ``wait``: a claim's delivery is answered within it."""
LEASE = 3.0
MARGIN = 0.5
"""What a delivery may take past its wait (the signature, a thread hop, a loaded host)."""
HANG = 5.0
"""A delivery not answered by then is taken as hung (the test ends rather than wait)."""


@pytest.fixture(scope="module")
def server() -> Iterator[TemporaryPostgres]:
    """A server of this module's own: the session's is never frozen."""
    pg = own_server()
    try:
        yield pg
    finally:
        pg.close()


@pytest.mark.anyio
async def test_deliveries_to_a_frozen_server_are_answered_5xx_in_time_and_handled_once_after(
    server: TemporaryPostgres,
) -> None:
    """Orders 3-6 arrive while the server is frozen: 3, 4 and 5 together (one starts
    the claims' batch, which blocks in its thread; the other two queue behind it),
    6 later.  Each is answered 5xx: those queued within ``wait``, the batch's once a
    statement would have been cancelled by a server that answers (``wait`` + 1 s).
    Order 2's
    handler returns during the freeze: its answer waits (up to the lease) and is
    recorded once the server answers.  Then, retried as Xsolla would, every order is
    handled once: a claim the stuck batch took for nobody runs out with its lease."""
    handled: list[int] = []
    in_handler, release = anyio.Event(), anyio.Event()

    async def handler(notification: Any) -> None:
        handled.append(notification.order_id)
        if notification.order_id == 2:
            in_handler.set()
            await release.wait()

    answers: dict[int, tuple[int | None, float]] = {}
    answered = anyio.Event()
    """Set once orders 3-6 are answered."""

    async def send(receiver: WebhookReceiver, order_id: int) -> None:
        started, status = anyio.current_time(), None
        with anyio.move_on_after(HANG):
            status = (await receiver.handle(*_signed(order_id))).status
        answers[order_id] = (status, anyio.current_time() - started)
        if all(i in answers for i in (3, 4, 5, 6)):
            answered.set()

    settings = JournalSettings(wait=WAIT, lease=LEASE)
    async with open_journal(server.url(), settings) as journal:
        receiver = WebhookReceiver(SECRET, handler, store=journal)
        await send(receiver, 1)  # the pools and the batches' thread are up
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(send, receiver, 2)
            await in_handler.wait()
            with frozen(server):
                for order_id in (3, 4, 5):
                    tasks.start_soon(send, receiver, order_id)
                await anyio.sleep(0.2)
                tasks.start_soon(send, receiver, 6)
                release.set()  # order 2's answer is to be written now
                with anyio.move_on_after(HANG):  # thawed then at the latest, answered or not
                    await answered.wait()
        during = {i: answers[i] for i in (3, 4, 5, 6)}
        with anyio.fail_after(LEASE + 20):  # Xsolla's retries, until answered 2xx
            for order_id in (3, 4, 5, 6):
                for _ in itertools.count():
                    if (await receiver.handle(*_signed(order_id))).status == 204:
                        break
                    await anyio.sleep(0.2)
        claims = await journal.claims([f"order_paid:{i}" for i in range(1, 7)])
    assert all(status is not None and 500 <= status < 600 for status, _ in during.values()), (
        during  # no fix: the batch's first is answered once the server is back (204, 5.2 s)
    )
    took = sorted(took for _, took in during.values())
    assert took[-1] < WAIT + STATEMENT_PAST_WAIT + MARGIN, during  # the stuck batch's
    assert took[-2] < WAIT + MARGIN, during  # behind it
    assert answers[1][0] == 204 and answers[2][0] == 204
    assert sorted(handled) == [1, 2, 3, 4, 5, 6]
    assert {claim.answer.status for claim in claims.values() if claim.answer} == {204}
    assert len(claims) == 6 and all(claim.answer for claim in claims.values())


def _signed(order_id: int) -> tuple[dict[str, str], bytes]:
    return signed(order_paid(order_id)), order_paid(order_id)


@pytest.mark.parametrize(
    ("query", "expected"),
    [("", [1, 5, 2, 3, 1500]), ("keepalives_idle=7&tcp_user_timeout=9000", [1, 7, 2, 3, 9000])],
)
def test_pooled_connections_have_keepalives_and_a_user_timeout_ours_or_the_urls_own(
    query: str, expected: list[int]
) -> None:
    """``statement_timeout`` is the server's: a connection to a server that is gone
    without a reset (a network cut) fails only by TCP's own means, about 15 minutes
    without these.  Read from the kernel, on both pools' connections: ours (the
    listener's keepalives, and a user timeout of ``wait`` + 1 s), or the URL's."""
    url = postgres_server().url()
    if query:
        url += ("&" if "?" in url else "?") + query
    journal = open_journal(url, JournalSettings(wait=WAIT))
    journal.sync.open()
    got = []
    try:
        pools = journal.store._pools  # type: ignore[attr-defined]
        for batches in (False, True):
            with pools.connection(time.monotonic() + 5, batches=batches) as connection:
                got.append(_tcp_settings(connection.pgconn.socket))
    finally:
        journal.sync.close()
    assert got == [expected, expected]  # no fix: [1, 7200, 75, 9, 0] (libpq on, Linux's defaults)


def _tcp_settings(fileno: int) -> list[int]:
    # A duplicate of libpq's descriptor: the same socket, closed here without closing it.
    with socket.socket(fileno=os.dup(fileno)) as sock:
        return [sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)] + [
            sock.getsockopt(socket.IPPROTO_TCP, option)
            for option in (
                socket.TCP_KEEPIDLE,
                socket.TCP_KEEPINTVL,
                socket.TCP_KEEPCNT,
                socket.TCP_USER_TIMEOUT,
            )
        ]
