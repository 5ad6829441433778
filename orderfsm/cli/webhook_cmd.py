"""``orderfsm webhook-server``: receive Xsolla webhooks and print what was accepted.

It prints the URL to configure first, then one JSON line per notification
it accepted (a repeated delivery is answered from the store and not
printed again).  Useful to try the receiver against Xsolla's webhook tester
through a tunnel, or as the starting point of a real endpoint.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transports.webhook import Notification

HELP = "serve the Xsolla webhook receiver and print each accepted notification as JSON"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--secret", required=True, help="the project's webhook secret key")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8000, help="port to bind (default 8000; 0 picks a free one)"
    )
    parser.add_argument("--path", default="/webhook", help="URL path (default /webhook)")
    parser.add_argument(
        "--store",
        metavar="PATH",
        help="SQLite file remembering answered notifications across restarts (default: memory)",
    )
    parser.add_argument(
        "--max-body", type=int, default=None, help="largest accepted body, bytes (413 past it)"
    )
    parser.add_argument(
        "--xsolla-only",
        action="store_true",
        help="accept deliveries only from Xsolla's published networks",
    )


def summary(notification: Notification) -> dict[str, Any]:
    """The JSON line printed for an accepted notification."""
    from transports.webhook import OrderCanceled, OrderPaid, Payment, Refund

    line: dict[str, Any] = {"notification_type": notification.notification_type}
    if isinstance(notification, (OrderPaid, OrderCanceled)):
        line["order_id"] = notification.order_id
    if isinstance(notification, (Payment, Refund)):
        line["transaction_id"] = notification.transaction.id
    line["body"] = notification.raw
    return line


async def serve(args: argparse.Namespace) -> None:
    import anyio

    from transports.webhook import (
        DEFAULT_MAX_BODY,
        XSOLLA_NETWORKS,
        MemoryStore,
        SeenStore,
        SqliteStore,
        WebhookReceiver,
        serve_receiver,
    )

    async def handler(notification: Notification) -> None:
        print(json.dumps(summary(notification), sort_keys=True), flush=True)

    store: SeenStore = SqliteStore(args.store) if args.store else MemoryStore()
    receiver = WebhookReceiver(
        args.secret,
        handler,
        store=store,
        max_body_size=args.max_body or DEFAULT_MAX_BODY,
        allowed_networks=XSOLLA_NETWORKS if args.xsolla_only else None,
    )
    async with serve_receiver(
        receiver, host=args.host, port=args.port, path=args.path, server="aiohttp"
    ) as url:
        print(url, flush=True)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break


def run(args: argparse.Namespace) -> int:
    import anyio

    if not args.secret:
        print("orderfsm webhook-server: --secret must not be empty", file=sys.stderr)
        return 2
    anyio.run(serve, args, backend="asyncio")
    return 0
