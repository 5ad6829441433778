"""One WebSocket connection's server-side state machine, sans-io.

Frames go in with the current time, actions (frames to send, a close) come
out; timers are exposed as ``next_deadline()`` / ``handle_timer(now)`` in the
aioquic style, so the aiohttp shell only sleeps and forwards.  Behaviour
follows ``centrifugal/centrifuge`` ``client.go``: strict dispatch, the single
pong rule, server-side subscriptions with recovery, and history semantics,
for each of the channel modes (:data:`~transports.emulator.state.CHANNEL_MODES`).
"""

from __future__ import annotations

import enum
import random
import uuid
from collections.abc import Mapping
from typing import Any

import attrs

from transports.emulator import protocol as p
from transports.emulator.records import Publication
from transports.emulator.state import Stream, User, World


@attrs.frozen
class Send:
    text: str


@attrs.frozen
class Close:
    code: int
    reason: str


Action = Send | Close


class Phase(str, enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


@attrs.define
class Timing:
    ping_interval: float = 25.0
    pong_timeout: float = 10.0
    stale_timeout: float = 15.0


class _Disconnect(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Session:
    def __init__(self, world: World, timing: Timing, rng: random.Random, now: float) -> None:
        self.world = world
        self.timing = timing
        self.rng = rng
        self.phase = Phase.CONNECTING
        self.user: User | None = None
        self.client_id = ""
        self.channels: set[str] = set()
        self.pings_enabled = True
        self.pings_sent = 0
        self.pongs_received = 0
        self._stale_at: float | None = now + timing.stale_timeout
        self._next_ping: float | None = None
        self._pong_due: float | None = None

    # --- inputs -----------------------------------------------------------------

    def receive_text(self, text: str, now: float) -> list[Action]:
        if self.phase is Phase.CLOSED:
            return []
        out: list[dict[str, Any]] = []
        try:
            try:
                commands = p.decode_frame(text)
            except p.FrameError:
                raise _Disconnect(p.BAD_REQUEST) from None
            for command in commands:
                result = self._dispatch(command, now)
                if result is not None:
                    out.append(result)
        except _Disconnect as stop:
            return [*self._frame(out), *self._close(stop.code)]
        return self._frame(out)

    def receive_binary(self) -> list[Action]:
        """JSON mode takes text frames only."""
        return [] if self.phase is Phase.CLOSED else self._close(p.BAD_REQUEST)

    def push(self, pubs: list[Publication]) -> list[Action]:
        """Publications for this connection's channels, batched in one frame."""
        if self.phase is not Phase.CONNECTED:
            return []
        mine = [x for x in pubs if x.channel in self.channels]
        if self.world.channel_mode == "none":  # Centrifuge numbers only what history keeps
            return self._frame([p.push_pub(x.channel, {"data": x.data}) for x in mine])
        return self._frame([p.push_pub(x.channel, x.wire()) for x in mine])

    def unsubscribe(self, code: int, reason: str) -> list[Action]:
        """The server drops the user's channel: this connection hears nothing more of it."""
        if self.phase is not Phase.CONNECTED or self.user is None:
            return []
        self.channels.discard(self.user.channel)
        return self._frame([p.push_unsubscribe(self.user.channel, code, reason)])

    def subscribe(self) -> list[Action]:
        """The server subscribes this connection to the user's channel (a subscribe
        push), if it is not: publications from now on are pushed to it."""
        if self.phase is not Phase.CONNECTED or self.user is None:
            return []
        channel = self.user.channel
        if channel in self.channels:
            return []
        self.channels.add(channel)
        return self._frame([p.push_subscribe(channel, self._subscribe_result(channel, None))])

    def close(self, code: int) -> list[Action]:
        return [] if self.phase is Phase.CLOSED else self._close(code)

    # --- timers -------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        times = [t for t in (self._stale_at, self._next_ping, self._pong_due) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[Action]:
        if self.phase is Phase.CLOSED:
            return []
        if self._stale_at is not None and now >= self._stale_at:
            return self._close(p.STALE)
        if self._pong_due is not None and now >= self._pong_due:
            return self._close(p.NO_PONG)
        if self._next_ping is not None and now >= self._next_ping:
            interval = self.timing.ping_interval
            self._next_ping = now + interval
            if self.pings_enabled:
                self.pings_sent += 1
                if self._pong_due is None:
                    self._pong_due = now + self.timing.pong_timeout
                return [Send(p.encode([p.PING]))]
        return []

    # --- dispatch -----------------------------------------------------------------

    def _dispatch(self, command: p.Command, now: float) -> dict[str, Any] | None:
        if self.phase is Phase.CONNECTING:
            if command.method != "connect" or command.id == 0:
                raise _Disconnect(p.BAD_REQUEST)
            return self._connect(command, now)
        if command.id == 0:
            if command.method == "send":
                return None
            if self._pong_due is None:
                raise _Disconnect(p.BAD_REQUEST)  # unsolicited pong
            self._pong_due = None
            self.pongs_received += 1
            return None
        method = command.method
        if method is None or method == "connect" or method == "send":
            raise _Disconnect(p.BAD_REQUEST)
        if method == "history":
            return self._history(command)
        if method == "unsubscribe":
            self.channels.discard(str(command.body.get("channel", "")))
            return p.reply(command.id, method, {})
        if method == "sub_refresh" and not command.body.get("channel"):
            raise _Disconnect(p.BAD_REQUEST)
        code = {"subscribe": 103, "publish": 103, "rpc": 104}.get(method, 108)
        return p.error_reply(command.id, code)

    def _connect(self, command: p.Command, now: float) -> dict[str, Any]:
        data = command.body.get("data")
        if not isinstance(data, dict):
            raise _Disconnect(p.INVALID_TOKEN)
        user = self.world.authenticate(data.get("auth"))
        if user is None or str(data.get("project_id")) != str(self.world.project_id):
            raise _Disconnect(p.INVALID_TOKEN)
        claimed = data.get("user_external_id")
        if claimed is not None and str(claimed) != user.external_id:
            raise _Disconnect(p.INVALID_TOKEN)
        requested = command.body.get("subs")
        if requested is not None and not isinstance(requested, dict):
            raise _Disconnect(p.BAD_REQUEST)
        self.phase = Phase.CONNECTED
        self.user = user
        self._stale_at = None
        self.client_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        subs: dict[str, Any] = {}
        self.channels = set()
        if user.external_id not in self.world.withheld:
            self.channels.add(user.channel)
            subs[user.channel] = self._subscribe_result(
                user.channel, (requested or {}).get(user.channel)
            )
        result: dict[str, Any] = {"client": self.client_id, "subs": subs}
        interval = self.timing.ping_interval
        if interval > 0:
            result["ping"] = max(1, -int(-interval // 1))
            result["pong"] = True
            self._next_ping = now + self.rng.uniform(interval / 2, interval)
        return p.reply(command.id, "connect", result)

    def _subscribe_result(self, channel: str, request: object) -> dict[str, Any]:
        """As ``client.go`` ``subscribeCmd``: position and recovery only on a channel
        with recovery; ``was_recovering`` echoes the request whatever the channel."""
        stream = self.world.stream(channel)
        recover = request if isinstance(request, Mapping) and request.get("recover") else None
        if self.world.channel_mode != "recovery":
            return p.prune({"was_recovering": recover is not None})
        result: dict[str, Any] = {
            "recoverable": True,
            "positioned": True,
            "epoch": stream.epoch,
            "offset": stream.offset,
        }
        if recover is None:
            return p.prune(result)
        offset, epoch = recover.get("offset", 0), recover.get("epoch", "")
        if not _is_offset(offset) or not isinstance(epoch, str):
            raise _Disconnect(p.BAD_REQUEST)
        result["was_recovering"] = True
        missed = stream.since(offset) if epoch in ("", stream.epoch) else None
        if missed is not None and len(missed) <= self.world.history_limit:
            result["recovered"] = True
            result["offset"] = offset  # the requested offset, as centrifuge does
            result["publications"] = [pub.wire() for pub in missed]
        return p.prune(result)

    def _history(self, command: p.Command) -> dict[str, Any]:
        body = command.body
        channel = body.get("channel")
        if not isinstance(channel, str) or not channel:
            return p.error_reply(command.id, 107)
        if self.world.channel_mode == "none":  # Centrifugo asks this before permission
            return p.error_reply(command.id, 108)
        if channel not in self.channels:
            return p.error_reply(command.id, 103)
        stream = self.world.stream(channel)
        limit, reverse, since = body.get("limit", 0), body.get("reverse", False), body.get("since")
        if isinstance(limit, bool) or not isinstance(limit, int) or not isinstance(reverse, bool):
            return p.error_reply(command.id, 107)
        since_offset: int | None = None
        if since is not None:
            if not isinstance(since, dict):
                return p.error_reply(command.id, 107)
            since_offset, since_epoch = since.get("offset", 0), since.get("epoch", "")
            if not _is_offset(since_offset) or not isinstance(since_epoch, str):
                return p.error_reply(command.id, 107)
            if since_epoch and since_epoch != stream.epoch:
                return p.error_reply(command.id, 112)
            if reverse and since_offset == 0:
                return p.error_reply(command.id, 107)
        pubs = _select(stream, limit, self.world.history_limit, since_offset, reverse)
        result = {
            "publications": [x.wire() for x in pubs],
            "epoch": stream.epoch,
            "offset": stream.offset,
        }
        return p.reply(command.id, "history", p.prune(result))

    # --- helpers ------------------------------------------------------------------

    def _frame(self, objects: list[dict[str, Any]]) -> list[Action]:
        return [Send(p.encode(objects))] if objects else []

    def _close(self, code: int) -> list[Action]:
        self.phase = Phase.CLOSED
        self._stale_at = self._next_ping = self._pong_due = None
        return [Close(code, p.CLOSE_REASONS.get(code, ""))]


def _is_offset(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _select(
    stream: Stream, limit: int, cap: int, since: int | None, reverse: bool
) -> list[Publication]:
    if limit == 0:
        return []
    count = cap if limit < 0 or limit > cap else limit
    retained = list(stream.history)
    if reverse:
        picked = [x for x in reversed(retained) if since is None or x.offset < since]
    else:
        picked = [x for x in retained if since is None or x.offset > since]
    return picked[:count]
