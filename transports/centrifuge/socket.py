"""The little the Centrifuge driver needs from a WebSocket, and who provides it.

The driver sends text, receives frames and must learn the close code; it never
touches a library's API.  Two shells implement this: aiohttp on asyncio
(:mod:`~transports.centrifuge.aiohttp_socket`) and httpx-ws wherever anyio runs
(:mod:`~transports.centrifuge.httpx_socket`), so trio gets the same driver.
Which one runs is chosen in :mod:`~transports.centrifuge.shells`.
A :class:`SocketFactory` owns what sockets share (one HTTP client and its
connection pool) for as long as it is entered; each socket it opens is an async
context manager, so closing is structured and happens in the task that opened
it.

Every way a socket can end (close frame, TCP reset, refused handshake) surfaces
as :class:`SocketClosed`, carrying the close code when the peer sent one:
Centrifuge's reconnect rules depend on it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Protocol

from orderfsm.errors import ConnectionLost

MAX_MESSAGE_SIZE = 16 * 2**20
"""Largest frame accepted from the server: recovery and history replies carry up
to 300 publications at once, far beyond Centrifugo's 64 KiB client-side limit."""
CLOSE_TIMEOUT = 1.0
"""How long a graceful close may wait for the peer before the socket is aborted;
a stalled peer never answers, and reconnecting must not wait on it."""


class SocketClosed(ConnectionLost):
    """The socket ended.  ``code`` is from the peer's close frame, ``None`` without one."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"websocket closed: code {code} ({reason or 'no reason'})")
        self.code = code
        self.reason = reason


class SocketOpenFailed(SocketClosed):
    """The socket could not be opened: no TCP connection, TLS failure, a refused
    handshake (``status`` is the HTTP status then), or the open timed out."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(None, reason)
        self.status = status


class WebSocket(Protocol):
    """One open socket, used by one driver task (sends may come from a second
    task, serialized by the driver)."""

    async def send(self, text: str) -> None:
        """Send one text frame; raises :class:`SocketClosed` when that is impossible."""
        ...

    def receive(self) -> Awaitable[object]:
        """The next message, in the library's own form: :meth:`data` reads it.

        Two steps rather than one coroutine of ours around the library's: the
        driver awaits the library's own receive, and every status passes here (a
        coroutine per frame cost about 3% of the CPU per change, and one more
        object per socket for the collector to walk).  Cancelling a pending
        receive may lose a frame that was arriving at that moment, so the driver
        only cancels one when it abandons the socket.
        """
        ...

    def data(self, message: object) -> str | bytes:
        """A message's frame; raises :class:`SocketClosed` when it says the socket ended."""
        ...


class SocketFactory(Protocol):
    """Opens sockets while entered; leaving it releases the shared client."""

    async def __aenter__(self) -> SocketFactory: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def connect(self, url: str, *, open_timeout: float) -> AbstractAsyncContextManager[WebSocket]:
        """Open a socket (no subprotocol offered); leaving the context closes it,
        shielded from cancellation and bounded by :data:`CLOSE_TIMEOUT`.

        Raises :class:`SocketOpenFailed` if it cannot be opened within ``open_timeout`` s.
        """
        ...


MakeSocketFactory = Callable[[], SocketFactory]
"""What a pool takes to build its factory (e.g. the class ``HttpxSocketFactory``),
called inside the running event loop."""


def leaf_exceptions(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or ``[exc]`` itself.

    Duck-typed on ``.exceptions`` so it works on Python 3.10 (backport groups)
    and 3.11+ alike.
    """
    inner = getattr(exc, "exceptions", None)
    if not isinstance(inner, tuple):
        return [exc]
    return [leaf for sub in inner for leaf in leaf_exceptions(sub)]
