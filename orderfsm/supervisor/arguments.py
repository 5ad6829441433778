"""Checks of what an application hands the tracker, made where it is handed over.

An argument of the wrong kind that is accepted fails far from its cause: an
order id given as a string was followed and never matched (news comes under
the integer) until the deadline, ten minutes on; a poll interval of 0 worked
while the WebSocket was healthy and killed the tracker, every waiter with it,
on the first dropped socket; a lease of 0 spun two loops and crashed.  So each
is refused at once, by name, with a ``TypeError`` or ``ValueError``.
"""

from __future__ import annotations

import math
import numbers
import operator
import os
from collections.abc import Callable, Collection
from typing import Any, cast
from urllib.parse import urlsplit

from orderfsm.callables import require_plain, require_runs
from orderfsm.core.ids import MAX_ORDER_ID
from orderfsm.interface import BUILT_IN, JOURNAL


def seconds(what: str, value: object, *, zero: bool = False, none: bool = False) -> None:
    """Raise unless ``value`` is a finite number of seconds, above 0 (or 0 itself when
    ``zero``), or ``None`` when ``none``."""
    if value is None and none:
        return
    if not isinstance(value, numbers.Real) or isinstance(value, bool):  # not "3", not True
        raise TypeError(f"{what} must be a number of seconds, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (number == 0 and not zero):
        floor = "0 or more" if zero else "more than 0"
        raise ValueError(f"{what} must be a finite number of seconds, {floor}, got {value!r}")


def seconds_field(*, zero: bool = False, none: bool = False) -> Callable[[Any, Any, Any], None]:
    """:func:`seconds` as an ``attrs`` validator (the field's name in the message)."""

    def check(_: Any, attribute: Any, value: Any) -> None:
        seconds(attribute.name, value, zero=zero, none=none)

    return check


def order_id(value: object) -> int:
    """The order id, or a ``TypeError`` / ``ValueError`` saying why it is not one."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(cast(Any, value))  # an int, or what stands for one (numpy)
    except TypeError:
        hint = " (int(...) it first)" if isinstance(value, str) else ""
        raise TypeError(f"an order id is an int, got {value!r}{hint}") from None
    if not 0 < number <= MAX_ORDER_ID:
        raise ValueError(f"an order id is from 1 to {MAX_ORDER_ID}, got {value}")
    return number


def token(value: object, what: str = "token") -> None:
    """Raise unless ``value`` is ``None``, a non-empty string or a callable (a provider)."""
    if value is None or callable(value):
        return
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str or a callable that returns one, got {value!r}")
    if not value.strip():
        raise ValueError(f"{what} must not be empty")


def url_problem(value: str, *schemes: str) -> str | None:
    """What is wrong with ``value`` as a URL with one of ``schemes`` and a host, or
    ``None``; one wording for the API and the CLI (``--api-url``)."""
    parts = urlsplit(value)
    if parts.scheme in schemes and parts.netloc:
        return None
    starts = " or ".join(f"{scheme}://" for scheme in schemes)
    return f"must be a URL starting with {starts}, got {value!r}"


def url(what: str, value: object, *schemes: str) -> None:
    """Raise unless ``value`` is a URL with one of ``schemes`` and a host: a malformed one
    was retried (reported ``degraded``) until the deadline, ten minutes on."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str URL, got {value!r}")
    problem = url_problem(value, *schemes)
    if problem is not None:
        raise ValueError(f"{what} {problem}")


def journal_argument(value: object) -> None:
    """Raise unless ``value`` is ``None``, a non-empty URL or path, or a journal object."""
    if value is None or hasattr(value, "sync"):  # a Journal: its synchronous face
        return
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"journal must be a URL, a path or a Journal, got {value!r}")
    if not os.fspath(value):
        raise ValueError("journal must not be empty (a path, sqlite:///..., postgresql://...)")


def tracker_options(
    *,
    transports: Collection[str],
    ws_url: object,
    api_url: object,
    token_given: object,
    on_change: object,
    on_report: object,
    on_settled: object,
    on_settled_transactional: object,
    token_for: object,
    lease: object,
    journal: object,
    instance: object,
    journal_poll: object,
) -> None:
    """The :class:`~orderfsm.supervisor.tracker.Tracker`'s own arguments, checked together.

    Callbacks of the wrong kind never ran, silently: an ``async def`` as
    ``on_change`` (called, never awaited), or as ``on_settled_transactional``,
    whose call was then recorded as made and never made; so those called are
    refused when they are ``async def`` (``on_settled`` may be either: its result
    is awaited when it can be)."""
    unknown = set(transports) - BUILT_IN
    if unknown:
        raise ValueError(f"unknown transports: {', '.join(sorted(unknown))}")
    if on_settled is not None and on_settled_transactional is not None:
        raise ValueError("give either on_settled or on_settled_transactional, not both")
    if journal is None:
        wanting = ["the journal transport"] if JOURNAL in transports else []
        calls = (("on_settled", on_settled), ("on_settled_transactional", on_settled_transactional))
        need_journal(wanting + [name for name, call in calls if call is not None])
    url("ws_url", ws_url, "ws", "wss")
    url("api_url", api_url, "http", "https")
    journal_argument(journal)
    token(token_given)
    for what, function in (
        ("on_change", on_change),
        ("on_report", on_report),
        ("on_settled_transactional", on_settled_transactional),
        ("token_for", token_for),
    ):
        if function is not None:
            require_plain(function, what)
    if on_settled is not None:
        require_runs(on_settled, "on_settled")
    seconds("lease", lease)
    seconds("journal_poll", journal_poll, none=True)
    if journal is None:
        given = [n for n, v in (("token_for", token_for), ("instance", instance)) if v is not None]
        given += ["journal_poll"] if journal_poll is not None else []
        need_journal(given, " (a fleet's journal)")


def need_journal(given: list[str], why: str = "") -> None:
    """``ValueError`` naming what was given that works only with a journal."""
    if given:
        verb = "needs" if len(given) == 1 else "need"
        raise ValueError(f"{' and '.join(given)} {verb} journal=URL{why}")
