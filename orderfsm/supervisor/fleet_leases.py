"""The fleet link's leases: who follows each order through Xsolla, and adoption.

Kept apart from the rest of the link (:mod:`orderfsm.supervisor.fleet`)
because it decides ownership, on timers of its own: the leases of the orders
this instance follows through Xsolla, taken, renewed and lost at a third of
the lease, and let go of at once when it can follow one no more; the marks
that an instance following only the journal still waits on its orders; and
the adoption of orders whose owner died.
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


def journal_missed(doing: str, exc: OrderFsmError) -> None:
    """The journal did not answer one of the leases' passes: the next pass tries again."""
    logger.warning(
        "journal unavailable (%s): %s",
        doing,
        exc,
        extra={"event": "journal.unavailable", "doing": doing},
    )


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
        """Take, renew and lose the leases of the orders followed through Xsolla, and let
        go of those this instance can follow no more (:mod:`orderfsm.supervisor.handover`).

        A lease means "this instance follows the order through Xsolla": one renewed on
        an order whose socket's time is over, on an instance that does not poll, kept
        the instances that poll from taking it, and nobody asked Xsolla any more.
        """
        if not self.follows_xsolla:
            await self._stay_wanted()
            return
        while True:
            with anyio.move_on_after(self.lease / 3):
                await self._lease_now.wait()
            self._lease_now = anyio.Event()
            live = [o for o in self._orders.values() if not o.ended]
            following = [o for o in live if o.follows]
            if len(following) < len(live):
                await self._let_go([o.order_id for o in live if not o.follows])
            if not following and not self._lapsed_calls:
                continue
            try:
                held: dict[int, int] | None = await self.log.lease(
                    [o.order_id for o in following] + list(self._lapsed_calls), self.lease
                )
            except OrderFsmError as exc:
                journal_missed("leases", exc)
                held = None
            for order in following:
                if not order.follows:
                    continue  # given up meanwhile: let go at the next pass, at once
                # Without the journal an instance follows its own orders itself: news
                # twice (two pollers) costs less than news lost.
                owned = True if held is None else order.order_id in held
                if owned is not order.owned:
                    order.owned = owned
                    if owned:
                        order.doubt()  # taken over: a status may have moved meanwhile
                    order.wake(order)

    async def _let_go(self, order_ids: list[int]) -> None:
        """Hand over the orders this instance still waits on but cannot follow through
        Xsolla: their leases end now, so an instance that can takes them (its renewal,
        or its adopter; never this one's adopter), and they stay marked tracked.  Said
        at every pass (a row already so is not written): a pass the journal missed is
        made good by the next."""
        try:
            await self.log.let_go(order_ids)
        except OrderFsmError as exc:
            journal_missed("handing orders over", exc)

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
                journal_missed("marking orders tracked", exc)

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
                # Not those tracked here that this instance cannot follow: two such
                # instances would pass the order back and forth every period.
                passed = [o.order_id for o in self._orders.values() if not (o.ended or o.follows)]
                rows = await self.log.adopt(self.lease, ADOPT_PAGE, passed)
            except OrderFsmError as exc:
                journal_missed("adopting orders", exc)
                continue
            if rows:
                logger.info(
                    "taking over %d orders whose owner is gone",
                    len(rows),
                    extra={"event": "fleet.adopted", "count": len(rows)},
                )
                self.adopt(rows)
