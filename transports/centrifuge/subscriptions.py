"""The channels one client follows, and which history read in flight is whose.

The engine decides about the connection; this keeps the bookkeeping over many
channels (which still read history, which reply belongs to which channel, the
earliest deadline among them) in one place.  Channels outlive connections, so
what a lost connection leaves behind is abandoned here, positions kept.  No I/O
and no clock: the time comes in as ``now``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from transports.centrifuge.channels import Channel, Phase, order_event
from transports.centrifuge.events import Event, Gap, Ignored, Unsubscribed
from transports.centrifuge.frames import (
    OtherPush,
    PubPush,
    SubscribePush,
    SubscribeResult,
    UnsubscribePush,
    history_command,
    publication_line,
)


class Subscriptions:
    __slots__ = ("_requests", "channels")

    def __init__(self) -> None:
        self.channels: dict[str, Channel] = {}
        """By name.  Never replaced, so the engine's fast paths may hold it."""
        self._requests: dict[int, str] = {}
        """History command id -> the channel that sent it."""

    def positions(self) -> dict[str, tuple[int, str]]:
        """Channel -> (offset, epoch) of the last publication delivered."""
        return {name: (ch.offset, ch.epoch) for name, ch in self.channels.items()}

    def recoverable(self) -> dict[str, tuple[int, str]]:
        """What goes in a connect command's ``subs`` for the server to recover."""
        return {name: (ch.offset, ch.epoch) for name, ch in self.channels.items() if ch.recoverable}

    def lone_live_publication(self, text: str) -> tuple[Channel, int, Any] | None:
        """The channel, offset and data of a frame that is one publication on a live
        channel (decided here only, for both of the engine's fast paths)."""
        fields = publication_line(text) if "\n" not in text else None
        if fields is None:
            return None
        channel, offset, data = fields
        ch = self.channels.get(channel)
        if ch is None or ch.phase is not Phase.LIVE:
            return None
        return ch, offset, data

    def push(
        self,
        push: PubPush | SubscribePush | UnsubscribePush | OtherPush,
        now: float,
        *,
        connected: bool,
    ) -> list[Event]:
        """What the server pushed about a channel; ignored unless ``connected``."""
        if isinstance(push, OtherPush) or not connected:
            return [Ignored(now, f"{_kind(push)} push", push.channel)]
        name = push.channel
        if isinstance(push, SubscribePush) and name:
            return self.subscribed(name, push.result, now)
        ch = self.channels.get(name)
        if ch is None:
            if isinstance(push, PubPush):
                # Xsolla's channel names are undocumented and its SDKs match on order_id
                # alone: a status on a channel we were not told of (or one named by a
                # compacted id) is still news.  Without a position it is not resumed.
                return [order_event(name, push.pub.offset, push.pub.data, "", "push", now)]
            return [Ignored(now, f"{_kind(push)} push for unknown channel", name)]
        if isinstance(push, PubPush):
            return ch.on_push(push.pub, now)
        if isinstance(push, UnsubscribePush):
            return self.drop(ch, push.code, push.reason, now)
        return []

    def subscribed(self, name: str, result: SubscribeResult, now: float) -> list[Event]:
        known = name in self.channels
        ch = self.channels.setdefault(name, Channel(name))
        return ch.on_subscribed(result, now, known=known)

    def restate(self, subs: Mapping[str, SubscribeResult], now: float) -> list[Event]:
        """A connect reply lists the channels we are in: drop the others, apply these."""
        events: list[Event] = []
        for ch in [ch for name, ch in self.channels.items() if name not in subs]:
            events += self.drop(ch, 0, "not in the connect reply", now, restated=True)
        for name, sub in subs.items():
            events += self.subscribed(name, sub, now)
        return events

    def drop(
        self, ch: Channel, code: int, reason: str, now: float, *, restated: bool = False
    ) -> list[Event]:
        """The server unsubscribed us: hand out what was held back, then forget the channel."""
        events = ch.go_live(now)
        del self.channels[ch.name]
        self._requests = {i: n for i, n in self._requests.items() if n != ch.name}
        return [*events, Unsubscribed(now, ch.name, code, reason, restated)]

    def invalidate(self, reason: str, now: float) -> list[Event]:
        """Every position is void (3014): report each channel as a gap and forget it."""
        events: list[Event] = [Gap(now, name, reason) for name in self.channels]
        self.channels.clear()
        return events

    def answered(self, request_id: int) -> Channel | None:
        """The channel whose history read this reply answers; ``None`` if abandoned."""
        name = self._requests.pop(request_id, None)
        ch = self.channels.get(name) if name is not None else None
        return ch if ch is not None and ch.request_id == request_id else None

    def read_histories(
        self, now: float, timeout: float, next_id: Callable[[], int], outbox: list[str]
    ) -> bool:
        """Queue the history reads channels ask for; whether every channel is live."""
        live = True
        for ch in self.channels.values():
            if ch.phase is Phase.LIVE:
                continue
            live = False
            if ch.wants_history:
                ch.request_id = next_id()
                ch.deadline = now + timeout
                self._requests[ch.request_id] = ch.name
                offset, epoch = ch.since()
                outbox.append(
                    history_command(ch.request_id, ch.name, since_offset=offset, since_epoch=epoch)
                )
        return live

    def earliest(self, timeout: float | None) -> tuple[float | None, float | None]:
        """The earliest of ``timeout`` and the channels' timeouts, and the earliest
        history retry.  Called after every frame, so one pass and no lists."""
        retry: float | None = None
        for ch in self.channels.values():
            if ch.deadline is not None and (timeout is None or ch.deadline < timeout):
                timeout = ch.deadline
            if ch.retry_at is not None and (retry is None or ch.retry_at < retry):
                retry = ch.retry_at
        return timeout, retry

    def deadlines(self) -> list[float]:
        return [ch.deadline for ch in self.channels.values() if ch.deadline is not None]

    def retries_due(self, now: float) -> None:
        """History retries whose time has come may ask again."""
        for ch in self.channels.values():
            if ch.retry_at is not None and ch.retry_at <= now:
                ch.retry_at = None

    def abandon(self) -> None:
        """The connection is gone: forget its commands in flight, keep the positions."""
        for ch in self.channels.values():
            ch.abandon()
        self._requests.clear()


def _kind(push: PubPush | SubscribePush | UnsubscribePush | OtherPush) -> str:
    if isinstance(push, OtherPush):
        return push.kind or "empty"
    return {PubPush: "pub", SubscribePush: "subscribe", UnsubscribePush: "unsubscribe"}[type(push)]
