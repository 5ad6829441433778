"""Orders a tracker takes over from the journal rather than from the application.

An instance that can follow orders through Xsolla (it has tokens) takes over,
on start, the orders nobody follows any more (their owner's lease ran out)
and the orders its own previous life held (the same instance name, see
:mod:`transports.journal.instance`), never one a live instance holds: a
deploy that restarts each instance in turn must not have each take the whole
fleet's orders and ask Get order for all of them.  Later, orders whose owner
died and that no follower took over are adopted the same way (the fleet's
adopter, ``FleetLink._adopt_orphans``).  An instance that follows only the
journal takes over nothing: it cannot follow an order, only hear of it, and
follows what its application asks for.  Each order taken over is tracked as
the application's own would be, with the token ``token_for`` gives for it.

Kept apart from the tracker's own calls (:mod:`orderfsm.supervisor.tracker`)
because it is the fleet's side of tracking: rows of the journal, a token
looked up per row, and a failure that must not stop the other rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from orderfsm.errors import OrderFsmError
from orderfsm.interface import TokenProvider
from orderfsm.supervisor import arguments
from orderfsm.supervisor.slices import in_slices

if TYPE_CHECKING:
    from orderfsm.core import Status
    from orderfsm.journal.orders import ChangeRow, OrderRow
    from orderfsm.supervisor.fleet import FleetLink
    from orderfsm.supervisor.order import TrackedOrder
    from orderfsm.supervisor.runner import Scheduler

logger = logging.getLogger("orderfsm")

RESUME_PAGE, RESUME_PAGES = 10_000, 10
"""A start takes orders 10,000 to a statement, 100,000 at most (as resumes did):
each statement reads every tracked order to find the ones nobody follows, so
pages of the adopter's size (``ADOPT_PAGE``) made a restart on 10,000 orders take
20 such reads, 4.4 s on PostgreSQL (``bench_fleet.py``)."""


class TakesOverOrders:
    """The tracker's resume and adoption of orders (mixed into ``Tracker``).

    A mixin rather than an object of its own: a taken-over order is tracked
    (and forgotten) through the tracker's own ``track`` and ``forget``, so it
    shares the tracker's state; what it uses of it is declared here.
    """

    fleet: FleetLink | None
    token_for: Callable[[int, str | None], TokenProvider | str] | None
    _orders: dict[int, TrackedOrder]
    _no_token: set[int]
    """Orders ``token_for`` raised on (their traceback is logged once)."""
    _scheduler: Scheduler | None

    if TYPE_CHECKING:
        # Only the arguments a take-over passes: the tracker's own accept more.
        def track(
            self,
            order_id: int,
            *,
            token: TokenProvider | str | None,
            user_id: str | None,
            until: Status,
        ) -> None: ...

        def forget(self, order_id: int) -> None: ...

    async def _resume(self, fleet: FleetLink) -> None:
        """At start: end the leases of this instance's previous life, then take over the
        orders nobody follows any more (those first), page after page (up to
        ``RESUME_PAGES``: what is left goes to the adopter's later looks)."""
        try:
            await fleet.log.release()
            if not fleet.adopts:
                return
            for _ in range(RESUME_PAGES):
                rows = await fleet.log.adopt(fleet.lease, RESUME_PAGE)
                if not rows:
                    return
                past = await fleet.read_past(row.order_id for row in rows)

                def take(
                    taken: Sequence[OrderRow], past: dict[int, list[ChangeRow]] = past
                ) -> None:
                    self._take_over(taken, "resuming")
                    fleet.apply_past([c for row in taken for c in past.get(row.order_id, ())])

                await in_slices(rows, take)
                if len(rows) < RESUME_PAGE:
                    return
        except OrderFsmError as exc:
            # A database failing over during a deploy must not stop the app from
            # starting: the adopter's next looks take what this start could not.
            logger.warning(
                "journal unavailable (taking over orders at start): %s",
                exc,
                extra={"event": "journal.unavailable", "doing": "taking over at start"},
            )

    def _adopt(self, rows: list[OrderRow]) -> None:
        """Orders whose owner is gone, their leases already taken here: followed as a
        restart would resume them.  They are tracked here like any other order."""
        self._take_over(rows, "adopting")

    def _take_over(self, rows: Sequence[OrderRow], doing: str) -> None:
        fleet, scheduler = self.fleet, self._scheduler
        assert fleet is not None and scheduler is not None
        taken_over = scheduler.taken_over
        for row in rows:
            existing = self._orders.get(row.order_id)
            if existing is not None:
                if not existing.ended:
                    # Followed here already: the renewal makes it ours, or, when this
                    # instance cannot follow it through Xsolla, lets it go at once (the
                    # adoption passes by those it let go: no taking them back each time).
                    fleet.lease_soon()
                    continue
                self.forget(row.order_id)  # given up here, but the fleet still needs it
            token: TokenProvider | str | None = None
            if self.token_for is not None:
                try:
                    token = self.token_for(row.order_id, row.user_id)
                    # What it gives is checked here, not by track(): a TypeError there
                    # (bytes from a Redis client) stopped the start, or the adopter.
                    arguments.token(token, "what token_for returned")
                except Exception:  # the app's callable: one bad row must not stop the rest
                    # Its traceback once: the fleet offers the order again every lease.
                    first = row.order_id not in self._no_token
                    self._no_token.add(row.order_id)
                    logger.warning(
                        "not %s order %s: token_for raised",
                        doing,
                        row.order_id,
                        exc_info=first,
                        extra={"event": "resume.failed", "order_id": row.order_id},
                    )
                    continue
            fleet.resuming(row.order_id)
            taken_over.add(row.order_id)  # its first Get order after the app's own orders'
            try:
                self.track(row.order_id, token=token, user_id=row.user_id, until=row.until)
            except (TypeError, ValueError) as exc:  # no token for it here: another may have one
                taken_over.discard(row.order_id)
                fleet.forget(row.order_id)
                logger.warning(
                    "not %s order %s: %s",
                    doing,
                    row.order_id,
                    exc,
                    extra={"event": "resume.failed", "order_id": row.order_id},
                )
