"""The game's grant: ORM writes, in the transaction of the journal's claim."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, connections

from djangogame.models import Grant, Owned
from transports.webhook import Notification, OrderPaid


def grant(notification: Notification) -> None:
    if not isinstance(notification, OrderPaid):
        return
    alias = settings.ORDERFSM_WEBHOOK["DATABASE"]
    with connections[alias].cursor() as cursor:
        # The claim is not committed yet: only its own transaction sees it running.
        cursor.execute(
            "SELECT attempt, state FROM orderfsm_claims WHERE key = %s",
            [f"order_paid:{notification.order_id}"],
        )
        row = cursor.fetchone()
    if row is None or row[1] != "running":
        raise RuntimeError(f"not inside the claim's transaction: {row}")
    for item in notification.items:
        Grant.objects.using(alias).create(
            order_id=notification.order_id, sku=item.sku, attempt=row[0]
        )
    die_at = os.environ.get("GAME_DIE_AT_ORDER")
    if die_at and int(die_at) == notification.order_id:
        marker = Path(os.environ["GAME_DIE_MARKER"])
        if not marker.exists():  # once: the worker dies with the grant written, uncommitted
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)


def grant_owning(notification: Notification) -> None:
    """The grant, then the skin that comes with it, idempotent the usual way: a player who
    owns it already is fine.  The ``IntegrityError`` is caught with no savepoint of its
    own, so Django marks the whole block for rollback, the grant with it."""
    grant(notification)
    if isinstance(notification, OrderPaid):
        player = notification.user.external_id if notification.user else None
        with contextlib.suppress(IntegrityError):
            Owned.objects.create(user=str(player), sku="skin")
