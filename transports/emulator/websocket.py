"""The aiohttp shell around :class:`~transports.emulator.session.Session`.

Each socket gets three anyio tasks: a reader that feeds frames to the session,
a timer that wakes at the session's deadline, and a single writer that drains
a bounded outbox (one writer, so frames never interleave).  Control requests
(publish, close, stall, drop) act through :class:`Hub`.  This runs only on
the emulator's own asyncio loop, where aiohttp lives.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable
from typing import Any

import anyio
import attrs
from aiohttp import WSMsgType, web
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from transports.emulator import protocol as p
from transports.emulator.faults import DeliveryFaults
from transports.emulator.records import Publication
from transports.emulator.session import Action, Close, Phase, Send, Session, Timing
from transports.emulator.state import World

OUTBOX_SIZE = 1024
"""Frames queued for one client before it is closed as ``3008 slow``."""
CLOSE_HANDSHAKE_TIMEOUT = 2.0
MAX_MESSAGE_SIZE = 65536
"""Centrifugo's default client message limit; aiohttp closes bigger frames with 1009."""
PEER_CHECK_INTERVAL = 0.25
"""How often a silent (stalled or suspended) socket looks whether the client hung up."""


@attrs.frozen
class Drop:
    """Abort the TCP connection: no close frame."""


@attrs.frozen
class Stall:
    """Go silent without closing: read nothing, write nothing, ping nobody.

    ``suspended``: the silence is a host suspend (``Hub.suspend``), which the
    connection's state shows as ``suspended`` rather than ``stalled``.
    """

    seconds: float | None
    suspended: bool = False


Final = Close | Drop | Stall


@attrs.define(eq=False)
class Connection:
    conn_id: int
    session: Session
    opened_at: float
    outbox: MemoryObjectSendStream[Action]
    scope: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)
    wake: anyio.Event = attrs.field(factory=anyio.Event)
    final: Final | None = None
    stalled: bool = False
    suspended: bool = False
    closed_at: float | None = None
    close_code: int | None = None
    close_reason: str = ""

    @property
    def user(self) -> str | None:
        return None if self.session.user is None else self.session.user.external_id

    @property
    def state(self) -> str:
        if self.closed_at is not None:
            return "closed"
        if self.stalled:
            return "suspended" if self.suspended else "stalled"
        return self.session.phase.value

    def emit(self, actions: Iterable[Action]) -> None:
        if self.final is not None:
            return
        for action in actions:
            try:
                self.outbox.send_nowait(action)
            except anyio.WouldBlock:
                self.finish(Close(3008, "slow"))
                return
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
        self.wake.set()

    def finish(self, final: Final) -> None:
        if self.final is None:
            self.final = final
            self.scope.cancel()

    def to_json(self) -> dict[str, Any]:
        return {
            "conn_id": self.conn_id,
            "user": self.user,
            "client": self.session.client_id,
            "state": self.state,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "close_code": self.close_code,
            "close_reason": self.close_reason,
            "pings_sent": self.session.pings_sent,
            "pongs_received": self.session.pongs_received,
        }


