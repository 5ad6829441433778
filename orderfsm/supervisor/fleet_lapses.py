"""The fleet link's wait for the verdict on an expired order's grace.

An expired order settles ``expired`` once its grace is over and one last Get
order says it still is (:mod:`orderfsm.supervisor.checks`).  In a fleet only
the order's owner asks; every other instance must tell its application what
that look said, so it waits for the owner's verdict in the journal
(:func:`~orderfsm.journal.orders.lapse_judged`) rather than for a time of its
own.  A fixed wait (the owner's ``details_timeout`` and a second) was too short
under load, where the owner's look and its write took longer: the owner heard
the payment, the others settled ``expired``.

Kept apart from the rest of the link (:mod:`orderfsm.supervisor.fleet`) because
it is a reader with a pace of its own: the orders waiting at once are asked
about in one read, again every :data:`VERDICT_PACE` seconds until each is in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import attrs

from orderfsm.errors import OrderFsmError
from orderfsm.supervisor.fleet_leases import journal_missed

if TYPE_CHECKING:
    from transports.journal.order_log import OrderLog

VERDICT_PACE = 0.5
"""Seconds between two reads of the verdicts still awaited.  The owner judges a grace
over a Get order after the others (they hear ``expired`` from it, later), so a first
read at an instance's own grace's end usually finds nothing yet."""


@attrs.define
class _Ask:
    """One read's answer for one order: its row's version when the verdict is in."""

    answered: anyio.Event = attrs.Factory(anyio.Event)
    version: int | None = None


class AwaitsLapseVerdicts:
    """The fleet link's reads of expired orders' verdicts (mixed into ``FleetLink``).

    A mixin rather than an object of its own: the verdict counts only once the
    link's follower has applied what the journal held with it (its cursors);
    what it uses of the link is declared here.
    """

    log: OrderLog
    cursors: dict[int, int]
    _verdict_asks: dict[int, _Ask]
    _verdict_asked: anyio.Event

    async def lapse_judged(self, order_id: int) -> None:
        """Until the fleet's verdict on the expired order's grace is in the journal, and
        every change the journal held with it is applied here (a payment the owner's
        look found reaches the order first)."""
        while True:
            ask = self._verdict_asks.get(order_id)
            if ask is None:
                ask = self._verdict_asks[order_id] = _Ask()
                self._verdict_asked.set()
            await ask.answered.wait()
            if ask.version is not None and self.cursors.get(order_id, 0) >= ask.version:
                return
            await anyio.sleep(VERDICT_PACE)

    async def _read_verdicts(self) -> None:
        while True:
            await self._verdict_asked.wait()
            self._verdict_asked = anyio.Event()
            asks, self._verdict_asks = self._verdict_asks, {}
            try:
                judged = await self.log.lapse_verdicts(list(asks))
            except OrderFsmError as exc:  # asked again after the pace: nobody settles
                journal_missed("reading expired orders' verdicts", exc)
                judged = {}
            for order_id, ask in asks.items():
                ask.version = judged.get(order_id)
                ask.answered.set()
