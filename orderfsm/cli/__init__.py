"""The ``orderfsm`` command line.

Each subcommand lives in its own module, which defines ``HELP``,
``configure(parser)`` and ``run(args) -> int`` (the exit code).  A command
module imports its heavy dependencies inside ``run`` so that building the
parser, and ``orderfsm graph``, do not pay for the network stack.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand name -> module under orderfsm.cli
COMMANDS: dict[str, str] = {
    "graph": "graph_cmd",
    "emulator": "emulator_cmd",
    "webhook-server": "webhook_cmd",
    "webhooks": "webhooks_cmd",
    "watch": "watch_cmd",
    "demo": "demo_cmd",
}

EXIT_ERROR = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Command-line input the parser could not judge alone; exits with 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orderfsm", description="Track Xsolla store orders to their final status."
    )
    parser.add_argument("--verbose", action="store_true", help="show tracebacks on errors")
    # --verbose is accepted after the subcommand too, where people type it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"orderfsm.cli.{module_name}")
        command = sub.add_parser(name, help=module.HELP, description=module.HELP, parents=[common])
        module.configure(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args._run(args)
    except KeyboardInterrupt:
        return 130
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"orderfsm: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        if args.verbose:
            raise
        print(f"orderfsm: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
