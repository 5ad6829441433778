"""Custom transports cancelled and not returned yet: named in a warning when slow.

Structured concurrency cannot leave a task behind: a transport that ignores
its cancellation (a shielded wait, a swallowed ``Cancelled``) runs on, and the
tracker's exit waits for it.  That cannot be helped, but it must not happen
without a word: one task watches the transports cancelled, and names each
that has not returned ``STUCK_AFTER`` seconds later (``transport.stuck``).
While the tracker closes it goes on, shielded, until the last has returned,
so an exit that waits says what it waits for.
"""

from __future__ import annotations

import logging

import anyio
import attrs

from orderfsm.supervisor.custom import CustomTransport, transport_name
from transports.backend import Wakeup

logger = logging.getLogger("orderfsm")

STUCK_AFTER = 5.0
"""Seconds a cancelled custom transport has to return before a warning names it."""


@attrs.define(eq=False, slots=True)
class RunningCustom:
    """One custom transport running for one order, in a scope of its own."""

    order_id: int
    transport: CustomTransport
    scope: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)


class Stragglers:
    """``cancelled(custom)`` when its scope is cancelled, ``returned(custom)`` when its
    task ends; :meth:`run`, in a task of the tracker's, names those slow to return."""

    def __init__(self) -> None:
        self._since: dict[RunningCustom, float] = {}
        """Cancelled, not returned, not named yet: in the order they were cancelled."""
        self._named: set[RunningCustom] = set()
        self._closing: Wakeup | None = None
        """Set when the last returns, once the tracker closes."""

    def cancelled(self, custom: RunningCustom) -> None:
        self._since.setdefault(custom, anyio.current_time())

    def returned(self, custom: RunningCustom) -> None:
        self._since.pop(custom, None)
        self._named.discard(custom)
        if self._closing is not None and not self._since and not self._named:
            self._closing.set()

    async def run(self) -> None:
        """Looks five times in ``STUCK_AFTER``, not at each cancellation: one wake-up a
        second, not one per order that ends."""
        try:
            while True:
                self._name_stuck()
                await anyio.sleep(STUCK_AFTER / 5)
        finally:  # the tracker closes: its exit waits for the stragglers
            self._closing = Wakeup()
            with anyio.CancelScope(shield=True):
                while self._since or self._named:
                    self._name_stuck()
                    with anyio.move_on_after(STUCK_AFTER / 5):
                        await self._closing.wait()

    def _name_stuck(self) -> None:
        now = anyio.current_time()
        since = self._since
        while since:
            custom, at = next(iter(since.items()))
            if at + STUCK_AFTER > now:
                return
            del since[custom]
            self._named.add(custom)
            name = transport_name(custom.transport)
            logger.warning(
                "order %s: custom transport %s has not returned %.0f s after it was "
                "cancelled (a shielded wait, or a cancellation caught and dropped?); "
                "the tracker's exit waits for it",
                custom.order_id,
                name,
                now - at,
                extra={"event": "transport.stuck", "order_id": custom.order_id, "source": name},
            )
