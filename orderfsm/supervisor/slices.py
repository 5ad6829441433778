"""Long runs of synchronous work cut into slices, the event loop's other work between.

Shared by the fleet's follower (changes applied) and its takeover (orders
tracked): both handle thousands of rows at once on the loop, and neither is
the other's helper.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import anyio.lowlevel

SLICE = 500
"""Orders (or their changes) tracked and applied between two looks at the loop's other
work: a resume's 10,000 at once held it (every socket, every poller's first request)
for 0.2-0.3 s."""

T = TypeVar("T")


async def in_slices(items: Sequence[T], each: Callable[[Sequence[T]], None]) -> None:
    """``each(slice)`` over ``items``, ``SLICE`` at a time, the loop's other work between."""
    for first in range(0, len(items), SLICE):
        if first:
            await anyio.lowlevel.checkpoint()
        each(items[first : first + SLICE])
