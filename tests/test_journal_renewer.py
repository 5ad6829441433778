"""The journal's one claim renewer: it costs a fast handler nothing (no write, no task)
and leaves nothing behind when its journal closes; a synchronous receiver's slow
handler is renewed by it too.  Memory, SQLite and PostgreSQL; asyncio and trio."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from support_journal import on_every_backend, url_for
from support_webhook import SECRET, order_paid, signed

from orderfsm.journal import JournalSettings
from transports.journal import open_journal
from transports.webhook import Notification, WebhookReceiver
from transports.webhook.sync import SyncWebhookReceiver

SHORT = JournalSettings(lease=0.6, wait=0.3)
"""A renewal would be due 0.2 s after a claim is taken."""


async def nothing(notification: Notification) -> None:
    """A handler far shorter than a third of the lease."""


def renewer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "orderfsm-claim-renewer"]


@pytest.mark.anyio
@on_every_backend
async def test_a_fast_handler_makes_no_renewal_write(backend: str, tmp_path: Path) -> None:
    """Deliveries for longer than several renewal periods, each handler far shorter
    than one: every claim keeps the lease it was taken with (nothing renewed it).

    A delivery the machine stalled for a whole renewal period (a loaded CI host) may
    rightly be renewed: it is left out, and counted as the most renewals allowed."""
    every = SHORT.lease / 3
    took: dict[int, float] = {}
    async with open_journal(url_for(backend, tmp_path), SHORT) as journal:
        receiver = WebhookReceiver(SECRET, nothing, store=journal)
        started = time.monotonic()
        while time.monotonic() < started + 4 * every or len(took) < 10:
            order_id = 9000 + len(took)
            body = order_paid(order_id)
            began = time.monotonic()
            assert (await receiver.handle(signed(body), body, "185.30.20.1")).status == 204
            took[order_id] = time.monotonic() - began
        claims = await journal.claims([f"order_paid:{i}" for i in took])
        assert journal.sync.renewer.running  # it was there, with nothing to renew
    assert len(claims) == len(took)
    stalled = {i for i, seconds in took.items() if seconds >= every}
    assert len(stalled) < len(took) / 2, f"the machine stalled too often to judge: {took}"
    for order_id, claim in ((i, claims[f"order_paid:{i}"]) for i in took):
        if order_id not in stalled:
            assert abs(claim.lease_until - claim.claimed_at - SHORT.lease) < 1e-3, claim
    assert journal.sync.renewer.renewals <= len(stalled)


@pytest.mark.anyio
@on_every_backend
async def test_the_renewer_starts_with_the_first_claim_and_stops_with_the_journal(
    backend: str, tmp_path: Path
) -> None:
    before = renewer_threads()
    async with open_journal(url_for(backend, tmp_path), SHORT) as journal:
        assert not journal.sync.renewer.running  # none for a journal that ran no handler
        receiver = WebhookReceiver(SECRET, nothing, store=journal)
        body = order_paid(9100)
        assert (await receiver.handle(signed(body), body, "185.30.20.1")).status == 204
        assert journal.sync.renewer.running and len(renewer_threads()) == len(before) + 1
    assert not journal.sync.renewer.running and renewer_threads() == before
    # A journal closed does not start it again.
    journal.sync.renewer.hold("order_paid:9101", 1)
    assert not journal.sync.renewer.running and renewer_threads() == before


@on_every_backend
def test_a_synchronous_receiver_renews_its_slow_handlers_claim_and_stops_its_renewer(
    backend: str, tmp_path: Path
) -> None:
    """A WSGI-style receiver's handler still at work after the renewer's turn: the
    claim's lease moved on while it ran; closing the journal stops the thread."""
    before = renewer_threads()
    url = url_for(backend, tmp_path)
    journal = open_journal(url, SHORT).sync
    seen: list[float] = []

    def slow(notification: Notification) -> None:
        claim = journal.claims(["order_paid:9200"])["order_paid:9200"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the renewer moved the lease on
            now = journal.claims(["order_paid:9200"])["order_paid:9200"]
            if now.lease_until > claim.lease_until:
                seen.append(now.lease_until - claim.lease_until)
                return
            time.sleep(0.02)

    with SyncWebhookReceiver(SECRET, slow, store=journal) as receiver:
        body = order_paid(9200)
        assert receiver.handle(signed(body), body, "185.30.20.1").status == 204
        assert journal.renewer.renewals >= 1 and journal.renewer.running
    journal.close()
    assert seen and seen[0] > 0
    assert not journal.renewer.running and renewer_threads() == before
