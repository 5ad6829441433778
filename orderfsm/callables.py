"""What kind of function the application handed us: awaited or called.

A plain function where an ``async def`` is expected runs (its effect
happens) and then fails at ``await``; an ``async def`` where a plain
function is expected never runs at all.  On a webhook either is money:
the first answers 500 after granting, so every retry grants again; the
second answers 204 having granted nothing.  So the kind is checked when the
function is handed over, not discovered on the first payment.
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


def require_async(function: Any, what: str) -> None:
    """Raise :class:`TypeError` unless ``function`` is an ``async def`` (see :func:`is_async`)."""
    if not callable(function):
        raise TypeError(f"{what} must be callable, got {function!r}")
    if not is_async(function):
        raise TypeError(f"{what} must be an async function (async def): it is awaited")


def require_plain(function: Any, what: str) -> None:
    """Raise :class:`TypeError` if ``function`` is an ``async def``: it would never run."""
    if not callable(function):
        raise TypeError(f"{what} must be callable, got {function!r}")
    if is_async(function):
        raise TypeError(f"{what} must be a plain function (def, not async def): it is called")
