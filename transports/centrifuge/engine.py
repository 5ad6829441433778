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
from transports.centrifuge.backoff import ReconnectDelays
from transports.centrifuge.channels import Channel, Phase, order_event, order_fields
from transports.centrifuge.config import EngineConfig
from transports.centrifuge.errors import CentrifugeProtocolError, EngineMisuse
from transports.centrifuge.events import CaughtUp, Connected, Event, Ignored, Unsubscribed
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
    publication_line,
    split_frame,
)
from transports.centrifuge.subscriptions import Subscriptions
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
        self.state = State.DISCONNECTED
        self._subs = Subscriptions()
        self._channels = self._subs.channels
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
        self._delays = ReconnectDelays(config, random)
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
        return self._subs.positions()

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
        return connect_command(
            self._connect_id,
            data,
            subs=self._subs.recoverable(),
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
        return self._subs.lone_live_publication(text)

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
        """End the live connection and reconnect soon (:meth:`ReconnectDelays.soon`),
        keeping channel positions.

        For a host that slept: its socket may be dead without either side having
        said so, and waiting for the missed ping takes up to ping + slack.  The
        backoff does not grow, since nothing failed.
        """
        if self.state not in _LIVE_STATES:
            return []
        self._reset_connection()
        self.state = State.DISCONNECTED
        return [endings.restart(reason).reconnecting(now, self._delays.soon())]

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
        timeout, retry = self._subs.earliest(timeout)
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
        self._subs.retries_due(now)
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
            events = self._subs.push(message, now, connected=self.state is State.CONNECTED)
            dropped = events and isinstance(events[-1], Unsubscribed)
            if (
                dropped
                and isinstance(message, UnsubscribePush)
                and codes.resubscribes(message.code)
            ):
                # Only a new connection subscribes a server-side channel again: through
                # the reconnect delays, as any connection that ended, so a server that
                # asks on every connection cannot make a fast loop (centrifuge-js #408).
                events += self._end(now, endings.resubscribe(message.code, message.reason))
            return events
        if message.id == self._connect_id:
            return self._connect_reply(message, now)
        ch = self._subs.answered(message.id)
        if ch is None:
            return [Ignored(now, f"reply to unknown or abandoned command {message.id}")]
        if isinstance(message, ErrorReply):
            outcome, self._token_failures = endings.history_error(
                ch, message, now, self._delays.retry, self._token_failures,
                self.config.token_refreshes,
            )  # fmt: skip
            return outcome if isinstance(outcome, list) else self._end(now, outcome)
        if isinstance(message, HistoryReply):
            return ch.on_history(message.result, now)
        return self._bad_protocol(CentrifugeProtocolError("history reply without a result"), now)

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
        self._delays.connected()
        self._pong = result.pong
        slack = self.config.max_server_ping_delay
        self._ping_window = result.ping + slack if result.ping and slack > 0 else None
        self._arm_ping(now)
        events: list[Event] = [
            Connected(
                now, result.client, result.version, result.ping, result.pong, tuple(result.subs)
            )
        ]
        return events + self._subs.restate(result.subs, now)

    def _after_message(self, now: float) -> list[Event]:
        """Send the history reads channels ask for; report when all are live."""
        if self.state is not State.CONNECTED:
            return []
        live = self._subs.read_histories(
            now, self.config.request_timeout, self._next_id, self._outbox
        )
        if live and not self._caught_up:
            self._caught_up = True
            self._token_failures = 0  # the token worked for everything: 109s in a row end
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
            events = self._subs.invalidate("state invalidated (3014)", now)
        return events + self._end(now, endings.closed(code, reason))

    def _end(self, now: float, ending: endings.Ending) -> list[Event]:
        """Tear the connection down first, then say so (centrifuge-js #391)."""
        up_since = self._up_since
        self._reset_connection()
        if not ending.reconnect:
            self.state = State.FAILED
            return [ending.failed(now)]
        self.state = State.DISCONNECTED
        return [ending.reconnecting(now, self._delays.after(up_since, now))]

    # --- helpers --------------------------------------------------------------------------

    def _reset_connection(self) -> None:
        self._subs.abandon()
        self._outbox.clear()
        self._connect_id = self._connect_deadline = self._ping_deadline = None
        self._ping_window, self._pong = None, False
        self._grace.reset()
        self._caught_up = False
        self._up_since = None

    def _timeouts(self) -> list[float]:
        deadlines = [t for t in (self._connect_deadline, self._ping_deadline) if t is not None]
        return deadlines + self._subs.deadlines()

    def _arm_ping(self, now: float) -> None:
        """A frame came: the server's next ping is due within the window from now."""
        window = self._ping_window
        if window is not None:
            self._ping_deadline = now + window

    def _next_id(self) -> int:
        self._last_id = self._last_id % UINT32_MAX + 1
        return self._last_id
