"""What kind of function the application handed us: awaited or called.

An ``async def`` where a plain function is expected never runs at all: on a
webhook its 204 grants nothing.  So that kind is refused when the function
is handed over, not discovered on the first payment.  (The other way round
is taken care of where the result is used: a plain function's result is
awaited only if it can be, since awaiting ``None`` would fail *after* the
grant, a 500, and every retry would grant again.)
"""

from __future__ import annotations

import functools
import inspect
from typing import Any


def is_async(function: Any) -> bool:
    """An ``async def`` function, method, ``functools.partial`` of one, or an object
    whose ``__call__`` is one."""
    while isinstance(function, functools.partial):
        function = function.func
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004
    )


def require_plain(function: Any, what: str) -> None:
    """Raise :class:`TypeError` if ``function`` is an ``async def``: it would never run."""
    if not callable(function):
        raise TypeError(f"{what} must be callable, got {function!r}")
    if is_async(function):
        raise TypeError(f"{what} must be a plain function (def, not async def): it is called")
