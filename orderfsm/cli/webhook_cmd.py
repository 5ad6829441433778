"""``orderfsm webhook-server``: receive Xsolla webhooks, each handled once across instances.

It prints the URL to configure first, then (with the default handler) one
JSON line per notification it accepted.  Several processes on one host share
an SQLite file (``--store journal.sqlite3``), a fleet shares a PostgreSQL
database (``--store postgresql://...``): each notification reaches a handler
once.  ``--handler`` / ``--transactional`` plug in the application's own
code, which makes this a real endpoint.  Start-up problems (a bad store URL,
an unreachable database, a handler that cannot be imported, a port in use)
print one line on stderr and exit with 2.

Beside ``POST --path`` it answers ``GET /healthz`` (alive), ``GET /readyz``
(the journal answers) and, with ``orderfsm[prometheus]``, ``GET /metrics``.
The secret comes from ``--secret-env VAR`` or ``--secret-file PATH``, so it
is not in ``ps``; the database password from ``PGPASSWORD`` or ``~/.pgpass``
(libpq reads them), not from the URL.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from orderfsm.cli import options
from orderfsm.cli.failures import CommandError

if TYPE_CHECKING:
    from orderfsm.journal import JournalSettings
    from transports.webhook import Notification, WebhookReceiver

HELP = "serve the Xsolla webhook receiver; each notification is handled once across instances"

EXIT_STARTUP = 2


class StartupFailed(CommandError):
    """Raised before serving; the message is the one line printed (exit 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=EXIT_STARTUP)


def add_secret_options(parser: argparse.ArgumentParser) -> None:
    secret = parser.add_mutually_exclusive_group(required=True)
    secret.add_argument(
        "--secret-env", metavar="VAR", help="read the project's webhook secret from this variable"
    )
    secret.add_argument("--secret-file", metavar="PATH", help="read the secret from this file")
    secret.add_argument(
        "--secret",
        metavar="S",
        help="the secret itself (visible to every local user in ps: prefer --secret-env)",
    )


def secret_of(args: argparse.Namespace) -> str:
    # Stripped as the variable's and the file's are: a space pasted in is never meant.
    secret: str | None = (args.secret or "").strip() or options.secret_from(
        "--secret-env", args.secret_env, "--secret-file", args.secret_file
    )
    if not secret:
        raise options.UsageError("--secret", "the webhook secret must not be empty")
    return secret


STORE_HELP = "the journal: a file path or sqlite:///path (one host), postgresql://... (a fleet)"


