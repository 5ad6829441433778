"""The sans-io Centrifuge v2 client for Xsolla's order-status WebSocket.

One engine per logical client (endpoint, project, user).  It outlives
connections: channel positions survive a reconnect and go back to the server
for recovery.  It performs no I/O and reads no clock; the driver feeds it
text frames and the time, and carries out what the returned events say (the
package docstring shows the driver loop).

Connection states::

    DISCONNECTED --connect()--> CONNECTING --connect reply--> CONNECTED
         ^                          |                             |
         +---- Reconnecting event --+---- loss, timeout, error ---+
                                    +---- Failed event ---> FAILED
    close(), from any state ---> CLOSED
"""

from __future__ import annotations

import enum
import random as _random
from collections.abc import Callable
from typing import Any

from orderfsm.core import Observation, Position
from orderfsm.interface import WEBSOCKET
from transports.centrifuge import codes, endings
from transports.centrifuge.backoff import full_jitter
from transports.centrifuge.channels import Channel, Phase, order_event, order_fields
from transports.centrifuge.config import EngineConfig
from transports.centrifuge.errors import CentrifugeProtocolError, EngineMisuse
from transports.centrifuge.events import (
    CaughtUp,
    Connected,
    Event,
    Gap,
    Ignored,
    Unsubscribed,
)
from transports.centrifuge.frames import (
    PING_LINE,
    PONG,
    UINT32_MAX,
    ConnectReply,
    ConnectResult,
    DisconnectPush,
    ErrorReply,
    HistoryReply,
    OtherPush,
    Ping,
    Publication,
    PubPush,
    ServerMessage,
    SubscribePush,
    UnsubscribePush,
    connect_command,
    decode_line,
    history_command,
    publication_line,
    split_frame,
)
from transports.centrifuge.timers import SuspensionGrace


