"""One WebSocket connection per (endpoint, project, user), shared by that user's orders.

Xsolla publishes every order status of a user on that user's channel, so one
socket serves all of the user's tracked orders.  The pool starts a user's
:class:`~transports.centrifuge.connection.Connection` on the first
:meth:`WebSocketPool.attach` and closes it ``linger`` seconds after the last
attachment goes (detached, or its order reached a final status), unless an
attach came back in between.  A connection of the same key that is still
closing delays its successor's first socket, so a user never has two sockets
open because of us.
"""

from __future__ import annotations

import itertools
import random as _random
from collections.abc import Callable, Hashable
from types import TracebackType

import anyio
import attrs
from anyio.abc import TaskGroup

from orderfsm.errors import OrderFsmError
from orderfsm.interface import ObservationSink, TokenProvider
from transports.centrifuge.config import DEFAULT_ENDPOINT, EngineConfig
from transports.centrifuge.connection import Attachment, Connection, ConnectionInfo
from transports.centrifuge.counters import ConnectionCounters, WebSocketStats
from transports.centrifuge.engine import CentrifugeEngine
from transports.centrifuge.shells import default_socket_factory
from transports.centrifuge.socket import MakeSocketFactory, SocketFactory

DEFAULT_WS_URL = DEFAULT_ENDPOINT
DEFAULT_LINGER = 30.0
"""Seconds a user's socket stays open after their last order ends: a player who
buys again soon (common) reuses it, with no reconnect and no history read."""


class PoolClosed(OrderFsmError, RuntimeError):
    """``attach`` was called outside ``async with WebSocketPool(...)``."""


