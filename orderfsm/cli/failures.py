"""Errors that end a command, said in one line in the user's terms.

Whatever ends a command (a refused token, a busy port, an unreadable file,
an exception group from a task group) becomes one line on stderr; the
traceback only with ``--verbose``.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

from orderfsm.errors import OrderFsmError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class CommandError(Exception):
    """The command cannot go on: each of ``lines`` is printed as one error line
    (several orders can each end in an error), ``code`` is the exit code."""

    def __init__(self, *lines: str, code: int = EXIT_ERROR) -> None:
        super().__init__(*lines)
        self.lines = tuple(one_line(line) for line in lines)
        self.code = code

    def __str__(self) -> str:
        return "; ".join(self.lines)


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or ``[exc]`` itself."""
    inner = getattr(exc, "exceptions", None)
    if not isinstance(inner, tuple):
        return [exc]
    return [leaf for sub in inner for leaf in leaves(sub)]


def interrupted(exc: BaseException) -> bool:
    return any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves(exc))


def one_line(text: str) -> str:
    return " ".join(text.split())


def describe(exc: BaseException) -> tuple[str, ...]:
    """The lines for an exception that ended a command: the first real error in it
    (one line, unless it is a :class:`CommandError` of several)."""
    found: list[BaseException] = [leaf for leaf in leaves(exc) if isinstance(leaf, Exception)]
    leaf = found[0] if found else exc
    if isinstance(leaf, CommandError):
        return leaf.lines
    if isinstance(leaf, OSError) and leaf.errno == errno.EADDRINUSE:
        return ("address already in use (another process listens on that port)",)
    if isinstance(leaf, OrderFsmError):
        return (one_line(f"{type(leaf).__name__}: {leaf}"),)
    if isinstance(leaf, OSError) and leaf.strerror:
        where = f" ({leaf.filename})" if leaf.filename else ""
        return (one_line(f"{leaf.strerror}{where}"),)
    return (one_line(str(leaf) or type(leaf).__name__),)


@contextmanager
def listening(what: str, host: str, port: int) -> Iterator[None]:
    """A server that cannot listen (a busy port, an address not on this host) is
    named with its address, not as the exception group its task group raised;
    like every start-up problem, it exits 2."""
    try:
        yield
    except Exception as exc:
        for leaf in leaves(exc):
            if isinstance(leaf, OSError):
                if leaf.errno == errno.EADDRINUSE:
                    reason = "address in use (another process listens there; 0 picks a free port)"
                else:
                    reason = leaf.strerror or str(leaf)
                message = f"{what} cannot listen on {host}:{port}: {reason}"
                raise CommandError(message, code=EXIT_USAGE) from exc
        raise
