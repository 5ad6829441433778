"""What a custom transport reports into: its news counted as any transport's, its
health the application's to hear, never the tracker's own transports' state."""

from __future__ import annotations

import anyio
import attrs

from orderfsm.core import Observation
from orderfsm.interface import HealthReport
from orderfsm.supervisor.order import SourceSink


class CustomSink(SourceSink):
    """What a custom transport reports into.

    Its news counts as any transport's, at a moment the tracker can use: an ``at``
    outside [the start of tracking, now] on the loop's clock (``time.time()``, a
    server's timestamp) is taken as the nearer end of that span.  The expired
    grace runs from it, so ``time.time()`` would stretch it to the deadline, or
    forever without one.  Its health is the application's to hear
    (``on_report``), and a ``gap`` has Get order asked once, but it never stands
    for the tracker's own transports' health, whatever ``source`` it names: a
    transport of the application's that calls itself ``websocket`` (its own
    socket, failed) must not switch the tracker's WebSocket off.  Such a name is
    not refused here, where it is only known once the transport runs and a
    refusal would end a transport that works: the conformance suite flags it
    (:data:`orderfsm.interface.BUILT_IN`).
    """

    __slots__ = ()

    def observe(self, observation: Observation, /) -> None:
        order = self._order
        if observation.order_id != order.order_id:
            return
        at, now = observation.at, anyio.current_time()
        if not order.started_at <= at <= now:
            observation = attrs.evolve(observation, at=min(max(at, order.started_at), now))
        order.observe(observation)

    def report(self, report: HealthReport, /) -> None:
        self._order.tell(report)
        if report.gap:
            self._order.doubt()
