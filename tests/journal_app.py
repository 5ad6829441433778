"""An application for ``orderfsm webhook-server --handler / --transactional`` in the fault tests.

The server imports it (``PYTHONPATH=tests``).  ``JOURNAL_APP_PAUSE`` names
where the handler stops for an order, so the test can SIGKILL the process at
that exact point: ``enter:ORDER`` (claimed, nothing done yet), ``effect:ORDER``
(the plain handler's effect written, not returned), ``return:ORDER`` (the
plain handler returns once the test lets it, and the test holds the
database so the answer cannot be recorded), ``granted:ORDER`` (the
transactional handler's grant written, the transaction not committed).  On
each stop it prints ``PAUSED <point> <order>``.  ``JOURNAL_APP_LOG`` is a
file the plain handler appends each completed effect to; ``JOURNAL_APP_GATE``
a folder where the test drops ``go-ORDER`` to let ``return`` go on.  ``unhurried``
is the default handler, slowed.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import anyio

from orderfsm.cli.webhook_cmd import print_notification
from transports.webhook import Notification, OrderPaid


def _pauses() -> dict[int, str]:
    found: dict[int, str] = {}
    for item in filter(None, os.environ.get("JOURNAL_APP_PAUSE", "").split(",")):
        point, order = item.split(":")
        found[int(order)] = point
    return found


PAUSES = _pauses()


def _announce(point: str, order_id: int) -> None:
    print(f"PAUSED {point} {order_id}", flush=True)


async def plain(notification: Notification) -> None:
    assert isinstance(notification, OrderPaid)
    order_id = notification.order_id
    point = PAUSES.get(order_id)
    if point == "enter":
        _announce(point, order_id)
        await anyio.sleep_forever()
    async with await anyio.open_file(os.environ["JOURNAL_APP_LOG"], "a") as log:
        await log.write(f"{order_id}\n")
    if point == "effect":
        _announce(point, order_id)
        await anyio.sleep_forever()
    if point == "return":
        _announce(point, order_id)
        gate = Path(os.environ["JOURNAL_APP_GATE"]) / f"go-{order_id}"
        while True:  # the test drops the file when it holds the database
            if gate.exists():
                break
            await anyio.sleep(0.01)
        print(f"RETURNING {order_id}", flush=True)


async def unhurried(notification: Notification) -> None:
    """The default handler (one JSON line per notification), a quarter second late: long
    enough for a test to catch a process while it holds running claims."""
    await anyio.sleep(0.25)
    await print_notification(notification)


def grant(notification: Notification, connection: Any) -> None:
    assert isinstance(notification, OrderPaid)
    order_id = notification.order_id
    point = PAUSES.get(order_id)
    if point == "enter":
        _announce(point, order_id)
        threading.Event().wait()
    mark = "?" if type(connection).__module__.startswith("sqlite3") else "%s"
    connection.execute(
        f"INSERT INTO grants (order_id, sku) VALUES ({mark}, {mark})",
        (order_id, notification.items[0].sku if notification.items else None),
    )
    if point == "granted":
        _announce(point, order_id)
        while True:
            time.sleep(3600)


async def failing(notification: Notification) -> None:
    """A handler whose grant service is still down."""
    raise RuntimeError("the grant service is still down")
