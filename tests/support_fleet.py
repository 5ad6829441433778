"""Several ``orderfsm webhook-server`` processes on one journal, and a sender that acts like
Xsolla: every copy of a notification is retried (on another instance) until it gets a 2xx.

The sender is the test process; the receivers are real processes that the
tests SIGKILL and restart.  Each receiver's output is read as it comes (a
full pipe would stall the server) and kept.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import attrs
from anyio.abc import Process, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream
from support_webhook import order_paid, signed

TESTS = Path(__file__).resolve().parent
SECRET = "PROJECT_SECRET_KEY"


@attrs.define(eq=False)
class Receiver:
    """One running ``orderfsm webhook-server`` and everything it printed."""

    process: Process
    url: str = ""
    lines: list[str] = attrs.field(factory=list)
    changed: anyio.Event = attrs.field(factory=anyio.Event)
    stderr: Path | None = None
    """Where the process's stderr went, when kept (read when a test fails)."""

    async def drain(self, reader: BufferedByteReceiveStream) -> None:
        while True:
            try:
                line = await reader.receive_until(b"\n", 1 << 20)
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.ClosedResourceError):
                self.changed.set()
                return
            self.lines.append(line.decode())
            self.changed.set()
            self.changed = anyio.Event()

    async def wait_for(self, prefix: str, within: float = 30) -> str:
        with anyio.fail_after(within):
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
                if self.process.returncode is not None:
                    raise AssertionError(f"the receiver exited waiting for {prefix!r}")
                await self.changed.wait()

    def said(self, last: int = 4000) -> str:
        """The end of what the process wrote to stderr, for a failing test's message."""
        if self.stderr is None or not self.stderr.exists():
            return "(stderr not kept)"
        return self.stderr.read_text(errors="replace")[-last:]

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def kill(self) -> None:
        if self.alive:
            self.process.send_signal(signal.SIGKILL)
        with anyio.fail_after(10):
            await self.process.wait()

    def accepted(self) -> list[int]:
        """Order ids the default handler printed (one JSON line per accepted notification)."""
        found = []
        for line in self.lines:
            if line.startswith("{"):
                found.append(int(json.loads(line)["order_id"]))
        return found


@attrs.define
class Fleet:
    store: str
    options: tuple[str, ...]
    backend: str
    tg: TaskGroup
    receivers: list[Receiver] = attrs.field(factory=list)
    retired: list[Receiver] = attrs.field(factory=list)

    async def start(self, env: dict[str, str] | None = None) -> Receiver:
        command = [sys.executable, "-m", "orderfsm", "webhook-server", "--secret-env", "SECRET"]
        command += ["--port", "0", "--store", self.store, "--backend", self.backend]
        environment = {**os.environ, "PYTHONPATH": str(TESTS), "SECRET": SECRET, **(env or {})}
        process = await anyio.open_process(
            [*command, *self.options], stderr=subprocess.DEVNULL, env=environment
        )
        assert process.stdout is not None
        receiver = Receiver(process)
        self.tg.start_soon(receiver.drain, BufferedByteReceiveStream(process.stdout))
        with anyio.fail_after(30):
            while not receiver.lines:
                if not receiver.alive:
                    raise AssertionError("the receiver did not start")
                await receiver.changed.wait()
        receiver.url = receiver.lines[0].strip()
        self.receivers.append(receiver)
        return receiver

    async def restart(self, receiver: Receiver, env: dict[str, str] | None = None) -> Receiver:
        """SIGKILL it, then start a new one on the same store in its place."""
        await receiver.kill()
        self.receivers.remove(receiver)
        self.retired.append(receiver)
        return await self.start(env)

    def accepted(self) -> list[int]:
        return [o for r in [*self.retired, *self.receivers] for o in r.accepted()]


@asynccontextmanager
async def fleet(
    store: str,
    count: int,
    *options: str,
    backend: str = "asyncio",
    env: dict[str, str] | None = None,
) -> AsyncIterator[Fleet]:
    """``count`` receivers on ``store``; every one still running is killed at the end."""
    async with anyio.create_task_group() as tg:
        group = Fleet(store, options, backend, tg)
        try:
            for _ in range(count):
                await group.start(env)
            yield group
        finally:
            with anyio.CancelScope(shield=True):
                for receiver in [*group.receivers, *group.retired]:
                    await receiver.kill()
                    await receiver.process.aclose()


async def post(url: str, body: bytes, within: float = 10.0) -> int:
    """POST a signed body on a fresh connection; the status, or 0 when there is no answer.

    A bare HTTP/1.1 exchange over anyio: no client library whose clean-up a
    SIGKILLed peer could upset, the same on asyncio and trio.
    """
    host_port, path = url.removeprefix("http://").split("/", 1)
    host, port = host_port.rsplit(":", 1)
    head = f"POST /{path} HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in signed(body).items())
    head += f"Content-Length: {len(body)}\r\n\r\n"
    try:
        with anyio.fail_after(within):
            async with await anyio.connect_tcp(host, int(port)) as stream:
                await stream.send(head.encode() + body)
                reader = BufferedByteReceiveStream(stream)
                status_line = await reader.receive_until(b"\r\n", 1024)
        return int(status_line.split()[1])
    except (
        OSError,
        TimeoutError,
        anyio.EndOfStream,
        anyio.IncompleteRead,
        anyio.BrokenResourceError,
    ):
        return 0


@attrs.define
class Sender:
    """Delivers like Xsolla: each copy until a 2xx (a 4xx ends it too, and fails the tests)."""

    group: Fleet
    retry_every: float = 0.05
    deadline: float = 60.0
    answers: list[tuple[int, int, float, float]] = attrs.field(factory=list)
    """(order id, status or 0 for no answer, sent at, answered at) of every attempt."""
    rng: random.Random = attrs.field(factory=lambda: random.Random(7))

    async def deliver(self, order_id: int, first: Receiver | None = None) -> int:
        body = order_paid(order_id)
        receiver = first
        with anyio.fail_after(self.deadline):
            while True:
                if receiver is None or not receiver.alive:
                    receiver = self.rng.choice([r for r in self.group.receivers if r.alive])
                sent = anyio.current_time()
                status = await post(receiver.url, body)
                self.answers.append((order_id, status, sent, anyio.current_time()))
                if 200 <= status < 300 or 400 <= status < 500:
                    return status
                receiver = None  # the retry lands on any instance
                await anyio.sleep(self.retry_every)

    async def storm(self, orders: list[int], copies: int) -> dict[int, list[int]]:
        """Every copy of every order at once; returns each copy's final status per order."""
        final: dict[int, list[int]] = {order: [] for order in orders}

        async def one(order_id: int) -> None:
            final[order_id].append(await self.deliver(order_id))

        async with anyio.create_task_group() as tg:
            for order_id in orders:
                for _ in range(copies):
                    tg.start_soon(one, order_id)
        return final
