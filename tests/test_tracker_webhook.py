"""Webhook-only tracking: a backend that learns statuses from Xsolla's webhooks alone.

The emulator's webhook sender signs and delivers over loopback to the real
receiver (ASGI, served by hypercorn on asyncio and trio), which feeds the
tracker; duplicates and a badly signed delivery change nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support_webhook import serve_receiver

from orderfsm import Status, StatusChange, Tracker
from transports.emulator import Emulator
from transports.webhook import WebhookReceiver

pytestmark = pytest.mark.anyio

SECRET = "webhook-only-secret"


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(seed=23, secret=SECRET) as emulator:
        yield emulator


async def test_webhooks_alone_carry_an_order_to_its_final_status(emu: Emulator) -> None:
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    async with Tracker(
        project_id=emu.project_id, transports=("webhook",), fetch_details=False
    ) as t:
        receiver = WebhookReceiver(SECRET, sink=t)
        async with serve_receiver(receiver, "asgi") as url:
            await emu.configure_webhooks(url, retry_intervals=[0.05, 0.05])
            changes: list[object] = []
            t.track(order_id)
            await emu.set_status(order_id, "paid")
            await emu.send_webhook(order_id, "order_paid", copies=2)  # duplicate deliveries
            await emu.send_webhook(order_id, "order_canceled", bad_signature=True)  # forged
            await emu.set_status(order_id, "canceled")
            async for change in t.watch(order_id):
                changes.append(change)
            result = await t.wait(order_id)
    assert all(isinstance(c, StatusChange) for c in changes)
    assert [(c.status, c.source) for c in result.changes] == [
        (Status.PAID, "webhook"),
        (Status.CANCELED, "webhook"),
    ]
    forged = [
        a
        for a in await emu.webhook_deliveries()
        if a.order_id == order_id and not a.signature_valid
    ]
    assert forged and all(a.status == 400 for a in forged)
