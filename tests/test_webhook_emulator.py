"""The emulator's webhook sender against our receiver over loopback, on asyncio and trio.

The emulator signs like Xsolla, retries on its (scaled-down) schedule and
records every attempt with the answer it got, so these tests check what
Xsolla would see.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
from support_webhook import KINDS, serve_receiver

from orderfsm.testing import RecordingSink
from transports.emulator import Emulator, WebhookAttempt
from transports.webhook import (
    Notification,
    OrderCanceled,
    OrderPaid,
    WebhookReceiver,
)

SECRET = "emulator-webhook-secret"
RETRIES = [0.05, 0.05, 0.1]


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(secret=SECRET, seed=3) as emulator:
        yield emulator


class App:
    """The application's handler: records orders, fails the first ``fail_times`` calls."""

    def __init__(self, fail_times: int = 0) -> None:
        self.fail_times = fail_times
        self.calls = 0
        self.handled: list[Notification] = []

    async def __call__(self, notification: Notification) -> None:
        self.calls += 1
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError("database unavailable")
        self.handled.append(notification)


async def attempts_for(
    emu: Emulator,
    order_id: int,
    done: Callable[[list[WebhookAttempt]], bool],
) -> list[WebhookAttempt]:
    """The emulator's delivery attempts for one order, once ``done`` holds."""
    with anyio.fail_after(10):
        while True:
            mine = [a for a in await emu.webhook_deliveries() if a.order_id == order_id]
            if done(mine):
                return mine
            await anyio.sleep(0.02)


def answered(count: int) -> Callable[[list[WebhookAttempt]], bool]:
    return lambda attempts: sum(a.status is not None for a in attempts) >= count


async def paid_order(emu: Emulator) -> int:
    user = await emu.create_user()
    return await emu.create_order(user)


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
async def test_a_paid_order_is_delivered_verified_and_observed(emu: Emulator, kind: str) -> None:
    app = App()
    sink = RecordingSink()
    receiver = WebhookReceiver(SECRET, app, sink=sink)
    async with serve_receiver(receiver, kind) as url:
        await emu.configure_webhooks(url, RETRIES)
        order_id = await paid_order(emu)
        await emu.set_status(order_id, "paid")
        (attempt,) = await attempts_for(emu, order_id, answered(1))
    assert attempt.signature_valid and attempt.status == 204 and attempt.response_body == ""
    (note,) = app.handled
    assert isinstance(note, OrderPaid) and note.order_id == order_id
    assert note.billing is not None and str(note.billing.transaction.id) == note.order.invoice_id
    assert note.items and note.items[0].sku == "com.xsolla.item_1"
    assert [(o.order_id, o.status, o.source) for o in sink.observations] == [
        (order_id, "paid", "webhook")
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
async def test_a_canceled_order_is_observed_as_canceled(emu: Emulator, kind: str) -> None:
    app = App()
    sink = RecordingSink()
    async with serve_receiver(WebhookReceiver(SECRET, app, sink=sink), kind) as url:
        await emu.configure_webhooks(url, RETRIES)
        order_id = await paid_order(emu)
        await emu.set_status(order_id, "canceled")
        (attempt,) = await attempts_for(emu, order_id, answered(1))
    assert attempt.status == 204
    assert isinstance(app.handled[0], OrderCanceled)
    assert [o.status for o in sink.observations] == ["canceled"]


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
async def test_duplicate_deliveries_are_handled_once_and_answered_alike(
    emu: Emulator, kind: str
) -> None:
    app = App()
    async with serve_receiver(WebhookReceiver(SECRET, app), kind) as url:
        await emu.configure_webhooks(url, RETRIES)
        order_id = await paid_order(emu)
        await emu.set_status(order_id, "paid", webhook=False)
        await emu.send_webhook(order_id, copies=2)  # two at once
        await attempts_for(emu, order_id, answered(2))
        await emu.send_webhook(order_id)  # and once more, later
        attempts = await attempts_for(emu, order_id, answered(3))
    assert [a.status for a in attempts] == [204, 204, 204]
    assert app.calls == 1


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
async def test_a_badly_signed_delivery_is_refused_and_not_retried(emu: Emulator, kind: str) -> None:
    app = App()
    sink = RecordingSink()
    async with serve_receiver(WebhookReceiver(SECRET, app, sink=sink), kind) as url:
        await emu.configure_webhooks(url, RETRIES)
        order_id = await paid_order(emu)
        await emu.set_status(order_id, "paid", webhook=False)
        await emu.send_webhook(order_id, bad_signature=True)
        attempts = await attempts_for(emu, order_id, answered(1))
        await anyio.sleep(sum(RETRIES) + 0.1)  # room for a retry that must not come
        attempts = await attempts_for(emu, order_id, answered(1))
    (attempt,) = attempts
    assert not attempt.signature_valid and attempt.status == 400
    assert json.loads(attempt.response_body)["error"]["code"] == "INVALID_SIGNATURE"
    assert app.calls == 0 and sink.observations == []


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
async def test_a_handler_failure_is_retried_by_xsolla_and_then_handled_once(
    emu: Emulator, kind: str
) -> None:
    app = App(fail_times=2)
    async with serve_receiver(WebhookReceiver(SECRET, app), kind) as url:
        await emu.configure_webhooks(url, RETRIES)
        order_id = await paid_order(emu)
        await emu.set_status(order_id, "paid")
        attempts = await attempts_for(emu, order_id, lambda a: any(x.status == 204 for x in a))
        await emu.send_webhook(order_id)  # a late duplicate after success
        attempts = await attempts_for(emu, order_id, answered(4))
    assert [a.status for a in attempts] == [500, 500, 204, 204]
    assert [a.attempt for a in attempts[:3]] == [1, 2, 3]
    assert app.calls == 3 and len(app.handled) == 1


@pytest.mark.anyio
async def test_the_sqlite_journal_answers_a_redelivery_after_a_restart(
    emu: Emulator, tmp_path: Path
) -> None:
    path = tmp_path / "journal.sqlite3"
    app = App()
    order_id = await paid_order(emu)
    await emu.set_status(order_id, "paid", webhook=False)
    for round_ in (1, 2):
        receiver = WebhookReceiver(SECRET, app, store=path)
        async with serve_receiver(receiver, "asgi") as url:
            await emu.configure_webhooks(url, RETRIES)
            await emu.send_webhook(order_id)
            attempts = await attempts_for(emu, order_id, answered(round_))
    assert [a.status for a in attempts] == [204, 204]
    assert app.calls == 1

    # The in-memory journal, by contrast, forgets on restart.
    forgetful = App()
    for round_ in (3, 4):
        async with serve_receiver(WebhookReceiver(SECRET, forgetful), "asgi") as url:
            await emu.configure_webhooks(url, RETRIES)
            await emu.send_webhook(order_id)
            await attempts_for(emu, order_id, answered(round_))
    assert forgetful.calls == 2