class State(enum.Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    FAILED = "failed"
    CLOSED = "closed"


_LIVE_STATES = (State.CONNECTING, State.CONNECTED)


class CentrifugeEngine:
    """Text frames in, events out, commands out as text; time passed in."""

    def __init__(self, config: EngineConfig, *, random: Callable[[], float] = _random.random):
        self.config = config
        self._random = random
        self.state = State.DISCONNECTED
        self._channels: dict[str, Channel] = {}
        self._requests: dict[int, str] = {}
        self._outbox: list[str] = []
        self._last_id = 0
        self._connect_id: int | None = None
        self._connect_deadline: float | None = None
        self._pong = False
        self._ping_window: float | None = None
        """How long after a frame the server's next ping is overdue (its ping interval
        plus our slack); ``None`` when it does not ping or no slack is set."""
        self._ping_deadline: float | None = None
        self._grace = SuspensionGrace(config.suspension_grace)
        self._attempts = 0
        self._short_lived = 0
        """Caught-up connections in a row that were lost before ``stable_after``."""
        self._token_failures = 0
        self._caught_up = False
        self._up_since: float | None = None
        """When this connection first caught up (``None`` before, and between connections)."""

    # --- what the driver can look at --------------------------------------------

    @property
    def caught_up(self) -> bool:
        return self._caught_up

    def positions(self) -> dict[str, tuple[int, str]]:
        """Channel -> (offset, epoch) of the last publication delivered."""
        return {name: (ch.offset, ch.epoch) for name, ch in self._channels.items()}

    # --- entry points ----------------------------------------------------------------

    def connect(self, now: float, token: str) -> str:
        """Start an attempt: the ``connect`` command to send once the socket is open.

        Call it when you start opening the socket (the connect timeout runs
        from ``now``); if the socket cannot be opened, report
        :meth:`connection_lost`.  Recoverable channels go in ``subs``.
        """
        if self.state is not State.DISCONNECTED:
            raise EngineMisuse(f"connect() while {self.state.value}")
        if not isinstance(token, str):
            raise EngineMisuse(f"token must be a str, got {type(token).__name__}")
        self._reset_connection()
        self.state = State.CONNECTING
        self._connect_id = self._next_id()
        self._connect_deadline = now + self.config.connect_timeout
        data: dict[str, object] = {"auth": token, "project_id": self.config.project_id}
        if self.config.user_external_id is not None:
            data["user_external_id"] = self.config.user_external_id
        subs = {
            name: (ch.offset, ch.epoch) for name, ch in self._channels.items() if ch.recoverable
        }
        return connect_command(
            self._connect_id,
            data,
            subs=subs,
            name=self.config.client_name,
            version=self.config.client_version,
        )

    def receive(self, text: str | bytes, now: float) -> list[Event]:
        """One WebSocket frame; never raises for anything the server sends."""
        if text == PING_LINE and self.state is State.CONNECTED:
            # A lone ping, the other frame a live connection keeps getting (every
            # ping interval, per socket), answered without decoding it: what the
            # general way would do, since after any frame no channel is left
            # wanting a history read it was not sent.
            self._arm_ping(now)
            if self._pong:
                self._outbox.append(PONG)
            return []
        quick = self._live_publication(text, now)
        if quick is not None:
            return quick
        if self.state not in _LIVE_STATES:
            return []  # late data from a connection already given up: drop it
        if isinstance(text, bytes):
            try:
                text = text.decode()
            except UnicodeDecodeError as exc:
                return self._bad_protocol(CentrifugeProtocolError(f"not UTF-8: {exc}"), now)
        if self.state is State.CONNECTED:
            self._arm_ping(now)
        events: list[Event] = []
        lines = ([text] if text.strip() else []) if "\n" not in text else split_frame(text)
        for line in lines:
            try:
                message = decode_line(line)
            except CentrifugeProtocolError as exc:
                return events + self._bad_protocol(exc, now)
            events += self._dispatch(message, now)
            if self.state not in _LIVE_STATES:
                break
            events += self._after_message(now)
        return events

    def live_observation(self, text: str | bytes, now: float) -> Observation | None:
        """The frame nearly every one is, taken straight to its observation: a lone
        publication of a valid order status, the next in a live channel of a
        caught-up connection.  ``None`` for anything else, with nothing changed:
        :meth:`receive` reads it then, the general way.  What it changes (the
        channel's offset, a later ping timeout) puts nothing in
        :meth:`data_to_send` and brings no :meth:`next_deadline` sooner, so a
        driver need not ask after it."""
        # _lone_live_publication, inlined: this path is every status's
        if self.state is not State.CONNECTED or type(text) is not str or not self._caught_up:
            return None
        fields = publication_line(text) if "\n" not in text else None
        if fields is None:
            return None
        channel, offset, data = fields
        ch = self._channels.get(channel)
        if ch is None or ch.phase is not Phase.LIVE or offset != ch.offset + 1:
            return None
        told = order_fields(data)
        if told is None:
            return None
        ch.offset = offset
        window = self._ping_window  # _arm_ping, inlined: this path is every status's
        if window is not None:
            self._ping_deadline = now + window
        position = Position(offset=offset or None, epoch=ch.epoch)
        return Observation.trusted(told[0], told[1], WEBSOCKET, now, position, data)

    def _live_publication(self, text: str | bytes, now: float) -> list[Event] | None:
        """:meth:`receive`'s own fast path, for any lone publication on a live
        channel (the next one, one again, one skipping ahead).  ``None`` for
        anything else, which :meth:`receive` then reads the general way, with the
        same result."""
        live = self._lone_live_publication(text)
        if live is None:
            return None
        ch, offset, data = live
        self._arm_ping(now)
        if offset == ch.offset + 1:  # the next one, as nearly always: deliver it now
            ch.offset = offset
            return [order_event(ch.name, offset, data, ch.epoch, "push", now)]
        events = ch.on_push(Publication(offset, data), now)
        if ch.phase is not Phase.LIVE:  # it skipped ahead: read the history in between
            events += self._after_message(now)
        return events

    def _lone_live_publication(self, text: str | bytes) -> tuple[Channel, int, Any] | None:
        """The channel, offset and data of a frame that is one publication on a live
        channel of a caught-up connection (decided here only, for both fast paths)."""
        if self.state is not State.CONNECTED or type(text) is not str or not self._caught_up:
            return None
        fields = publication_line(text) if "\n" not in text else None
        if fields is None:
            return None
        channel, offset, data = fields
        ch = self._channels.get(channel)
        if ch is None or ch.phase is not Phase.LIVE:
            return None
        return ch, offset, data

    def data_to_send(self) -> list[str]:
        """Frames to write now, in order (pongs, history commands); empties the queue."""
        out, self._outbox = self._outbox, []
        return out

    def connection_lost(self, code: int | None, reason: str, now: float) -> list[Event]:
        """The socket closed (``code`` from the close frame, ``None`` if none) or
        could not be opened.  Ignored unless an attempt is under way, so it is
        harmless after the engine itself already ended the connection."""
        if self.state not in _LIVE_STATES:
            return []
        return self._closed(code, reason, now)

    def restart(self, reason: str, now: float) -> list[Event]:
        """End the live connection and reconnect at once, keeping channel positions.

        For a host that slept: its socket may be dead without either side having
        said so, and waiting for the missed ping takes up to ping + slack.  The
        backoff does not grow, since nothing failed.
        """
        if self.state not in _LIVE_STATES:
            return []
        self._reset_connection()
        self.state = State.DISCONNECTED
        return [endings.restart(reason).reconnecting(now, 0.0)]

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must run next, or ``None`` for never."""
        if self.state not in _LIVE_STATES:
            return None
        # Called after every frame, so one pass and no lists.  Postponing is
        # monotonic: postponing the earliest timeout is the earliest postponed one.
        timeout = self._ping_deadline
        connect = self._connect_deadline
        if connect is not None and (timeout is None or connect < timeout):
            timeout = connect
        retry: float | None = None
        for ch in self._channels.values():
            if ch.deadline is not None and (timeout is None or ch.deadline < timeout):
                timeout = ch.deadline
            if ch.retry_at is not None and (retry is None or ch.retry_at < retry):
                retry = ch.retry_at
        if timeout is not None:
            timeout = self._grace.postpone(timeout)
        if retry is None or (timeout is not None and timeout <= retry):
            return timeout
        return retry

    def handle_timer(self, now: float) -> list[Event]:
        """Run what is due at ``now``: timeouts (dead connection, unanswered
        commands) and history retries."""
        if self.state not in _LIVE_STATES:
            return []
        fired = self._grace.due(self._timeouts(), now)
        if fired is not None:
            ending = endings.timed_out(fired, self._connect_deadline, self._ping_deadline)
            return self._end(now, ending)
        for ch in self._channels.values():
            if ch.retry_at is not None and ch.retry_at <= now:
                ch.retry_at = None
        return self._after_message(now)

    def close(self) -> None:
        """The driver is done with this client: nothing more is sent or reported."""
        self._reset_connection()
        self.state = State.CLOSED

    # --- dispatch ------------------------------------------------------------------------

    def _dispatch(self, message: ServerMessage, now: float) -> list[Event]:
        if type(message) is PubPush:  # nearly every message: straight to its channel
            ch = self._channels.get(message.channel)
            if ch is not None and self.state is State.CONNECTED:
                return ch.on_push(message.pub, now)
        if isinstance(message, Ping):
            if self.state is State.CONNECTED and self._pong:
                self._outbox.append(PONG)
            return []
        if isinstance(message, DisconnectPush):
            return self._closed(message.code, message.reason, now)
        if isinstance(message, PubPush | SubscribePush | UnsubscribePush | OtherPush):
            return self._push(message, now)
        if message.id == self._connect_id:
            return self._connect_reply(message, now)
        name = self._requests.pop(message.id, None)
        ch = self._channels.get(name) if name is not None else None
        if ch is None or ch.request_id != message.id:
            return [Ignored(now, f"reply to unknown or abandoned command {message.id}")]
        if isinstance(message, ErrorReply):
            outcome = endings.history_error(ch, message, now, self._delay)
            return outcome if isinstance(outcome, list) else self._end(now, outcome)
        if isinstance(message, HistoryReply):
            return ch.on_history(message.result, now)
        return self._bad_protocol(CentrifugeProtocolError("history reply without a result"), now)

    def _push(
        self, push: PubPush | SubscribePush | UnsubscribePush | OtherPush, now: float
    ) -> list[Event]:
        if isinstance(push, OtherPush) or self.state is not State.CONNECTED:
            return [Ignored(now, f"{_kind(push)} push", push.channel)]
        name = push.channel
        if isinstance(push, SubscribePush) and name:
            known = name in self._channels
            new = self._channels.setdefault(name, Channel(name))
            return new.on_subscribed(push.result, now, known=known)
        ch = self._channels.get(name)
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
            return self._drop(ch, push.code, push.reason, now)
        return []

    def _connect_reply(self, reply: ServerMessage, now: float) -> list[Event]:
        self._connect_id = self._connect_deadline = None
        if isinstance(reply, ErrorReply):
            ending, self._token_failures = endings.connect_error(
                reply, self._token_failures, self.config.token_refreshes
            )
            return self._end(now, ending)
        if isinstance(reply, ConnectReply):
            return self._connected(reply.result, now)
        return self._bad_protocol(CentrifugeProtocolError("connect reply without a result"), now)

    def _connected(self, result: ConnectResult, now: float) -> list[Event]:
        self.state = State.CONNECTED
        self._attempts = self._token_failures = 0
        self._pong = result.pong
        slack = self.config.max_server_ping_delay
        self._ping_window = result.ping + slack if result.ping and slack > 0 else None
        self._arm_ping(now)
        events: list[Event] = [
            Connected(
                now, result.client, result.version, result.ping, result.pong, tuple(result.subs)
            )
        ]
        for ch in [ch for name, ch in self._channels.items() if name not in result.subs]:
            events += self._drop(ch, 0, "not in the connect reply", now, restated=True)
        for name, sub in result.subs.items():
            known = name in self._channels
            ch = self._channels.setdefault(name, Channel(name))
            events += ch.on_subscribed(sub, now, known=known)
        return events

    def _drop(
        self, ch: Channel, code: int, reason: str, now: float, *, restated: bool = False
    ) -> list[Event]:
        """The server unsubscribed us: hand out what was held back, then forget the channel."""
        events = ch.go_live(now)
        del self._channels[ch.name]
        self._requests = {i: n for i, n in self._requests.items() if n != ch.name}
        return [*events, Unsubscribed(now, ch.name, code, reason, restated)]

    def _after_message(self, now: float) -> list[Event]:
        """Send the history reads channels ask for; report when all are live."""
        if self.state is not State.CONNECTED:
            return []
        live = True
        for ch in self._channels.values():
            if ch.phase is Phase.LIVE:
                continue
            live = False
            if ch.wants_history:
                ch.request_id = self._next_id()
                ch.deadline = now + self.config.request_timeout
                self._requests[ch.request_id] = ch.name
                offset, epoch = ch.since()
                self._outbox.append(
                    history_command(ch.request_id, ch.name, since_offset=offset, since_epoch=epoch)
                )
        if live and not self._caught_up:
            self._caught_up = True
            if self._up_since is None:
                self._up_since = now
            return [CaughtUp(now)]
        self._caught_up = live
        return []

    # --- errors and endings ---------------------------------------------------------------

    def _bad_protocol(self, exc: CentrifugeProtocolError, now: float) -> list[Event]:
        return self._end(now, endings.bad_protocol(exc))

    def _closed(self, code: int | None, reason: str, now: float) -> list[Event]:
        """3014 also voids every channel position: report each as a gap and forget it."""
        events: list[Event] = []
        if code == codes.STATE_INVALIDATED:
            events = [Gap(now, name, "state invalidated (3014)") for name in self._channels]
            self._channels.clear()
        return events + self._end(now, endings.closed(code, reason))

    def _end(self, now: float, ending: endings.Ending) -> list[Event]:
        """Tear the connection down first, then say so (centrifuge-js #391)."""
        up_since = self._up_since
        self._reset_connection()
        if not ending.reconnect:
            self.state = State.FAILED
            return [ending.failed(now)]
        self.state = State.DISCONNECTED
        config = self.config
        sample = self._sample()
        if up_since is None:
            delay = self._backoff(self._attempts, config.min_reconnect_delay, sample)
        elif now - up_since >= config.stable_after:
            # A connection that worked for a while dropped: most likely a passing
            # fault, and an order's news waits for the reconnect, so the first try
            # is at once (within a little jitter, as SignalR's first retry).
            self._short_lived = 0
            delay = sample * config.first_reconnect_delay
        else:
            # Caught up, then lost soon (a server shedding load, a proxy cycling):
            # never sooner than first_reconnect_delay, and doubling while it goes
            # on, so an accept-then-drop server cannot make a fast loop
            # (centrifuge-js #408), yet one extra close does not cost a full backoff.
            delay = self._backoff(self._short_lived, config.first_reconnect_delay, sample)
            self._short_lived += 1
        self._attempts += 1
        return [ending.reconnecting(now, delay)]

    # --- helpers --------------------------------------------------------------------------

    def _reset_connection(self) -> None:
        for ch in self._channels.values():
            ch.abandon()
        self._requests.clear()
        self._outbox.clear()
        self._connect_id = self._connect_deadline = self._ping_deadline = None
        self._ping_window, self._pong = None, False
        self._grace.reset()
        self._caught_up = False
        self._up_since = None

    def _timeouts(self) -> list[float]:
        deadlines = [self._connect_deadline, self._ping_deadline]
        deadlines += [ch.deadline for ch in self._channels.values()]
        return [t for t in deadlines if t is not None]

    def _arm_ping(self, now: float) -> None:
        """A frame came: the server's next ping is due within the window from now."""
        window = self._ping_window
        if window is not None:
            self._ping_deadline = now + window

    def _delay(self, attempt: int) -> float:
        return self._backoff(attempt, self.config.min_reconnect_delay, self._sample())

    def _backoff(self, attempt: int, min_delay: float, sample: float) -> float:
        return full_jitter(
            attempt, sample, min_delay=min_delay, max_delay=self.config.max_reconnect_delay
        )

    def _sample(self) -> float:
        return min(max(self._random(), 0.0), 1.0)

    def _next_id(self) -> int:
        self._last_id = self._last_id % UINT32_MAX + 1
        return self._last_id


def _kind(push: PubPush | SubscribePush | UnsubscribePush | OtherPush) -> str:
    if isinstance(push, OtherPush):
        return push.kind or "empty"
    return {PubPush: "pub", SubscribePush: "subscribe", UnsubscribePush: "unsubscribe"}[type(push)]
