"""A clean stop for an ASGI app: the requests in flight finish, new ones are refused.

A webhook cut between its handler's effect and its recorded answer gets no
answer, and Xsolla's retry (once the claim's lease is over) runs the plain
handler again.  So a stop first lets what is in flight end, for up to a
limit, and answers what comes meanwhile 503, which Xsolla retries (on another
instance, or on this one restarted).  Only then is the server told to stop.
aiohttp.web does the same by itself (its listener closes at once: a refused
connection is retried too).
"""

from __future__ import annotations

from typing import Any

import anyio

from transports.webhook.answers import error_answer
from transports.webhook.asgi import Receive, Scope, Send, reply

STOPPING = error_answer(503, "SERVICE_UNAVAILABLE", "the server is stopping, please retry")


class Draining:
    """Wraps an ASGI app; :meth:`drain` stops it taking requests and waits for the rest."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.in_flight = 0
        self.stopping = False
        self._idle = anyio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # the lifespan: the server runs it after the drain
            await self.app(scope, receive, send)
            return
        if self.stopping:
            await reply(send, STOPPING, (("Connection", "close"),))
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            if self.stopping and not self.in_flight:
                self._idle.set()

    async def drain(self, limit: float) -> None:
        """Refuse new requests from now on; return once none is in flight, or after
        ``limit`` seconds (what is still running then is the server's to cancel)."""
        self.stopping = True
        if self.in_flight:
            with anyio.move_on_after(limit):
                await self._idle.wait()
