"""The CPU floor for bench_scale: the least a Centrifuge client on aiohttp can do.

One aiohttp WebSocket per user that sends the connect command, answers the
server's pings, splits each frame into its lines, ``json.loads`` each and
hands a publication's data to a function: no recovery, no reconnect, no
orders, no checks.  Any real client does at least this, on the same socket
library and event loop, so the ratio of ours to it says how much of our cost
is ours to cut.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
import anyio
from anyio.abc import TaskGroup

from transports.centrifuge.frames import PONG, connect_command
from transports.emulator import EmulatorClient, User


class RawFleet:
    """``async with RawFleet(...)``: every user connected and subscribed on entry."""

    def __init__(
        self,
        emu: EmulatorClient,
        project_id: int,
        users: Sequence[User],
        on_publication: Callable[[dict[str, Any]], None],
    ) -> None:
        self.url = emu.ws_url
        self.project_id = project_id
        self.users = users
        self.on_publication = on_publication
        self._session: aiohttp.ClientSession | None = None
        self._tg: TaskGroup | None = None

    async def __aenter__(self) -> RawFleet:
        # No connection limit: each WebSocket holds one (aiohttp's default is 100).
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        for user in self.users:
            ws: Any = await self._session.ws_connect(self.url, autoping=False)
            data = {"auth": user.token, "project_id": self.project_id}
            await ws.send_str(connect_command(1, data, subs={}, name="raw", version=""))
            reply = await ws.receive_str()  # the connect reply: subscribed server-side
            if '"connect"' not in reply:
                raise RuntimeError(f"raw client: connect failed: {reply[:200]}")
            self._tg.start_soon(self._read, ws)
        return self

    async def _read(self, ws: Any) -> None:
        loads, handle = json.loads, self.on_publication
        async for message in ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            for line in message.data.split("\n"):
                if not line:
                    continue
                frame = loads(line)
                if not frame:
                    await ws.send_str(PONG)
                    continue
                pub = frame.get("push", {}).get("pub")
                if pub is not None:
                    handle(pub["data"])

    async def __aexit__(self, *exc: object) -> None:
        assert self._tg is not None and self._session is not None
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)
        await self._session.close()
