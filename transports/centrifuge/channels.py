"""One server-side channel's position, and the rules that keep it exact.

A channel remembers ``(epoch, offset)``: the highest offset delivered to the
driver in that epoch.  It survives reconnects, goes back to the server in
``connect.subs`` for recovery, and decides duplicates: a publication at or
below it is dropped.  The offset is advanced *before* the publication is
handed out (centrifuge-js #425), and never set from a recovery reply's
``offset``, which is the offset we asked for, not the stream top
(centrifuge-dart #142).

While a channel reads history (phase ``SYNCING``) live publications are held
back and merged afterwards, so the driver sees each offset once and in order.

Nothing here knows about ids, sockets or time beyond the ``at`` it is given;
the engine sends the history commands a syncing channel asks for.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

import attrs

from orderfsm.core import Status, order_id_of
from orderfsm.core.ids import MAX_ORDER_ID
from transports.centrifuge.events import Event, Gap, Ignored, OrderPublication, Subscribed
from transports.centrifuge.frames import HistoryResult, Publication, SubscribeResult


class Phase(enum.Enum):
    SYNCING = "syncing"
    """Reading history; live publications wait in ``held``."""
    LIVE = "live"


@attrs.define
class Channel:
    name: str
    epoch: str = ""
    offset: int = 0
    """Highest offset delivered (or known to be unavailable) in ``epoch``."""
    recoverable: bool = False
    phase: Phase = Phase.LIVE
    held: list[Publication] = attrs.Factory(list)
    request_id: int | None = None
    """The history command in flight, if any."""
    deadline: float | None = None
    """When the command in flight times out."""
    retry_at: float | None = None
    """When to ask again after a temporary history error."""
    failures: int = 0
    positioned: bool = False
    """``offset`` is a position the server confirmed (history read to the top, or
    recovered), even when it is 0."""
    watched: bool = False
    """The server checks this subscription's position (recoverable or positioned) and
    ends it when its stream restarts: an offset pushed at or below ours is a copy."""

    @property
    def wants_history(self) -> bool:
        return self.phase is Phase.SYNCING and self.request_id is None and self.retry_at is None

    def since(self) -> tuple[int, str]:
        """Where the next history read starts (exclusive).

        The epoch goes along only with a real offset: ``since {0, ""}`` reads
        from the start of whatever epoch the stream is in, and cannot fail
        with 112.
        """
        return (self.offset, self.epoch) if self.offset else (0, "")

    def abandon(self) -> None:
        """Forget what belonged to the lost connection; keep the position."""
        self.held.clear()
        self.request_id = self.deadline = self.retry_at = None

    def start_sync(self) -> None:
        self.phase = Phase.SYNCING
        self.request_id = self.deadline = self.retry_at = None

    # --- publications ----------------------------------------------------------

    def deliver(self, pub: Publication, via: str, at: float) -> list[Event]:
        """Hand out one publication unless it is a duplicate; advance first."""
        if pub.offset:
            if pub.offset <= self.offset:
                return []
            self.offset = pub.offset
        return [order_event(self.name, pub.offset, pub.data, self.epoch, via, at)]

    def deliver_all(self, pubs: Iterable[Publication], via: str, at: float) -> list[Event]:
        """Deliver in offset order, reporting (not repairing) a hole before a publication."""
        events: list[Event] = []
        for pub in pubs:
            if self._skips_ahead(pub):
                events.append(Gap(at, self.name, f"offset {pub.offset} follows {self.offset}"))
            events += self.deliver(pub, via, at)
        return events

    def on_push(self, pub: Publication, at: float) -> list[Event]:
        """A live publication: hold it while syncing; read history if it skips ahead."""
        if self.phase is Phase.SYNCING:
            self.held.append(pub)
            return []
        if self._skips_ahead(pub):
            self.held.append(pub)
            self.start_sync()
            return []
        if self._maybe_restarted(pub):
            # Unwatched (history without recovery or positioning), a push at or below
            # our position is a late copy, or the first of a stream started again:
            # its history expired, the channel quiet past its TTL, and nobody ends
            # the subscription.  History since our position tells which: in the same
            # epoch the push is dropped as the copy it is; in a new one the server
            # answers 112, and the new stream is read from its start, this push in it.
            self.held.append(pub)
            self.start_sync()
            return []
        return self.deliver(pub, "push", at)

    def _maybe_restarted(self, pub: Publication) -> bool:
        return not self.watched and bool(self.epoch) and 0 < pub.offset <= self.offset

    def _skips_ahead(self, pub: Publication) -> bool:
        # Without a position there is nothing to be contiguous with.  Once the
        # stream top was read, offset 0 is one too (an empty stream): 2 before 1
        # is then a hole, not a start.
        return (self.offset > 0 or self.positioned) and pub.offset > self.offset + 1

    # --- subscription results ----------------------------------------------------

    def on_subscribed(self, result: SubscribeResult, at: float, *, known: bool) -> list[Event]:
        """Apply a connect-reply ``subs`` entry or a subscribe push.

        A fresh channel reads its whole history (Xsolla's advice: statuses
        published before the connection are otherwise missed).  A known one
        either recovered (deliver what was recovered; the reply's offset is the
        one we asked for and is ignored) or reads history from its own position.
        """
        self.recoverable = result.recoverable
        self.watched = result.recoverable or result.positioned
        events: list[Event] = [
            Subscribed(at, self.name, result.epoch, result.offset, result.recovered)
        ]
        if not known:
            self.epoch = result.epoch
            self.held += sorted(result.publications, key=_offset)
            self.start_sync()
            return events
        # No epoch in the result (a stream neither recoverable nor positioned) says
        # nothing about ours: history, which always tells it, judges it then.
        if self.epoch and result.epoch and result.epoch != self.epoch:
            events += self._new_epoch(result.epoch, at)
            self.start_sync()
            return events
        self.epoch = result.epoch or self.epoch
        if result.recovered:
            self.request_id = self.deadline = self.retry_at = None
            self.positioned = True
            events += self.deliver_all(sorted(result.publications, key=_offset), "recovery", at)
            return events + self.go_live(at)
        self.start_sync()
        return events

    def on_history(self, result: HistoryResult, at: float) -> list[Event]:
        """One page of history: deliver it, then ask for the next page or go live."""
        self.request_id = self.deadline = None
        self.failures = 0
        events: list[Event] = []
        if result.epoch != self.epoch:
            if self.epoch or self.offset or self.positioned:
                events += self._new_epoch(result.epoch, at)
            else:  # told for the first time, not changed: what is held is of this stream
                self.epoch = result.epoch
        since = self.offset
        pubs = sorted(result.publications, key=_offset)
        events += self.deliver_all(pubs, "history", at)
        last = pubs[-1].offset if pubs else 0
        if pubs and since < last < result.offset:
            return events  # capped page: still SYNCING, the engine asks for the next one
        if result.offset > self.offset:
            if self.offset:
                reason = f"history ends at {self.offset}, stream top is {result.offset}"
                events.append(Gap(at, self.name, reason))
            self.offset = result.offset
        self.positioned = True
        return events + self.go_live(at)

    def _new_epoch(self, epoch: str, at: float) -> list[Event]:
        """The stream was reset: offsets start again, and what is held belongs to the old one.

        Held publications carry no epoch; the server ends a positioned
        subscription when its stream breaks, so they all predate the reset.
        """
        # A confirmed position, even 0, means publications after it may be gone.
        lost = self.offset > 0 or self.positioned or bool(self.held)
        self.epoch, self.offset, self.positioned = epoch, 0, False
        self.held.clear()
        return [Gap(at, self.name, f"epoch changed to {epoch!r}")] if lost else []

    def retry_history(self, at: float) -> None:
        """The history read failed for now: read again at ``at``."""
        self.request_id = self.deadline = None
        self.retry_at = at
        self.failures += 1

    def on_history_unavailable(self, reason: str, at: float) -> list[Event]:
        """History cannot be read (permanent error): report the gap, go live anyway."""
        self.request_id = self.deadline = None
        return [Gap(at, self.name, reason), *self.go_live(at)]

    def on_unrecoverable(self, at: float) -> list[Event]:
        """Error 112: our epoch is gone; read again from the start of the new one."""
        self.request_id = self.deadline = None
        self.epoch, self.offset, self.positioned = "", 0, False
        return [Gap(at, self.name, "unrecoverable position (112)")]

    def go_live(self, at: float) -> list[Event]:
        """Release what was held back, in order and without duplicates."""
        self.phase = Phase.LIVE
        held, self.held = self.held, []
        return self.deliver_all(sorted(held, key=_offset), "push", at)


def _offset(pub: Publication) -> int:
    return pub.offset


_STATUSES: dict[str, Status] = {s.value: s for s in Status}
"""Status by wire value; a miss (unknown, or not a string) makes the publication ignorable."""


def order_fields(data: Any) -> tuple[int, Status] | None:
    """Xsolla's ``{order_id: int, status: str}``, read: the order and its status, or
    ``None`` when it is not that (:func:`order_event` says why)."""
    if type(data) is not dict:
        return None
    order_id = data.get("order_id")
    wire = data.get("status")
    if type(order_id) is not int or not 0 < order_id <= MAX_ORDER_ID:
        order_id = order_id_of(order_id)  # its digits as a string, as Get order may send it
        if order_id is None:
            return None
    if type(wire) is not str:
        return None
    status = _STATUSES.get(wire)
    return None if status is None else (order_id, status)


def order_event(
    channel: str, offset: int, data: Any, epoch: str, via: str, at: float
) -> OrderPublication | Ignored:
    """Parse Xsolla's ``{order_id: int, status: str}``; anything else is ignorable."""
    told = order_fields(data)
    if told is not None:
        return OrderPublication(at, channel, offset, epoch, *told, via, data)
    if not isinstance(data, dict):
        return Ignored(at, "publication is not an object", channel, offset, data)
    order_id = order_id_of(data.get("order_id"))
    if order_id is None:
        return Ignored(at, "publication has no positive integer order_id", channel, offset, data)
    wire = data.get("status")
    status = _STATUSES.get(wire) if type(wire) is str else None
    if status is None:
        return Ignored(at, f"unknown status {data.get('status')!r}", channel, offset, data)
    return OrderPublication(at, channel, offset, epoch, order_id, status, via, data)
