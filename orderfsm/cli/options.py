"""Option types and shared options: a bad value is named by argparse, in its one style.

Each type raises ``argparse.ArgumentTypeError`` with what is wrong; argparse
prints it as ``orderfsm watch: error: argument --timeout: ...`` with the
value, and exits 2, before anything starts.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
from collections.abc import Callable
from pathlib import Path

from orderfsm.supervisor.arguments import url_problem

TRANSPORTS = ("websocket", "polling", "webhook", "journal")
BACKENDS = ("asyncio", "trio")
TRIO_EXTRA = ("trio", "httpx", "httpx_ws", "hypercorn")
"""What ``--backend trio`` needs importable: the ``orderfsm[trio]`` extra."""


class UsageError(Exception):
    """Input the parser could not judge alone (a variable that is empty, a file that
    cannot be read); printed in argparse's style, naming the argument, exit 2."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(f"argument {argument}: {message}")


def _number(kind: str, ok: Callable[[float], bool]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {kind}, got {text!r}")
        return value

    parse.__name__ = kind
    return parse


positive_seconds = _number("a number of seconds > 0", lambda v: v > 0)
seconds = _number("a number of seconds >= 0", lambda v: v >= 0)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535 (0 picks a free one), got {text!r}")
    return value


def url(*schemes: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        problem = url_problem(text, *schemes)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return text.rstrip("/")

    parse.__name__ = "URL"
    return parse


def transports(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in names if t not in TRANSPORTS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: a comma-separated list of {', '.join(TRANSPORTS)}"
        )
    return names


def add_output(parser: argparse.ArgumentParser, *, live: bool = False) -> None:
    """``--json`` and ``--backend``, shared by the commands that follow orders."""
    what = "; the live view on a terminal otherwise" if live else ""
    parser.add_argument(
        "--json", action="store_true", help=f"one JSON object per line on stdout{what}"
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, default="asyncio", help="event loop to run on"
    )


def check_backend(backend: str) -> None:
    """``--backend trio`` without the extra is a usage error that says what to install."""
    if backend != "trio":
        return
    missing = [name for name in TRIO_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(
            "--backend",
            f"trio needs {', '.join(missing)}: pip install 'orderfsm[trio]'",
        )


def check_extra(argument: str, module: str, extra: str) -> None:
    """An option that needs an optional extra names the extra when it is missing."""
    if importlib.util.find_spec(module) is None:
        raise UsageError(argument, f"needs {module}: pip install 'orderfsm[{extra}]'")


def secret_from(env_option: str, env: str | None, file_option: str, path: str | None) -> str | None:
    """A secret from an environment variable or a file, never the command line (where
    every local user sees it in ``ps``); ``None`` when neither option was given.
    Empty or unreadable is a usage error naming the option."""
    if env:
        value = os.environ.get(env, "").strip()  # as a file's: a newline is never meant
        if not value:
            raise UsageError(env_option, f"environment variable {env} is empty or unset")
        return value
    if path:
        try:
            value = Path(path).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise UsageError(file_option, f"cannot read {path!r}: {reason}") from None
        if not value:
            raise UsageError(file_option, f"file {path!r} is empty")
        return value
    return None
