"""``orderfsm emulator``: serve the Xsolla emulator until stopped.

Prints the base URL on the first line (flushed), so a test or benchmark in
any language can start it as a subprocess with ``--port 0``, read one line,
and drive it over its HTTP control surface (``transports/emulator/API.md``).
It stops on SIGINT, SIGTERM or ``POST /control/shutdown``.

``--gc`` exists for latency measurements: a cyclic-GC pass over a large heap
stops the emulator's loop for milliseconds, delaying every publication queued
behind it and blaming the client under test for the wait.  ``frozen`` moves
everything alive after start-up out of the collector's sight and makes passes
rare; ``off`` disables the collector (memory grows: for short runs only).
"""

from __future__ import annotations

import argparse

from orderfsm.cli import options

HELP = "serve the Xsolla emulator (WebSocket, Get order, webhooks) on loopback"

GC_MODES = ("default", "frozen", "off")
CHANNEL_MODES = ("recovery", "history", "none")
"""``transports.emulator.state.CHANNEL_MODES``, not imported: the CLI's parser is built
without loading the emulator (and aiohttp)."""
FROZEN_THRESHOLDS = (700, 10, 10_000)
"""Young passes as usual (small, so short), full passes 1,000 times rarer: a full pass
over a busy emulator's heap stops it for tens of milliseconds.  (A young threshold of
100,000 was tried: each young pass then took as long, and showed as 50 ms outliers.)"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=options.port, default=0, help="port to listen on (0 picks a free one)"
    )
    parser.add_argument(
        "--secret",
        default="PROJECT_SECRET_KEY",
        help="the webhook signing secret the emulator plays with (a test value, not yours)",
    )
    parser.add_argument(
        "--project-id", type=options.positive_int, default=12345, help="the emulated project id"
    )
    parser.add_argument(
        "--ping",
        type=options.seconds,
        default=25.0,
        metavar="SECONDS",
        help="server ping interval (0: no pings)",
    )
    parser.add_argument(
        "--pong-timeout",
        type=options.positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long a client may take to answer a ping",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for every random choice")
    parser.add_argument(
        "--webhook-url",
        type=options.url("http", "https"),
        default=None,
        metavar="URL",
        help="where to send webhooks (default: none: no webhook is sent)",
    )
    parser.add_argument(
        "--channel-mode",
        choices=CHANNEL_MODES,
        default="recovery",
        help="what the users' channels offer, as Centrifugo may be set up: recovery "
        "(history, positions, recovery on reconnect), history (history only) or none",
    )
    parser.add_argument(
        "--gc",
        choices=GC_MODES,
        default="default",
        help="garbage collector once serving: default; frozen (start-up heap frozen, "
        "rare passes: steadier latency); off (for short benchmark runs)",
    )


def tune_gc(mode: str) -> None:
    """Apply ``--gc`` (called once the server is listening, so start-up garbage is gone)."""
    import gc

    if mode == "default":
        return
    gc.collect()
    if mode == "off":
        gc.disable()
        return
    gc.freeze()
    gc.set_threshold(*FROZEN_THRESHOLDS)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    import anyio

    from orderfsm.cli.failures import listening
    from transports.emulator.server import serve
    from transports.emulator.services import Config

    config = Config(
        host=args.host,
        port=args.port,
        project_id=args.project_id,
        secret=args.secret,
        ping_interval=args.ping,
        pong_timeout=args.pong_timeout,
        seed=args.seed,
        channel_mode=args.channel_mode,
        webhook_url=args.webhook_url,
    )

    async def main() -> None:
        stop = anyio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        def ready(base_url: str) -> None:
            tune_gc(args.gc)
            print(base_url, flush=True)

        await serve(config, ready=ready, stop=stop)

    with listening("the emulator", args.host, args.port):
        anyio.run(main, backend="asyncio")
    return 0