class Hub:
    """All WebSocket connections, and the faults that act on them."""

    def __init__(self, world: World, timing: Timing, rng: random.Random) -> None:
        self.world = world
        self.timing = timing
        self.rng = rng
        self.connections: list[Connection] = []
        self._open: dict[int, Connection] = {}
        self._by_user: dict[str, list[Connection]] = {}
        """Every connection that named its user, by user: a publication or a control
        query looks up one user's sockets without scanning every socket ever opened
        (a long soak opens hundreds of thousands)."""
        self.connects = 0
        self.pings_off_for_all = False
        self.pings_off: set[str] = set()
        self.suspended: set[str] = set()
        """Users whose host sleeps: their sockets, open or opened later, are black holes."""
        self.delivery: dict[str, DeliveryFaults] = {}
        self.shutting_down = anyio.Event()
        self._live = 0
        self._all_gone = anyio.Event()
        self._all_gone.set()

    # --- queries --------------------------------------------------------------

    def of_user(self, user: str) -> list[Connection]:
        return list(self._by_user.get(user, ()))

    def open_for(self, user: str) -> list[Connection]:
        return [c for c in self._by_user.get(user, ()) if c.closed_at is None]

    def connected(self, user: str) -> list[Connection]:
        return [
            c
            for c in self.open_for(user)
            if not c.stalled and c.final is None and c.session.phase is Phase.CONNECTED
        ]

    def open_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for c in self._open.values():
            if c.user is not None:
                counts[c.user] = counts.get(c.user, 0) + 1
        return counts

    # --- control --------------------------------------------------------------

    def publish(self, user: str, data: Any) -> Publication:
        pub = self.world.publish(user, data, time.time())
        faults = self.delivery.get(user)
        batch = [pub] if faults is None else faults.route(pub, self.rng)
        if batch:
            for conn in self.connected(user):
                conn.emit(conn.session.push(batch))
        return pub

    def close_user(self, user: str, code: int, reason: str) -> int:
        conns = self.connected(user)
        for conn in conns:
            conn.session.close(code)
            conn.finish(Close(code, reason))
        return len(conns)

    def unsubscribe_user(self, user: str, code: int, reason: str) -> int:
        conns = self.connected(user)
        for conn in conns:
            conn.emit(conn.session.unsubscribe(code, reason))
        return len(conns)

    def withhold_channel(self, user: str) -> None:
        """Connect replies from now on name no channel for ``user`` (open sockets keep theirs)."""
        self.world.user(user)
        self.world.withheld.add(user)

    def give_channel(self, user: str) -> int:
        """Connect replies name the channel again, and open sockets without it are
        subscribed by a push; returns how many were."""
        self.world.user(user)
        self.world.withheld.discard(user)
        conns = self.connected(user)
        given = 0
        for conn in conns:
            actions = conn.session.subscribe()
            given += bool(actions)
            conn.emit(actions)
        return given

    def drop_user(self, user: str) -> int:
        conns = [c for c in self.open_for(user) if c.final is None]
        for conn in conns:
            conn.finish(Drop())
        return len(conns)

    def stall_user(self, user: str, seconds: float | None) -> int:
        conns = self.connected(user)
        for conn in conns:
            conn.finish(Stall(seconds))
        return len(conns)

    def suspend(self, user: str) -> int:
        """The user's host goes to sleep: every socket of theirs goes silent, unclosed.

        Reuses the stall: a socket that connects while the user is suspended is
        stalled before its connect reply is sent.
        """
        self.world.user(user)
        self.suspended.add(user)
        conns = self.connected(user)
        for conn in conns:
            conn.finish(Stall(None, suspended=True))
        return len(conns)

    def resume(self, user: str) -> None:
        """Sockets opened from now on work; the ones already silenced stay silent."""
        self.world.user(user)
        self.suspended.discard(user)

    def set_pings(self, enabled: bool, user: str | None) -> None:
        if user is None:
            self.pings_off_for_all = not enabled
            self.pings_off.clear()
        elif enabled:
            self.pings_off.discard(user)
        else:
            self.pings_off.add(user)
        for conn in self._open.values():
            self._apply_pings(conn)

    def faults_for(self, user: str) -> DeliveryFaults:
        self.world.user(user)
        return self.delivery.setdefault(user, DeliveryFaults())

    def _apply_pings(self, conn: Connection) -> None:
        off = self.pings_off_for_all or (conn.user is not None and conn.user in self.pings_off)
        conn.session.pings_enabled = not off
        conn.wake.set()

    async def shutdown(self, grace: float) -> None:
        """Close every socket with 3001 and wait (bounded) for their handlers to end."""
        self.shutting_down.set()
        for conn in list(self._open.values()):
            if conn.closed_at is None:
                conn.session.close(p.SHUTDOWN)
                conn.finish(Close(p.SHUTDOWN, "shutdown"))
        with anyio.move_on_after(grace):
            await self._all_gone.wait()

    # --- the socket handler -----------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            protocols=("centrifuge-json",),
            max_msg_size=MAX_MESSAGE_SIZE,
            timeout=CLOSE_HANDSHAKE_TIMEOUT,
            compress=False,
        )
        try:
            await ws.prepare(request)
        except ConnectionResetError:  # the client gave up during the handshake
            return ws
        transport = request.transport
        send, receive = anyio.create_memory_object_stream[Action](OUTBOX_SIZE)
        session = Session(self.world, self.timing, self.rng, anyio.current_time())
        conn = Connection(len(self.connections) + 1, session, time.time(), send)
        self.connections.append(conn)
        self._open[conn.conn_id] = conn
        self._live += 1
        self._all_gone = anyio.Event() if self._live == 1 else self._all_gone
        self._apply_pings(conn)
        if self.shutting_down.is_set():
            conn.finish(Close(p.SHUTDOWN, "shutdown"))
        try:
            with conn.scope, send, receive:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._timers, conn)
                    tg.start_soon(self._writer, conn, ws, receive)
                    await self._reader(conn, ws)
                    tg.cancel_scope.cancel()
        finally:
            try:
                with anyio.CancelScope(shield=True):
                    await self._finish(conn, ws, transport)
            finally:
                self._open.pop(conn.conn_id, None)
                self._live -= 1
                if self._live == 0:
                    self._all_gone.set()
        return ws

    async def _reader(self, conn: Connection, ws: web.WebSocketResponse) -> None:
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                was = conn.session.phase
                actions = conn.session.receive_text(msg.data, anyio.current_time())
                if was is Phase.CONNECTING and conn.user is not None:
                    mine = self._by_user.setdefault(conn.user, [])
                    if conn not in mine:
                        mine.append(conn)
                if was is Phase.CONNECTING and conn.session.phase is Phase.CONNECTED:
                    if conn.user in self.suspended:
                        conn.finish(Stall(None, suspended=True))  # the reply is never sent
                        return
                    self.connects += 1
                    self._apply_pings(conn)
                conn.emit(actions)
            elif msg.type is WSMsgType.BINARY:
                conn.emit(conn.session.receive_binary())
            else:  # CLOSE, CLOSING, CLOSED, ERROR: the peer is gone or broke the framing
                if msg.type is WSMsgType.CLOSE:
                    conn.close_code = ws.close_code
                    conn.close_reason = str(msg.extra or "")
                elif msg.type is WSMsgType.ERROR and ws.close_code is not None:
                    conn.close_code = ws.close_code
                return

    async def _timers(self, conn: Connection) -> None:
        while True:
            deadline = conn.session.next_deadline()
            delay = math.inf if deadline is None else deadline - anyio.current_time()
            with anyio.move_on_after(max(delay, 0.0)):
                await conn.wake.wait()
            conn.emit(conn.session.handle_timer(anyio.current_time()))
            # Reset after emit, which sets the event: the timer's own output must not
            # wake it again at once (that made every idle socket spin the loop).
            conn.wake = anyio.Event()

    async def _writer(
        self,
        conn: Connection,
        ws: web.WebSocketResponse,
        outbox: MemoryObjectReceiveStream[Action],
    ) -> None:
        async for action in outbox:
            if isinstance(action, Close):
                conn.finish(action)
                return
            assert isinstance(action, Send)
            try:
                await ws.send_str(action.text)
            except (ConnectionError, RuntimeError):
                conn.finish(Drop())
                return

    async def _silent(self, transport: Any) -> None:
        """Return at shutdown, or once the client has hung up (nothing is read meanwhile).

        Without the second check a socket the client gave up on would stay open
        on this side until shutdown, one file descriptor per stall or suspend.
        """
        while transport is not None and not transport.is_closing():
            with anyio.move_on_after(PEER_CHECK_INTERVAL):
                await self.shutting_down.wait()
                return

    async def _finish(self, conn: Connection, ws: web.WebSocketResponse, transport: Any) -> None:
        final = conn.final
        if isinstance(final, Stall):
            conn.stalled, conn.suspended = True, final.suspended
            with anyio.move_on_after(math.inf if final.seconds is None else final.seconds):
                await self._silent(transport)
            final = Drop()
        if isinstance(final, Close) and not ws.closed:
            conn.close_code, conn.close_reason = final.code, final.reason
            with anyio.move_on_after(CLOSE_HANDSHAKE_TIMEOUT + 1):
                await ws.close(code=final.code, message=final.reason.encode())
        elif isinstance(final, Drop) or not ws.closed:
            if transport is not None:
                transport.abort()
            if conn.close_code is None:
                conn.close_code = 1006
        if conn.close_code is None:
            conn.close_code = ws.close_code
        conn.closed_at = time.time()
        conn.session.phase = Phase.CLOSED