class WebSocketPool:
    """Shared per-user WebSocket connections for tracked orders, on asyncio or trio.

    ::

        async with WebSocketPool(project_id=P) as pool:
            attachment = pool.attach(order_id, sink, token=get_token, user_id="player-1")
            ...
            attachment.detach()

    ``config`` supplies the delays and limits (its ``project_id`` and
    ``endpoint`` are replaced by the pool's, its ``user_external_id`` by each
    attach's ``user_id``).  ``random`` draws the reconnect jitter.
    ``socket_factory`` forces a shell (e.g. ``HttpxSocketFactory`` on asyncio);
    by default aiohttp runs on asyncio and httpx-ws elsewhere.  ``linger``: how
    long an idle user's socket stays open (0: close at once); leaving the pool
    closes every socket at once, lingering or not.
    """

    def __init__(
        self,
        *,
        project_id: int,
        url: str = DEFAULT_WS_URL,
        config: EngineConfig | None = None,
        random: Callable[[], float] | None = None,
        socket_factory: MakeSocketFactory | None = None,
        linger: float = DEFAULT_LINGER,
    ) -> None:
        if not linger >= 0:
            raise ValueError(f"linger must not be negative, got {linger}")
        base = config if config is not None else EngineConfig(project_id=project_id)
        self.project_id = project_id
        self.url = url
        self.config = attrs.evolve(base, project_id=project_id, endpoint=url)
        self._random = random if random is not None else _random.random
        self._make_sockets = socket_factory or default_socket_factory
        self._sockets: SocketFactory | None = None
        self._tg: TaskGroup | None = None
        self._live: dict[tuple[Hashable, ...], Connection] = {}
        self._closing: dict[tuple[Hashable, ...], Connection] = {}
        self.linger = linger
        self._lingering: dict[Connection, float] = {}
        """Idle connections, each with the loop time its linger ends, soonest first
        (every spell is as long, so the order they began in)."""
        self._sweeping = False
        self._leaving: anyio.Event | None = None
        self._numbers = itertools.count(1)
        self._counters = ConnectionCounters()

    async def __aenter__(self) -> WebSocketPool:
        sockets = self._make_sockets()
        await sockets.__aenter__()
        try:
            tg = anyio.create_task_group()
            await tg.__aenter__()
        except BaseException as exc:
            await sockets.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._sockets, self._tg = sockets, tg
        self._leaving = anyio.Event()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tg, sockets = self._tg, self._sockets
        self._tg = None  # no more attaches
        if self._leaving is not None:
            self._leaving.set()  # lingering ends now
        self._lingering.clear()
        for connection in [*self._live.values(), *self._closing.values()]:
            connection.stop()
        self._live.clear()
        try:
            if tg is not None:
                # The body's exception (if any) propagates unchanged: the task
                # group is not told about it, so it is not wrapped in a group.
                await tg.__aexit__(None, None, None)
        finally:
            self._sockets = None
            if sockets is not None:
                await sockets.__aexit__(None, None, None)

    def attach(
        self,
        order_id: int,
        sink: ObservationSink,
        *,
        token: TokenProvider | str,
        user_id: str | None = None,
        user_key: Hashable | None = None,
    ) -> Attachment:
        """Deliver the order's statuses and the connection's health to ``sink``.

        Synchronous and non-blocking.  Orders with the same key share a
        connection: ``user_key`` if given, else ``user_id`` if given, else the
        ``token`` provider object itself.  ``user_id`` (Xsolla's
        ``user_external_id``) and ``token`` are taken from the attach that
        starts the connection.
        """
        if self._tg is None or self._sockets is None:
            raise PoolClosed("use the WebSocketPool inside 'async with'")
        user: Hashable = user_key if user_key is not None else user_id
        key = (self.url, self.project_id, user if user is not None else token)
        connection = self._live.get(key)
        if connection is None:
            connection = self._start(key, token, user_id)
        elif self._lingering:
            self._lingering.pop(connection, None)
        return connection.attach(order_id, sink)

    def reconnect_all(self, reason: str) -> None:
        """Reconnect every open connection at once, recovering what it missed.

        For a host that slept: a socket can be dead without knowing it, and the
        missed server ping would tell only after ping + slack (35 s).
        """
        for connection in self._live.values():
            connection.reconnect_now(reason)

    def stats(self) -> WebSocketStats:
        """The connections by health now, and what they did since the pool started."""
        return self._counters.snapshot()

    def connections(self) -> list[ConnectionInfo]:
        """The open connections (closing ones excluded)."""
        return [connection.info() for connection in self._live.values()]

    # --- connections' lifetimes ----------------------------------------------------

    def _start(
        self, key: tuple[Hashable, ...], token: TokenProvider | str, user_id: str | None
    ) -> Connection:
        assert self._tg is not None and self._sockets is not None
        config = attrs.evolve(self.config, user_external_id=user_id)
        number = next(self._numbers)
        predecessor = self._closing.get(key)
        connection = Connection(
            key,
            CentrifugeEngine(config, random=self._random),
            token,
            self._sockets,
            on_idle=self._idle,
            on_closed=self._closed,
            label=f"#{number} user {user_id}" if user_id is not None else f"#{number}",
            after=None if predecessor is None else predecessor.closed,
            random=self._random,
            counters=self._counters,
        )
        self._live[key] = connection
        self._tg.start_soon(connection.run, name=f"orderfsm websocket #{number}")
        return connection

    def _idle(self, connection: Connection, linger: bool) -> None:
        tg, leaving = self._tg, self._leaving
        lingers = linger and self.linger > 0 and not connection.closed.is_set()
        if tg is None or leaving is None or not lingers:  # (a closed one failed)
            self._close(connection)
            return
        self._lingering.pop(connection, None)  # idle again: to the end of the line
        self._lingering[connection] = anyio.current_time() + self.linger
        if not self._sweeping:
            self._sweeping = True
            tg.start_soon(self._sweep, leaving)

    async def _sweep(self, leaving: anyio.Event) -> None:
        """Close each idle connection whose linger is over: one task for them all (a
        task, a cancel scope and a timer per connection made a thousand players'
        last orders ending together cost the collector some 30 objects each)."""
        try:
            while self._lingering:
                first = next(iter(self._lingering.values()))
                with anyio.move_on_after(first - anyio.current_time()):
                    await leaving.wait()
                if leaving.is_set():
                    return
                now = anyio.current_time()
                for connection, ends in list(self._lingering.items()):
                    if ends > now:
                        break
                    del self._lingering[connection]
                    self._close(connection)
        finally:
            self._sweeping = False

    def _close(self, connection: Connection) -> None:
        if self._live.get(connection.key) is connection:
            del self._live[connection.key]
        if not connection.closed.is_set():
            self._closing[connection.key] = connection
        connection.stop()

    def _closed(self, connection: Connection) -> None:
        if self._closing.get(connection.key) is connection:
            del self._closing[connection.key]
        lingered = self._lingering.pop(connection, None) is not None
        if lingered and self._live.get(connection.key) is connection:
            # It ended on its own (failed) while idle: the next attach starts afresh.
            del self._live[connection.key]
