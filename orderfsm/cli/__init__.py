"""The ``orderfsm`` command line.

Each subcommand lives in its own module, which defines ``HELP``,
``configure(parser)`` and ``run(args) -> int`` (the exit code).  A command
module imports its heavy dependencies inside ``run`` so that building the
parser, and ``orderfsm graph``, do not pay for the network stack.

Every error that ends a command is one line on stderr (the traceback with
``--verbose``): usage errors in argparse's style naming the argument (exit
2), everything else as ``orderfsm COMMAND: error: ...`` (exit 1, or the
command's own code).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from orderfsm.cli.failures import (
    EXIT_INTERRUPTED,
    CommandError,
    describe,
    interrupted,
    leaves,
)
from orderfsm.cli.logs import LEVELS
from orderfsm.cli.options import UsageError

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
EXIT_CODES = (
    "exit codes: 0 success, 1 error, 2 usage error or a start-up problem (nothing started), "
    "130 interrupted (Ctrl-C or SIGTERM; for the servers, webhook-server and emulator, either "
    "is their clean stop: 0)"
)

__all__ = ["EXIT_ERROR", "EXIT_USAGE", "CommandError", "UsageError", "build_parser", "main"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (when it has a meaningful one) and keeps epilogs as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        # By identity: ``in`` compares with ==, and 0 == False hid every default of 0.
        unset = default is None or default is False or default is argparse.SUPPRESS
        if (
            "%(default)" not in text
            and action.option_strings
            and action.nargs != 0  # a flag: its default is that it is not given
            and not unset
            and not isinstance(action, argparse._VersionAction)
        ):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    from orderfsm import __version__

    parser = argparse.ArgumentParser(
        prog="orderfsm",
        description="Track Xsolla store orders to their final status.",
        epilog=EXIT_CODES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"orderfsm {__version__}")
    _add_common(parser, after_command=False)
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, after_command=True)  # where people type them too
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"orderfsm.cli.{module_name}")
        command = sub.add_parser(
            name,
            help=module.HELP,
            description=module.HELP,
            parents=[common],
            formatter_class=HelpFormatter,
            epilog=getattr(module, "EXIT_CODES", EXIT_CODES),
        )
        module.configure(command)
        command.set_defaults(_run=module.run, _parser=command)
    return parser


def _add_common(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    unset = argparse.SUPPRESS  # after the command: keep what was given before it
    parser.add_argument(
        "--verbose",
        action="store_true",
        default=unset if after_command else False,
        help="show the traceback of an error",
    )
    parser.add_argument(
        "--log-level",
        choices=LEVELS,
        default=unset if after_command else "warning",
        help="log our events on stderr from this level",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from orderfsm.cli.logs import configure

    configure(args.log_level, args.verbose)
    command: argparse.ArgumentParser = args._parser
    try:
        code: int = args._run(args)
    except BaseException as exc:
        return _ended(command, args, exc)
    return code


def _ended(command: argparse.ArgumentParser, args: Any, exc: BaseException) -> int:
    usage = [leaf for leaf in leaves(exc) if isinstance(leaf, UsageError)]
    if usage:
        command.error(str(usage[0]))  # argparse's style: usage, then the error; exits 2
    if interrupted(exc):
        return EXIT_INTERRUPTED
    if isinstance(exc, SystemExit):
        raise exc
    if args.verbose:
        raise exc
    for line in describe(exc):
        print(f"{command.prog}: error: {line}", file=sys.stderr)
    return exc.code if isinstance(exc, CommandError) else EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
