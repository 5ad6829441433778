"""Who hears about what on one connection: the orders attached and their sinks.

A :class:`~transports.centrifuge.connection.Connection` reads the socket and
runs the engine; it hands each status to :meth:`Subscribers.deliver` and each
health change to :meth:`Subscribers.broadcast`, and this module turns them into
sink calls.  Kept apart from the I/O loop so that the bookkeeping (attach,
detach, replay, the final-status detach) reads and changes in one place.

Statuses seen are remembered per order id (the last :data:`REMEMBERED_ORDERS`
ids), because an order is often attached after its first statuses went by on
an already caught-up connection.  They are kept as plain tuples of atoms, not
as observations: the garbage collector stops tracking those, and ten thousand
orders' remembered statuses kept as records made it walk a third more objects
and run full collections of 150-200 ms while statuses streamed in
(``bench_scale``); the observation is made again for the rare late attach.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from orderfsm.core import FINAL_STATUSES, Observation, Position, Status
from orderfsm.interface import WEBSOCKET, HealthReport, ObservationSink

logger = logging.getLogger("orderfsm.websocket")

REMEMBERED_ORDERS = 1_000
"""Order ids whose statuses a connection keeps, for orders attached after the news."""

Seen = tuple[str, float, "int | None", str, Any]
"""A status as remembered: its value, ``at``, the offset and epoch, and the raw data
(``None`` for the usual ``{order_id, status}``)."""
_SEEN = 5
"""Fields per remembered status: an order's statuses are kept end to end in one flat
tuple, one allocation per status (a tuple of tuples was two: every object made
per status brings the collector's young collections sooner, ``bench_scale``)."""

_WIRE: dict[Status, str] = {status: status.value for status in Status}
"""A status as the plain string a remembered tuple keeps (``.value`` is a Python call)."""


class _Owner(Protocol):
    def release(self, attachment: Attachment, linger: bool = True) -> None: ...


class Attachment:
    """One order's interest in its user's connection; :meth:`detach` ends it."""

    __slots__ = ("_owner", "detached", "order_id", "sink")

    def __init__(self, owner: _Owner, order_id: int, sink: ObservationSink) -> None:
        self._owner = owner
        self.order_id = order_id
        self.sink = sink
        self.detached = False

    def detach(self, *, linger: bool = True) -> None:
        """Stop delivering to this sink (idempotent).  The connection closes when
        its last attachment detaches (after the pool's ``linger``, or at once with
        ``linger=False``: the socket is given up, not just done with); that also
        happens by itself after a final status was delivered."""
        if not self.detached:
            self.detached = True
            self._owner.release(self, linger)


class Subscribers:
    """The attachments of one connection, by order id, and what they were told.

    ``on_idle`` is called when the last attachment goes, with the ``linger`` of
    that last detach.
    """

    __slots__ = ("_attachments", "_on_idle", "_orders", "_seen")

    def __init__(self, on_idle: Callable[[bool], None]) -> None:
        self._on_idle = on_idle
        self._orders: dict[int, list[Attachment]] = {}
        self._attachments = 0
        self._seen: OrderedDict[int, tuple[Any, ...]] = OrderedDict()
        """Per order id, its :data:`Seen` statuses end to end (:data:`_SEEN` fields each)."""

    @property
    def order_count(self) -> int:
        return len(self._orders)

    @property
    def attachment_count(self) -> int:
        return self._attachments

    def statuses_seen(self, order_id: int) -> tuple[str, ...]:
        """The statuses remembered for ``order_id`` (for diagnostics and tests)."""
        return self._seen.get(order_id, ())[::_SEEN]

    def attach(self, order_id: int, sink: ObservationSink, health: HealthReport) -> Attachment:
        """Report ``health`` to ``sink`` and replay what was seen for the order."""
        attachment = Attachment(self, order_id, sink)
        self._orders.setdefault(order_id, []).append(attachment)
        self._attachments += 1
        self._report(attachment, health)
        kept = self._seen.get(order_id, ())
        for start in range(0, len(kept), _SEEN):
            if attachment.detached:
                break
            seen: Seen = kept[start : start + _SEEN]
            self._observe(attachment, _observation(order_id, seen))
        return attachment

    def release(self, attachment: Attachment, linger: bool = True) -> None:
        attachments = self._orders.get(attachment.order_id)
        if attachments is None or attachment not in attachments:
            return
        attachments.remove(attachment)
        if not attachments:
            del self._orders[attachment.order_id]
        self._attachments -= 1
        if self._attachments == 0:
            self._on_idle(linger)

    def deliver(self, observation: Observation) -> None:
        """Hand the status to the order's sinks, then remember it (the hot path:
        the application hears first, the bookkeeping waits)."""
        order_id = observation.order_id
        attachments = self._orders.get(order_id)
        if attachments is not None:
            if len(attachments) == 1:
                self._observe(attachments[0], observation)
            else:
                for attachment in tuple(attachments):  # a final status detaches them
                    if not attachment.detached:
                        self._observe(attachment, observation)
        seen = self._seen
        kept = seen.get(order_id)
        status = _WIRE[observation.status]
        raw = observation.raw
        if raw == {"order_id": order_id, "status": status}:
            raw = None  # the usual payload, made again on replay: a dict would keep the
            # tuple tracked (the collector assumes any dict may hold references)
        position = observation.position
        assert position is not None  # a WebSocket observation always has one
        if kept is None:
            seen[order_id] = (status, observation.at, position.offset, position.epoch, raw)
            if len(seen) > REMEMBERED_ORDERS:
                seen.popitem(last=False)
        else:
            seen.move_to_end(order_id)
            for start in range(0, len(kept), _SEEN):
                if kept[start] == status:
                    break
            else:
                seen[order_id] = (
                    *kept,
                    status,
                    observation.at,
                    position.offset,
                    position.epoch,
                    raw,
                )

    def broadcast(self, report: HealthReport) -> None:
        """Tell every attached sink about a health change (or a gap)."""
        for attachments in list(self._orders.values()):
            for attachment in tuple(attachments):
                if not attachment.detached:
                    self._report(attachment, report)

    def _observe(self, attachment: Attachment, observation: Observation) -> None:
        try:
            attachment.sink.observe(observation)
        except Exception:
            logger.exception(
                "sink of order %s raised on observe",
                attachment.order_id,
                extra={"event": "sink.failed", "order_id": attachment.order_id},
            )
        if observation.status in FINAL_STATUSES and not attachment.detached:
            attachment.detach()  # (the order's own end detaches it first, as a rule)

    def _report(self, attachment: Attachment, report: HealthReport) -> None:
        try:
            attachment.sink.report(report)
        except Exception:
            logger.exception(
                "sink of order %s raised on report",
                attachment.order_id,
                extra={"event": "sink.failed", "order_id": attachment.order_id},
            )


def _observation(order_id: int, seen: Seen) -> Observation:
    status, at, offset, epoch, raw = seen
    if raw is None:
        raw = {"order_id": order_id, "status": status}
    position = Position(offset=offset, epoch=epoch)
    return Observation.trusted(order_id, Status(status), WEBSOCKET, at, position, raw)
