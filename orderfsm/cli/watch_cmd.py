"""``orderfsm watch``: follow orders on Xsolla (or any compatible URL) until they settle."""

from __future__ import annotations

import argparse

from orderfsm.cli import options

HELP = "track orders until they settle: a live view on a terminal, lines or JSON otherwise"
EXIT_CODES = """\
exit codes:
  0    every order succeeded (done, or paid with --until paid)
  3    canceled (refunded)
  4    expired (past --expired-grace or --timeout)
  5    timed out (--timeout)
  1    error (refused token, unknown order, wrong URL, ...): one line on stderr
  2    usage error, or a start-up problem (a port in use): nothing started
  130  interrupted (Ctrl-C, or SIGTERM): the tracker closed first, as on its own end
With several --order-id: 0 when every order succeeded, else the code of the
first order (in the order given) that did not."""


def configure(parser: argparse.ArgumentParser) -> None:
    from orderfsm.supervisor.tracker import DEFAULT_API_URL, DEFAULT_WS_URL

    parser.add_argument(
        "--project-id",
        type=options.positive_int,
        required=True,
        metavar="ID",
        help="the Xsolla project id",
    )
    parser.add_argument(
        "--order-id",
        type=options.positive_int,
        action="append",
        required=True,
        metavar="ID",
        help="the order to follow; give it again to follow several orders of the same user",
    )
    token = parser.add_mutually_exclusive_group()
    token.add_argument(
        "--token-env", metavar="VAR", help="read the user's Xsolla Login JWT from this variable"
    )
    token.add_argument("--token-file", metavar="PATH", help="read the JWT from this file")
    token.add_argument(
        "--token",
        metavar="JWT",
        help="the JWT itself (visible to every local user in ps: prefer --token-env)",
    )
    parser.add_argument(
        "--user-id", metavar="EXT", help="the user's external id, sent when connecting"
    )
    parser.add_argument(
        "--ws-url",
        type=options.url("ws", "wss"),
        default=DEFAULT_WS_URL,
        metavar="URL",
        help="Xsolla's order-status WebSocket",
    )
    parser.add_argument(
        "--api-url",
        type=options.url("http", "https"),
        default=DEFAULT_API_URL,
        metavar="URL",
        help="Xsolla's Store API, ending in /api (Get order)",
    )
    parser.add_argument(
        "--transports",
        type=options.transports,
        default="websocket,polling",  # argparse converts a string default with the type
        metavar="LIST",
        help=f"comma-separated, from {','.join(options.TRANSPORTS)}",
    )
    parser.add_argument(
        "--journal",
        metavar="URL",
        help="a fleet's journal (SQLite path or URL, postgresql://...): what other instances "
        "and webhook receivers learn reaches this watch too",
    )
    parser.add_argument(
        "--journal-poll",
        type=options.positive_seconds,
        metavar="S",
        help="read the journal every S seconds instead of LISTENing "
        "(PostgreSQL through PgBouncer in transaction pooling mode)",
    )
    parser.add_argument(
        "--until",
        choices=("done", "paid"),
        default="done",
        help="what counts as success: done (delivered) or paid (may be granted)",
    )
    parser.add_argument(
        "--timeout",
        type=options.seconds,
        default=600.0,
        metavar="SECONDS",
        help="give up after this long (0: never)",
    )
    parser.add_argument(
        "--expired-grace",
        type=options.seconds,
        default=600.0,
        metavar="SECONDS",
        help="how long an expired order may still be paid before exit 4 (bounded by --timeout)",
    )
    parser.add_argument(
        "--not-found-grace",
        type=options.seconds,
        default=60.0,
        metavar="SECONDS",
        help="how long Get order's 404 means 'not visible yet' before the order is unknown",
    )
    parser.add_argument(
        "--poll-interval",
        type=options.positive_seconds,
        default=3.0,
        metavar="SECONDS",
        help="time between Get order requests while polling",
    )
    parser.add_argument(
        "--metrics-port",
        type=options.port,
        metavar="PORT",
        help="serve Prometheus metrics at http://127.0.0.1:PORT/metrics "
        "(needs orderfsm[prometheus])",
    )
    webhook = parser.add_argument_group("webhooks (with --transports ...,webhook)")
    webhook.add_argument("--webhook-host", default="127.0.0.1", help="address to listen on")
    webhook.add_argument(
        "--webhook-port", type=options.port, default=0, help="port to listen on (0 picks one)"
    )
    secret = webhook.add_mutually_exclusive_group()
    secret.add_argument(
        "--webhook-secret-env", metavar="VAR", help="read the webhook secret from this variable"
    )
    secret.add_argument(
        "--webhook-secret-file", metavar="PATH", help="read the webhook secret from this file"
    )
    options.add_output(parser, live=True)


def _token(args: argparse.Namespace) -> str | None:
    token: str | None = args.token or options.secret_from(
        "--token-env", args.token_env, "--token-file", args.token_file
    )
    if token is None and {"websocket", "polling"} & set(args.transports):
        raise options.UsageError(
            "--token-env", "a token is needed for websocket and polling (or --token-file)"
        )
    return token


def run(args: argparse.Namespace) -> int:
    import anyio

    from orderfsm.cli.interrupts import unless_interrupted
    from orderfsm.cli.watching import Watch

    options.check_backend(args.backend)
    token = _token(args)
    secret = None
    if "webhook" in args.transports:
        secret = options.secret_from(
            "--webhook-secret-env",
            args.webhook_secret_env,
            "--webhook-secret-file",
            args.webhook_secret_file,
        )
        if secret is None:
            raise options.UsageError(
                "--transports",
                "webhook needs --webhook-secret-env or --webhook-secret-file",
            )
    if "journal" in args.transports and not args.journal:
        raise options.UsageError("--transports", "journal needs --journal URL")
    if args.metrics_port is not None:
        options.check_extra("--metrics-port", "prometheus_client", "prometheus")
    watch = Watch(args, token, secret)
    code: int = anyio.run(unless_interrupted, watch.run, backend=args.backend)
    return code
