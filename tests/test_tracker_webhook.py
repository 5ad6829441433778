"""Webhook-only tracking: a backend that learns statuses from Xsolla's webhooks alone.

The emulator's webhook sender signs and delivers over loopback to the real
receiver (ASGI, served by hypercorn on asyncio and trio), which feeds the
tracker; duplicates and a badly signed delivery change nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from support_webhook import order_paid, serve_receiver, signed

from orderfsm import Observation, Status, StatusChange, Tracker
from orderfsm.supervisor.early import EARLY_OBSERVATIONS_KEPT
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


def paid(order_id: int) -> Observation:
    return Observation(order_id, Status.PAID, source="webhook", at=anyio.current_time())


def webhooks_only(journal: str | None = None) -> Tracker:
    return Tracker(
        project_id=1, transports=("webhook",), until="paid", fetch_details=False, journal=journal
    )


async def test_news_past_the_kept_orders_is_dropped_counted_and_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only the untracked orders heard of most recently keep their news for a later
    ``track()``: a receiver given every webhook of a project while the tracker follows
    a few orders drops news all day.  So a drop is counted in ``stats()`` (and the
    exporters), and logged at once, then at most once a minute, not once per order."""
    first = 5_000_000
    last = first + EARLY_OBSERVATIONS_KEPT + 2  # three orders too many
    async with webhooks_only() as t:
        with caplog.at_level(logging.INFO, logger="orderfsm"):
            for order_id in range(first, last + 1):
                t.observe(paid(order_id))
        dropped = t.stats().early_dropped
        t.track(first)  # its news went first
        t.track(first + 3)  # the oldest kept
        t.track(last)
        with anyio.fail_after(5):
            kept = [(await t.wait(o)).status for o in (first + 3, last)]
        assert t.status(first) is None
    assert dropped == 3 and kept == [Status.PAID, Status.PAID]
    logged = [r for r in caplog.records if getattr(r, "event", None) == "tracker.early_dropped"]
    assert [(r.levelname, getattr(r, "count", None)) for r in logged] == [("INFO", 1)]


async def test_the_drops_after_the_last_line_are_logged_as_the_tracker_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An operator adds up the ``tracker.early_dropped`` lines: the drops within a
    minute of the last one are told when the tracker closes, not when a later drop
    comes (which, the tracker closed, never does)."""
    first = 5_000_000
    with caplog.at_level(logging.INFO, logger="orderfsm"):
        async with webhooks_only() as t:
            for order_id in range(first, first + EARLY_OBSERVATIONS_KEPT + 3):
                t.observe(paid(order_id))
            dropped = t.stats().early_dropped
    logged = [r for r in caplog.records if getattr(r, "event", None) == "tracker.early_dropped"]
    assert dropped == 3 and [getattr(r, "count", None) for r in logged] == [1, 2]


async def test_a_webhook_dropped_by_the_tracker_is_still_read_from_a_shared_journal(
    tmp_path: Path,
) -> None:
    """What the README promises of the limit: with the receiver's store as the
    tracker's journal, a webhook's status is recorded there in its claim's transaction,
    so ``track()`` learns it from the journal even after the tracker dropped its copy."""
    journal = str(tmp_path / "fleet.sqlite3")
    order_id = 4_000_000
    async with webhooks_only(journal) as t:
        async with WebhookReceiver(SECRET, sink=t, store=journal) as receiver:
            body = order_paid(order_id)
            assert (await receiver.handle(signed(body, SECRET), body)).status == 204
        for other in range(order_id + 1, order_id + 1 + EARLY_OBSERVATIONS_KEPT):
            t.observe(paid(other))
        assert t.stats().early_dropped == 1  # the webhook's order, heard of first
        t.track(order_id)
        with anyio.fail_after(10):
            result = await t.wait(order_id)
    assert (result.status, result.source) == (Status.PAID, "webhook")
