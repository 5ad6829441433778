"""A game backend in Flask for the framework tests: grants written with the journal's own
connection in the claim's transaction, served by gunicorn's worker processes."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from flask import Flask

from orderfsm.contrib.flask import webhook_blueprint
from orderfsm.journal import JournalSettings
from transports.webhook import Notification, OrderPaid, SyncWebhookReceiver

STORE = os.environ["GAME_DB"]
MARK = "%s" if STORE.startswith("postgres") else "?"


def grant(notification: Notification, connection: Any) -> None:
    if not isinstance(notification, OrderPaid):
        return
    for item in notification.items:
        connection.execute(
            f"INSERT INTO grants (order_id, sku) VALUES ({MARK}, {MARK})",
            (notification.order_id, item.sku),
        )
    die_at = os.environ.get("GAME_DIE_AT_ORDER")
    if die_at and int(die_at) == notification.order_id:
        marker = Path(os.environ["GAME_DIE_MARKER"])
        if not marker.exists():  # once: the worker dies with the grant written, uncommitted
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)


receiver = SyncWebhookReceiver(
    os.environ.get("GAME_SECRET", "PROJECT_SECRET_KEY"),
    transactional=grant,
    store=STORE,
    settings=JournalSettings(lease=10.0, wait=2.0),
)
app = Flask(__name__)
app.register_blueprint(webhook_blueprint(receiver), url_prefix="/xsolla")
if os.environ.get("GAME_OPEN_EARLY"):  # start-up problems raise here (before a fork, preloaded)
    receiver.open()
