"""One user's Centrifuge client over real sockets: the anyio driver around the engine.

A :class:`Connection` runs one :class:`~transports.centrifuge.engine.CentrifugeEngine`
(one per endpoint, project and user, kept across reconnects so channel
positions survive and go back to the server for recovery) and hands what it
learns to its :class:`~transports.centrifuge.subscribers.Subscribers`, which
turn it into calls on the sinks of the orders attached to it; what the events
mean for the connection's health is :mod:`~transports.centrifuge.health`'s.

Each connection attempt is one task group with two tasks:

* the reader receives frames, feeds them to the engine, delivers the events
  synchronously and writes what the engine wants sent (pongs, history reads);
* the timer sleeps until the engine's next deadline (connect, history and
  dead-connection timeouts, history retries) and calls ``handle_timer``.

The reader never runs under a per-frame cancel scope: a receive is cancelled
only when the attempt is abandoned, so no frame can be lost to a timeout
racing its arrival, and the hot path allocates no timer per message.  The
reader tells the timer when a deadline moved earlier by adjusting the timer's
scope.  When the engine says the connection is over, the attempt's scope is
cancelled and the socket is closed (shielded, bounded) before the next one
opens: exactly one live socket per connection.
"""

from __future__ import annotations

import functools
import logging
import random as _random
from collections.abc import Callable, Hashable

import anyio
import attrs

from orderfsm.errors import OrderFsmError, TokenRejected, TransportError
from orderfsm.interface import (
    WEBSOCKET,
    Health,
    HealthReport,
    ObservationSink,
    TokenProvider,
    not_a_token,
    token_provider,
)
from transports.backend import loop_clock
from transports.centrifuge.backoff import full_jitter
from transports.centrifuge.counters import ConnectionCounters
from transports.centrifuge.engine import CentrifugeEngine
from transports.centrifuge.events import Event, Failed, Reconnecting
from transports.centrifuge.health import ConnectionHealth
from transports.centrifuge.socket import SocketClosed, SocketFactory, WebSocket
from transports.centrifuge.subscribers import (
    Attachment as Attachment,  # re-exported: the pool and the package import it from here
)
from transports.centrifuge.subscribers import Subscribers
from transports.centrifuge.timers import wake_at

logger = logging.getLogger("orderfsm.websocket")

TOKEN_ATTEMPTS = 5
"""Token provider failures in a row before the connection gives up."""


class TokenUnavailable(TransportError):
    """The token provider kept failing (raised, timed out, or returned no string);
    ``__cause__`` is the last failure."""


class DriverCrashed(TransportError):
    """The connection driver hit an unexpected error and stopped (a bug: please
    report it); ``__cause__`` is the error.  Other connections go on."""


@attrs.frozen
class ConnectionInfo:
    """A snapshot of one connection, for tests, benchmarks and diagnostics."""

    key: tuple[Hashable, ...]
    health: Health
    reason: str
    state: str
    """The engine's state: connecting, connected, disconnected (between attempts), ..."""
    orders: int
    attachments: int
    sockets_opened: int
    """Sockets successfully opened so far (1 + the reconnects that got a socket)."""
    generation: int
    """Connection attempts so far."""