def add_store_argument(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    memory = "" if required else "; default: memory (one process, forgotten on exit)"
    parser.add_argument("--store", metavar="URL", required=required, help=STORE_HELP + memory)


def add_wait_option(parser: argparse.ArgumentParser, help: str) -> None:
    """``--wait`` (the journal's ``wait``), its help saying what it bounds for the verb."""
    parser.add_argument("--wait", type=options.seconds, default=2.0, metavar="SECONDS", help=help)


def add_store_options(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    add_store_argument(parser, required=required)
    parser.add_argument(
        "--lease",
        type=options.positive_seconds,
        default=60.0,
        metavar="SECONDS",
        help="how long a claim's owner may work before another instance takes over "
        "(and how long webhook-server, stopped, waits for the deliveries in flight)",
    )
    add_wait_option(parser, "how long a duplicate waits for the first delivery's answer before 5xx")
    parser.add_argument(
        "--retention-days",
        type=options.positive_seconds,
        default=14.0,
        metavar="DAYS",
        help="how long claims, deliveries and order changes are kept",
    )


def add_handler_options(parser: argparse.ArgumentParser) -> None:
    handler = parser.add_mutually_exclusive_group()
    handler.add_argument(
        "--handler",
        metavar="MODULE:NAME",
        help="your async handler(notification); webhook-server's default prints each one as "
        "a JSON line (replay needs one of these two)",
    )
    handler.add_argument(
        "--transactional",
        metavar="MODULE:NAME",
        help="your handler(notification, connection), run in the journal's transaction "
        "(SQLite or PostgreSQL store)",
    )


def add_record_orders_option(parser: argparse.ArgumentParser) -> None:
    """``--no-record-orders``, of every command that handles notifications (the server,
    a replay): a role without privileges on the orders' tables needs it in both."""
    parser.add_argument(
        "--no-record-orders",
        dest="record_orders",
        action="store_false",
        help="do not write the status of an order the fleet tracks in the journal with its "
        "delivery's claim (no privilege on the orders' tables needed; an order nobody "
        "tracks costs nothing either way, its first track reads its deliveries): "
        "journal-backed trackers already following an order then learn no status from the "
        "notifications handled here",
    )


def configure(parser: argparse.ArgumentParser) -> None:
    add_secret_options(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=options.port, default=8000, help="port to listen on (0 picks a free one)"
    )
    parser.add_argument("--path", default="/webhook", help="the webhook's URL path")
    add_store_options(parser)
    add_handler_options(parser)
    parser.add_argument(
        "--max-body",
        type=options.positive_int,
        default=None,
        metavar="BYTES",
        help="largest accepted body (413 past it; default 256 KiB)",
    )
    parser.add_argument(
        "--xsolla-only",
        action="store_true",
        help="handle deliveries only from Xsolla's published networks (others: 503, retried)",
    )
    add_record_orders_option(parser)
    parser.add_argument(
        "--backend", choices=options.BACKENDS, default="asyncio", help="event loop to run on"
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


async def print_notification(notification: Notification) -> None:
    print(json.dumps(summary(notification), sort_keys=True), flush=True)


def load(spec: str) -> Any:
    """``package.module:name`` -> the object; :class:`StartupFailed` with the reason."""
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise StartupFailed(f"{spec!r}: write MODULE:NAME, e.g. myapp.hooks:on_notification")
    if os.getcwd() not in sys.path:
        # As uvicorn and gunicorn do: `--handler hooks:on_paid` beside hooks.py works
        # (the orderfsm script's own directory is on the path, the current one not).
        sys.path.insert(0, os.getcwd())
    try:
        found: Any = importlib.import_module(module_name)
        for part in name.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise StartupFailed(f"cannot load {spec}: {exc}") from None
    if not callable(found):
        raise StartupFailed(f"{spec} is not callable")
    return found


def settings_from(args: argparse.Namespace) -> JournalSettings:
    from orderfsm.errors import JournalConfigError
    from orderfsm.journal import DAY, JournalSettings

    try:
        return JournalSettings(
            lease=args.lease, wait=args.wait, retention=args.retention_days * DAY
        )
    except JournalConfigError as exc:
        raise StartupFailed(str(exc)) from None


async def open_receiver(args: argparse.Namespace, **options: Any) -> WebhookReceiver:
    """The receiver the options describe, its journal open; :class:`StartupFailed` otherwise."""
    from orderfsm.errors import JournalError
    from transports.journal import open_journal
    from transports.webhook import WebhookReceiver

    handler = load(args.handler) if args.handler else None
    transactional = load(args.transactional) if args.transactional else None
    if handler is None and transactional is None:
        handler = print_notification
    try:
        journal = open_journal(args.store, settings_from(args))
    except JournalError as exc:
        raise StartupFailed(str(exc)) from None
    try:
        receiver = WebhookReceiver(
            secret_of(args),
            handler,
            transactional=transactional,
            store=journal,
            record_orders=args.record_orders,
            **options,
        )
    except (ValueError, TypeError) as exc:
        raise StartupFailed(f"{exc}") from None
    try:
        await journal.open()
    except JournalError as exc:
        raise StartupFailed(str(exc)) from None
    return receiver


def endpoints(receiver: WebhookReceiver) -> dict[str, Any]:
    """``/healthz`` and ``/readyz``, and ``/metrics`` when prometheus_client is there."""
    from transports.webhook import health_endpoints

    found: dict[str, Any] = health_endpoints(receiver)
    if importlib.util.find_spec("prometheus_client") is not None:
        from prometheus_client import CollectorRegistry

        from orderfsm.metrics.prometheus import metrics_endpoint, register_receiver

        registry = CollectorRegistry()
        register_receiver(receiver, registry)
        found["/metrics"] = metrics_endpoint(registry)
    return found


async def serve(args: argparse.Namespace) -> None:
    from orderfsm.cli.failures import listening
    from orderfsm.cli.interrupts import stop_asked
    from transports.webhook import DEFAULT_MAX_BODY, XSOLLA_NETWORKS, serve_receiver

    receiver = await open_receiver(
        args,
        max_body_size=args.max_body or DEFAULT_MAX_BODY,
        allowed_networks=XSOLLA_NETWORKS if args.xsolla_only else None,
    )
    try:
        serving = serve_receiver(
            receiver,
            host=args.host,
            port=args.port,
            path=args.path,
            endpoints=endpoints(receiver),
        )
        with listening("the webhook server", args.host, args.port):
            url = await serving.__aenter__()
        try:
            print(url, flush=True)
            await stop_asked()  # a second signal, while deliveries finish, stops at once
        finally:
            await serving.__aexit__(None, None, None)
    finally:
        await receiver.journal.aclose()


def run(args: argparse.Namespace) -> int:
    import anyio

    options.check_backend(args.backend)
    secret_of(args)  # a missing or empty secret is named before anything starts
    anyio.run(serve, args, backend=args.backend)
    return 0
