"""The fleet link's leases: who follows each order through Xsolla, and adoption.

Kept apart from the rest of the link (:mod:`orderfsm.supervisor.fleet`)
because it decides ownership, on timers of its own: the leases of the orders
this instance follows through Xsolla, taken, renewed and lost at a third of
the lease; the marks that an instance following only the journal still waits
on its orders; and the adoption of orders whose owner died.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from orderfsm.errors import OrderFsmError
from orderfsm.journal.orders import OrderRow

if TYPE_CHECKING:
    from orderfsm.supervisor.order import TrackedOrder
    from transports.journal.order_log import OrderLog

logger = logging.getLogger("orderfsm.fleet")

ADOPT_PAGE = 500
"""Orders one instance adopts in one statement, at most (more go at the next period)."""


class HoldsLeases:
    """The fleet link's leases and adoption (mixed into ``FleetLink``).

    A mixin rather than an object of its own: a lease taken or lost changes
    the link's orders (``owned``), and the orders it adopts are handed to the
    link's ``adopt``; what it uses of the link is declared here.
    """

    log: OrderLog
    lease: float
    follows_xsolla: bool
    adopt: Callable[[list[OrderRow]], None] | None
    _orders: dict[int, TrackedOrder]
    _lease_now: anyio.Event
    _lapsed_calls: set[int]

    async def _hold_leases(self) -> None:
        """Take, renew and lose the leases of the orders followed through Xsolla."""
        if not self.follows_xsolla:
            await self._stay_wanted()
            return
        while True:
            with anyio.move_on_after(self.lease / 3):
                await self._lease_now.wait()
            self._lease_now = anyio.Event()
            live = [o for o in self._orders.values() if not o.ended]
            if not live and not self._lapsed_calls:
                continue
            try:
                held: dict[int, int] | None = await self.log.lease(
                    [o.order_id for o in live] + list(self._lapsed_calls), self.lease
                )
            except OrderFsmError as exc:
                logger.warning(
                    "journal unavailable (leases): %s",
                    exc,
                    extra={"event": "journal.unavailable", "doing": "leases"},
                )
                held = None
            for order in live:
                # Without the journal an instance follows its own orders itself: news
                # twice (two pollers) costs less than news lost.
                owned = True if held is None else order.order_id in held
                if owned is not order.owned:
                    order.owned = owned
                    if owned:
                        order.doubt()  # taken over: a status may have moved meanwhile
                    order.wake(order)

    async def _stay_wanted(self) -> None:
        """An instance that follows only the journal says, at the leases' pace, that its
        orders are still waited on: the instance that followed one through Xsolla may
        give it up (its own waiter left) and mark it not tracked, and then nobody would
        adopt it, and nobody would ever hear ``done`` (no webhook says it)."""
        while True:
            await anyio.sleep(self.lease / 3)
            live = [o.order_id for o in self._orders.values() if not o.ended]
            if not live:
                continue
            try:
                await self.log.want(live)
            except OrderFsmError as exc:
                logger.warning(
                    "journal unavailable (marking orders tracked): %s",
                    exc,
                    extra={"event": "journal.unavailable", "doing": "marking orders tracked"},
                )

    async def _adopt_orphans(self) -> None:
        """Take over the orders whose owner is gone and that no instance following them
        took over (only the dead one did): no sweeper job for the application.

        At the renewals' pace (a third of the lease), so a dead owner's orders wait
        at most a third longer than its lease; one indexed statement, which finds
        nothing almost always.  The lease decides between adopters, as between
        followers: an order is adopted by one instance, and only once its lease ran out.
        """
        assert self.adopt is not None
        while True:
            await anyio.sleep(self.lease / 3)
            try:
                rows = await self.log.adopt(self.lease, ADOPT_PAGE)
            except OrderFsmError as exc:
                logger.warning(
                    "journal unavailable (adopting orders): %s",
                    exc,
                    extra={"event": "journal.unavailable", "doing": "adopting orders"},
                )
                continue
            if rows:
                logger.info(
                    "taking over %d orders whose owner is gone",
                    len(rows),
                    extra={"event": "fleet.adopted", "count": len(rows)},
                )
                self.adopt(rows)