class Connection:
    """One key's engine, its subscribers and the task that drives them."""

    def __init__(
        self,
        key: tuple[Hashable, ...],
        engine: CentrifugeEngine,
        token: TokenProvider | str,
        sockets: SocketFactory,
        *,
        on_idle: Callable[[Connection, bool], None],
        on_closed: Callable[[Connection], None],
        label: str = "",
        after: anyio.Event | None = None,
        random: Callable[[], float] = _random.random,
        counters: ConnectionCounters | None = None,
    ) -> None:
        self.key = key
        self.label = label or f"user {engine.config.user_external_id}"
        """For logs; never the token."""
        self.engine = engine
        self.url = engine.config.endpoint
        self._token = token_provider(token)
        self._sockets = sockets
        self._on_idle = on_idle
        self._on_closed = on_closed
        self._after = after
        self._random = random
        self._counters = counters if counters is not None else ConnectionCounters()
        self.sockets_opened = 0
        self.generation = 0
        self.closed = anyio.Event()
        self._subscribers = Subscribers(functools.partial(on_idle, self))
        self._status = ConnectionHealth(
            engine, self._subscribers, self._counters, self.label, self._over
        )
        self._scope = anyio.CancelScope()
        self._attempt_scope: anyio.CancelScope | None = None
        self._timer: anyio.CancelScope | None = None
        self._ws: WebSocket | None = None
        # Uncontended (nearly always: the timer task rarely sends), taken without
        # the two checkpoints a plain anyio Lock makes: each was a trip through
        # the event loop for every pong.
        self._send_lock = anyio.Lock(fast_acquire=True)
        self._end: Reconnecting | Failed | None = None
        self._backoff: anyio.CancelScope | None = None

    @property
    def health(self) -> Health:
        return self._status.health

    @property
    def reason(self) -> str:
        return self._status.reason

    @property
    def error(self) -> OrderFsmError | None:
        return self._status.error

    # --- what the pool calls ------------------------------------------------------

    def attach(self, order_id: int, sink: ObservationSink) -> Attachment:
        """Report the current health to ``sink`` and replay what was seen for the order."""
        report = HealthReport(WEBSOCKET, self.health, anyio.current_time(), self.reason, self.error)
        return self._subscribers.attach(order_id, sink, report)

    def release(self, attachment: Attachment, linger: bool = True) -> None:
        self._subscribers.release(attachment, linger)

    def stop(self) -> None:
        """Close on purpose: the socket is closed gracefully (shielded), sinks
        still attached get STOPPED."""
        self._scope.cancel()

    def reconnect_now(self, reason: str) -> None:
        """Drop the socket and connect again at once, or cut a backoff wait short."""
        events = self.engine.restart(reason, anyio.current_time())
        if events:
            self._handle(events)
        elif self._backoff is not None:
            self._backoff.cancel()

    def info(self) -> ConnectionInfo:
        return ConnectionInfo(
            key=self.key,
            health=self.health,
            reason=self.reason,
            state=self.engine.state.value,
            orders=self._subscribers.order_count,
            attachments=self._subscribers.attachment_count,
            sockets_opened=self.sockets_opened,
            generation=self.generation,
        )

    async def run(self) -> None:
        """The connection's one long-lived task; returns when stopped or failed."""
        try:
            with self._scope:
                if self._after is not None:
                    await self._after.wait()  # the previous connection of this key is closing
                await self._serve()
        except Exception as exc:
            logger.exception(
                "websocket %s: the driver crashed",
                self.label,
                extra={"event": "websocket.crashed"},
            )
            error = DriverCrashed(f"websocket driver crashed: {exc!r}")
            error.__cause__ = exc
            self._status.set(Health.FAILED, str(error), error)
        finally:
            self.engine.close()
            self._ws = self._timer = self._attempt_scope = None
            if self.health is not Health.FAILED:
                self._status.set(Health.STOPPED, "closed")
            self._counters.moved(self.health, None)
            self.closed.set()
            self._on_closed(self)

    # --- the connection loop --------------------------------------------------------

    async def _serve(self) -> None:
        engine = self.engine
        while True:
            token = await self._fetch_token()
            if token is None:
                return
            first = engine.connect(anyio.current_time(), token)
            end = await self._attempt(first)
            if isinstance(end, Failed):
                return
            with anyio.CancelScope() as self._backoff:
                await anyio.sleep_until(end.reconnect_at)
            self._backoff = None

    async def _fetch_token(self) -> str | None:
        """Ask the provider for a token (every attempt: it may refresh); back off on failures."""
        config = self.engine.config
        failures = 0
        while True:
            try:
                with anyio.fail_after(config.request_timeout):
                    token = await self._token()
                if isinstance(token, str) and token:
                    return token
                raise TypeError(not_a_token(token))
            except TokenRejected as exc:
                self._counters.gave_up()
                self._status.set(Health.FAILED, f"token rejected by the provider: {exc}", exc)
                return None
            except Exception as exc:
                failures += 1
                if failures >= TOKEN_ATTEMPTS:
                    error = TokenUnavailable(f"token provider failed {failures} times: {exc!r}")
                    error.__cause__ = exc
                    self._counters.gave_up()
                    self._status.set(Health.FAILED, str(error), error)
                    return None
                delay = full_jitter(
                    failures - 1,
                    min(max(self._random(), 0.0), 1.0),
                    min_delay=config.min_reconnect_delay,
                    max_delay=config.max_reconnect_delay,
                )
                error = TokenUnavailable(f"token provider failed: {exc!r}")
                self._status.set(Health.DEGRADED, f"{error}; retrying in {delay:.2f} s", error)
                await anyio.sleep(delay)

    async def _attempt(self, first: str) -> Reconnecting | Failed:
        """One socket, from opening to the engine's verdict."""
        self._end = None
        self.generation += 1
        self._status.log(logging.DEBUG, "websocket.connecting", f"attempt {self.generation}")
        try:
            async with anyio.create_task_group() as tg:
                self._attempt_scope = tg.cancel_scope
                tg.start_soon(self._run_timer)
                await self._run_socket(first)
                tg.cancel_scope.cancel()
        finally:
            self._attempt_scope = self._timer = None
        if self._end is None:
            raise RuntimeError("the socket ended but the engine gave no verdict")
        return self._end

    async def _run_socket(self, first: str) -> None:
        timeout = self.engine.config.connect_timeout
        try:
            async with self._sockets.connect(self.url, open_timeout=timeout) as ws:
                self.sockets_opened += 1
                self._counters.sockets_opened += 1
                self._ws = ws
                try:
                    await self._read(ws, first)
                except SocketClosed as exc:
                    self._lost(exc)
                finally:
                    self._ws = None
        except SocketClosed as exc:
            self._lost(exc)

    async def _read(self, ws: WebSocket, first: str) -> None:
        engine = self.engine
        live = engine.live_observation
        deliver = self._subscribers.deliver
        status = self._status
        clock = loop_clock()
        receive, data = ws.receive, ws.data
        await ws.send(first)
        while self._end is None:
            frame = data(await receive())
            now = clock()
            observation = live(frame, now)
            if observation is not None:  # nearly every frame: nothing to send, no timer
                deliver(observation)
                # Not kept while the next frame is awaited (seconds, for a player):
                # the record, its position and payload would go the collector's way,
                # a thousand sockets' worth of them walked by every young collection.
                observation = None
                if status.health is not Health.HEALTHY:
                    status.healthy_again()
                continue
            frames = self._receive(frame, now)
            if frames:
                await self._send(frames)

    def _receive(self, frame: str | bytes, now: float) -> list[str]:
        """Any frame but a lone live publication, read the general way; returns the
        frames to send.  Its events end here: kept in ``_read``'s frame while it
        waits, a connect reply's would pin every recovered publication of the
        socket (and its payload) until the next frame."""
        engine = self.engine
        events = engine.receive(frame, now)
        if events:  # first: the application hears of a status before any bookkeeping
            self._handle(events)
        timer = self._timer
        if timer is not None:
            deadline = engine.next_deadline()
            if deadline is not None and deadline < timer.deadline:
                timer.deadline = wake_at(deadline, now)
        return engine.data_to_send()

    async def _run_timer(self) -> None:
        engine = self.engine
        while self._end is None:
            wake = wake_at(engine.next_deadline(), anyio.current_time())
            with anyio.CancelScope(deadline=wake) as timer:
                self._timer = timer
                await anyio.sleep_forever()
            self._timer = None
            events = engine.handle_timer(anyio.current_time())
            if events:
                self._handle(events)
            frames = engine.data_to_send()
            if frames:
                try:
                    await self._send(frames)
                except SocketClosed as exc:
                    self._lost(exc)

    async def _send(self, frames: list[str]) -> None:
        ws = self._ws
        if ws is None:
            return  # no socket yet or any more: the engine has ended this attempt
        async with self._send_lock:
            for frame in frames:
                await ws.send(frame)

    def _lost(self, exc: SocketClosed) -> None:
        events = self.engine.connection_lost(exc.code, exc.reason, anyio.current_time())
        if events:
            self._handle(events)

    # --- events -> subscribers ---------------------------------------------------------

    def _handle(self, events: list[Event]) -> None:
        self._status.handle(events)

    def _over(self, end: Reconnecting | Failed) -> None:
        self._end = end
        if self._attempt_scope is not None:
            self._attempt_scope.cancel()
