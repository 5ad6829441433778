"""The fleet link's wait for the verdict on an expired order's grace.

An expired order settles ``expired`` once its grace is over and one last Get
order says it still is (:mod:`orderfsm.supervisor.checks`).  In a fleet only
the order's owner asks; every other instance must tell its application what
that look said, so it waits for the verdict in the journal
(:func:`~orderfsm.journal.orders.lapse_verdict`), for a bounded time: an
owner that let the order go still looks once, and one that died is replaced
by an instance that takes the order over and looks.  A fixed wait (the
instance's own ``details_timeout`` and a second) was too short under load,
where the owner's look and its write took longer: the owner heard the payment,
the others settled ``expired``.

Kept apart from the rest of the link (:mod:`orderfsm.supervisor.fleet`) because
it is a reader with a pace of its own: the orders waiting at once are asked
about in one read, at most one read every :data:`VERDICT_PACE` seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import attrs

from orderfsm.errors import OrderFsmError
from orderfsm.journal.orders import Lapse
from orderfsm.supervisor.fleet_leases import journal_missed

if TYPE_CHECKING:
    from transports.journal.order_log import OrderLog

VERDICT_PACE = 0.5
"""Seconds between two reads of the verdicts still awaited: the owner's verdict takes a
Get order and a write, so a first read as a grace ends often finds nothing yet."""


@attrs.define
class _Ask:
    """One read's answer for one order."""

    answered: anyio.Event = attrs.Factory(anyio.Event)
    stands: Lapse = Lapse.LOOKING
    version: int = 0


class AwaitsLapseVerdicts:
    """The fleet link's reads of expired orders' verdicts (mixed into ``FleetLink``).

    A mixin rather than an object of its own: the verdict counts only once the
    link's follower has applied what the journal held with it (its cursors),
    and it waits on the link's lease; what it uses of the link is declared here.
    """

    log: OrderLog
    lease: float
    cursors: dict[int, int]
    _verdict_asks: dict[int, _Ask]
    _verdict_asked: anyio.Event

    async def await_lapse_verdict(self, order_id: int, look_takes: float, may_look: bool) -> bool:
        """Wait for the fleet's verdict on the expired order's grace; whether this instance
        looks itself after all.  Not once the verdict is in the journal (and every change
        the journal held with it is applied here: a payment the owner's look found
        reaches the order first).  Yes when the verdict is its own to make (it took the
        order over), when it let the order go (``may_look``) and nobody took it over,
        or when the wait is over with no verdict: a look, if it can, rather than a guess.

        Bounded: a lease and a third (the old owner's lease runs out, the next
        instance's renewal takes the order over), ``look_takes`` (how long a look
        takes at most, and its write) and two reads.  An owner whose grace ends much
        later (another policy), or that never looks, must not keep this instance's
        deadline from it."""
        give_up_at = anyio.current_time() + self.lease * 4 / 3 + look_takes + 2 * VERDICT_PACE
        while True:
            ask = self._verdict_asks.get(order_id)
            if ask is None:
                ask = self._verdict_asks[order_id] = _Ask()
                self._verdict_asked.set()
            with anyio.move_on_after(give_up_at - anyio.current_time()):
                await ask.answered.wait()
            if not ask.answered.is_set():
                return True
            if ask.stands is Lapse.JUDGED and self.cursors.get(order_id, 0) >= ask.version:
                return False
            if ask.stands is Lapse.MINE or (may_look and ask.stands is Lapse.UNOWNED):
                return True
            if anyio.current_time() >= give_up_at:
                return True

    async def _read_verdicts(self) -> None:
        while True:
            await self._verdict_asked.wait()
            self._verdict_asked = anyio.Event()
            asks, self._verdict_asks = self._verdict_asks, {}
            try:
                verdicts = await self.log.lapse_verdicts(list(asks))
            except OrderFsmError as exc:  # asked again at the next read: nobody settles
                journal_missed("reading expired orders' verdicts", exc)
                verdicts = {}
            for order_id, ask in asks.items():
                ask.stands, ask.version = verdicts.get(order_id, (Lapse.LOOKING, 0))
                ask.answered.set()
            await anyio.sleep(VERDICT_PACE)
