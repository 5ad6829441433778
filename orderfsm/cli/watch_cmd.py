"""``orderfsm watch``: follow one order on Xsolla (or any compatible URL)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = (
    "track one order until it settles "
    "(exit 0 success, 3 canceled, 4 expired, 5 timeout, 1 error, 2 usage)"
)
TRANSPORTS = ("websocket", "polling", "webhook", "journal")


def configure(parser: argparse.ArgumentParser) -> None:
    from orderfsm.supervisor.tracker import DEFAULT_API_URL, DEFAULT_WS_URL

    parser.add_argument("--project-id", type=int, required=True)
    parser.add_argument("--order-id", type=int, required=True)
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token", help="the user's Xsolla Login JWT")
    token.add_argument("--token-env", metavar="VAR", help="read the JWT from this variable")
    parser.add_argument("--user-id", help="the user's external id (sent on connect)")
    parser.add_argument("--ws-url", default=DEFAULT_WS_URL)
    parser.add_argument("--api-url", default=DEFAULT_API_URL)
    parser.add_argument(
        "--transports",
        default="websocket,polling",
        help="comma-separated, from websocket,polling,webhook,journal (default websocket,polling)",
    )
    parser.add_argument(
        "--journal",
        metavar="URL",
        help="a fleet's journal (SQLite path or URL, postgresql://...): what other instances "
        "and webhook receivers learn reaches this watch too",
    )
    parser.add_argument(
        "--until",
        choices=("done", "paid"),
        default="done",
        help="what counts as success: done (delivered; default) or paid (may be granted)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, metavar="SECONDS", help="0 waits forever"
    )
    parser.add_argument(
        "--expired-grace",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long an expired order may still be paid before exit 4 (bounded by --timeout)",
    )
    parser.add_argument(
        "--not-found-grace",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long Get order's 404 means 'not visible yet' before the order is unknown",
    )
    parser.add_argument("--poll-interval", type=float, default=3.0, metavar="SECONDS")
    webhook = parser.add_argument_group("webhooks (with --transports ...,webhook)")
    webhook.add_argument("--webhook-host", default="127.0.0.1", help="address to listen on")
    webhook.add_argument("--webhook-port", type=int, default=0, help="port (0 picks one)")
    secret = webhook.add_mutually_exclusive_group()
    secret.add_argument("--webhook-secret-env", metavar="VAR", help="read the secret from VAR")
    secret.add_argument("--webhook-secret-file", metavar="PATH", help="read the secret from PATH")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--backend", choices=("asyncio", "trio"), default="asyncio", help="event loop to run on"
    )


def _token(args: argparse.Namespace, transports: tuple[str, ...]) -> str | None:
    from orderfsm.cli import UsageError

    token: str | None = args.token
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise UsageError(f"environment variable {args.token_env} is empty or unset")
    if token is None and {"websocket", "polling"} & set(transports):
        raise UsageError("--token or --token-env is needed for websocket and polling")
    return token


def _webhook_secret(args: argparse.Namespace) -> str:
    from orderfsm.cli import UsageError

    if args.webhook_secret_env:
        secret = os.environ.get(args.webhook_secret_env, "")
        where = f"environment variable {args.webhook_secret_env}"
    elif args.webhook_secret_file:
        try:
            secret = Path(args.webhook_secret_file).read_text().strip()
        except OSError as exc:
            raise UsageError(f"--webhook-secret-file: {exc}") from None
        where = f"file {args.webhook_secret_file}"
    else:
        raise UsageError("webhook transport needs --webhook-secret-env or --webhook-secret-file")
    if not secret:
        raise UsageError(f"the webhook secret in {where} is empty")
    return secret


def run(args: argparse.Namespace) -> int:
    import contextlib

    import anyio

    from orderfsm.cli import UsageError
    from orderfsm.cli.follow import follow
    from orderfsm.cli.timeline import Timeline
    from orderfsm.supervisor.policy import DefaultPolicy
    from orderfsm.supervisor.tracker import Tracker

    transports = tuple(t.strip() for t in args.transports.split(",") if t.strip())
    if not transports or set(transports) - set(TRANSPORTS):
        raise UsageError(
            f"--transports takes some of {','.join(TRANSPORTS)}, got {args.transports!r}"
        )
    token = _token(args, transports)
    secret = _webhook_secret(args) if "webhook" in transports else None
    if "journal" in transports and not args.journal:
        raise UsageError("--transports journal needs --journal URL")
    if args.poll_interval <= 0 or args.timeout < 0 or args.expired_grace < 0:
        raise UsageError("--poll-interval must be > 0, --timeout and --expired-grace >= 0")
    policy = DefaultPolicy(
        poll_interval=args.poll_interval,
        deadline=args.timeout or None,
        expired_grace=args.expired_grace,
    )

    async def main() -> int:
        timeline = Timeline(as_json=args.json)
        async with contextlib.AsyncExitStack() as stack:
            tracker = await stack.enter_async_context(
                Tracker(
                    project_id=args.project_id,
                    token=token,
                    user_id=args.user_id,
                    ws_url=args.ws_url,
                    api_url=args.api_url,
                    transports=transports,
                    policy=policy,
                    until=args.until,
                    not_found_grace=args.not_found_grace,
                    journal=args.journal,
                    fetch_details=token is not None,
                    on_report=None if args.json else timeline.report,
                )
            )
            if secret is not None:
                from transports.webhook import WebhookReceiver, serve_receiver

                receiver = WebhookReceiver(secret, sink=tracker)
                url = await stack.enter_async_context(
                    serve_receiver(receiver, host=args.webhook_host, port=args.webhook_port)
                )
                timeline.note(args.order_id, f"webhooks: {url}")
            return await follow(tracker, args.order_id, timeline)
        raise AssertionError("unreachable")  # pragma: no cover

    code: int = anyio.run(main, backend=args.backend)
    return code
