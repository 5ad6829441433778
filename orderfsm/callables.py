"""What kind of function the application handed us: awaited or called.

An ``async def`` where a plain function is expected never runs at all: on a
webhook its 204 grants nothing.  So that kind is refused when the function
is handed over, not discovered on the first payment; and so is a generator
function (a ``yield`` in its body, ``async def`` or not), which calling, or
awaiting, never runs either: it only makes a generator.  (The other way
round is taken care of where the result is used: a plain function's result
is awaited only if it can be, since awaiting ``None`` would fail *after* the
grant, a 500, and every retry would grant again.)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any


def _is(function: Any, kind: Callable[[Any], bool]) -> bool:
    """``kind`` holds for ``function``, a ``functools.partial`` of it, or the ``__call__``
    of an object."""
    while isinstance(function, functools.partial):
        function = function.func
    return kind(function) or kind(getattr(function, "__call__", None))  # noqa: B004


def is_async(function: Any) -> bool:
    """An ``async def`` function, method, ``functools.partial`` of one, or an object
    whose ``__call__`` is one."""
    return _is(function, inspect.iscoroutinefunction)


def is_generator(function: Any) -> bool:
    """A generator function (``def`` or ``async def`` with ``yield``), a partial of one,
    or an object whose ``__call__`` is one."""
    return _is(function, inspect.isgeneratorfunction) or _is(function, inspect.isasyncgenfunction)


def require_runs(function: Any, what: str) -> None:
    """Raise :class:`TypeError` unless calling ``function`` (and awaiting what it returns,
    where that is done) runs its body."""
    if not callable(function):
        raise TypeError(f"{what} must be callable, got {function!r}")
    if is_generator(function):
        raise TypeError(
            f"{what} must not be a generator function (it has a yield): calling it only "
            "makes a generator, and none of its body runs"
        )


def require_plain(function: Any, what: str) -> None:
    """Raise :class:`TypeError` if ``function`` is an ``async def`` or a generator function:
    it would never run."""
    require_runs(function, what)
    if is_async(function):
        raise TypeError(f"{what} must be a plain function (def, not async def): it is called")


def require_ran(result: object, *, awaited: bool) -> None:
    """Raise :class:`TypeError` if a handler that returned ``result`` ran none of its
    body (a lambda around the wrong kind passes the checks above): a generator, or a
    coroutine that is not awaited.  That is closed first, so nothing warns of it later."""
    if inspect.isgenerator(result) or inspect.isasyncgen(result):
        what = "a generator"
    elif not awaited and inspect.isawaitable(result):
        what = "an awaitable, which is not awaited"
    else:
        return
    getattr(result, "close", lambda: None)()  # an async generator has none, nor needs it
    raise TypeError(f"the handler returned {what}: none of its body ran")
