"""``orderfsm watch``: follow one order on Xsolla (or any compatible URL)."""

from __future__ import annotations

import argparse
import os

HELP = "track one order until its final status (exit 0 done, 3 canceled, 4 expired, 5 timeout)"


def configure(parser: argparse.ArgumentParser) -> None:
    from orderfsm.supervisor.tracker import DEFAULT_API_URL, DEFAULT_WS_URL

    parser.add_argument("--project-id", type=int, required=True)
    parser.add_argument("--order-id", type=int, required=True)
    token = parser.add_mutually_exclusive_group(required=True)
    token.add_argument("--token", help="the user's Xsolla Login JWT")
    token.add_argument("--token-env", metavar="VAR", help="read the JWT from this variable")
    parser.add_argument("--user-id", help="the user's external id (sent on connect)")
    parser.add_argument("--ws-url", default=DEFAULT_WS_URL)
    parser.add_argument("--api-url", default=DEFAULT_API_URL)
    parser.add_argument(
        "--transports",
        default="websocket,polling",
        help="comma-separated, from websocket,polling (default both)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, metavar="SECONDS", help="0 waits forever"
    )
    parser.add_argument("--poll-interval", type=float, default=3.0, metavar="SECONDS")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--backend", choices=("asyncio", "trio"), default="asyncio", help="event loop to run on"
    )


def run(args: argparse.Namespace) -> int:
    import anyio

    from orderfsm.cli import UsageError
    from orderfsm.cli.follow import follow
    from orderfsm.cli.timeline import Timeline
    from orderfsm.supervisor.policy import DefaultPolicy
    from orderfsm.supervisor.tracker import Tracker

    token = args.token
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise UsageError(f"environment variable {args.token_env} is empty or unset")
    transports = tuple(t.strip() for t in args.transports.split(",") if t.strip())
    if not transports or set(transports) - {"websocket", "polling"}:
        raise UsageError("--transports takes websocket, polling or both")
    if args.poll_interval <= 0 or args.timeout < 0:
        raise UsageError("--poll-interval must be > 0 and --timeout >= 0")
    policy = DefaultPolicy(poll_interval=args.poll_interval, deadline=args.timeout or None)

    async def main() -> int:
        timeline = Timeline(as_json=args.json)
        async with Tracker(
            project_id=args.project_id,
            token=token,
            user_id=args.user_id,
            ws_url=args.ws_url,
            api_url=args.api_url,
            transports=transports,
            policy=policy,
            on_report=None if args.json else timeline.report,
        ) as tracker:
            return await follow(tracker, args.order_id, timeline)

    code: int = anyio.run(main, backend=args.backend)
    return code
