"""The emulator in a child process, for measurements that must not share a GIL with it.

An in-process :class:`~transports.emulator.Emulator` runs on a thread of the
caller's interpreter, so its work and the client's take turns on one GIL and
each one's pauses show up in the other's timings.  ``EmulatorProcess`` starts
``orderfsm emulator`` instead, reads the base URL it prints first, and yields
an :class:`~transports.emulator.EmulatorClient` driving it over HTTP.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from types import TracebackType

import anyio
from anyio.abc import Process

from transports.emulator.client import EmulatorClient, EmulatorError

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class EmulatorProcess:
    """``async with EmulatorProcess(ping_interval=1.0) as emu:`` (asyncio or trio).

    ``gc`` is the child's ``--gc`` mode (``"default"``, ``"frozen"``, ``"off"``);
    ``extra_args`` go to ``orderfsm emulator`` as they are.  Leaving the block
    asks the emulator to shut down (closing its sockets with 3001), waits for
    it, and kills it only if it does not exit in time.
    """

    def __init__(
        self,
        *,
        project_id: int = 12345,
        secret: str = "PROJECT_SECRET_KEY",
        ping_interval: float = 25.0,
        pong_timeout: float = 10.0,
        seed: int = 0,
        webhook_url: str | None = None,
        gc: str = "default",
        extra_args: Sequence[str] = (),
        python: str = sys.executable,
    ) -> None:
        self.command = [
            python,
            "-m",
            "orderfsm",
            "emulator",
            "--port",
            "0",
            "--project-id",
            str(project_id),
            "--secret",
            secret,
            "--ping",
            repr(ping_interval),
            "--pong-timeout",
            repr(pong_timeout),
            "--seed",
            str(seed),
            "--gc",
            gc,
            *(["--webhook-url", webhook_url] if webhook_url is not None else []),
            *extra_args,
        ]
        self._process: Process | None = None
        self.client: EmulatorClient | None = None

    @property
    def pid(self) -> int:
        """The child's process id (e.g. for its CPU time and memory)."""
        if self._process is None:
            raise RuntimeError("the emulator process is not running")
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """The child's exit status once it has stopped (``None`` while it runs)."""
        return None if self._process is None else self._process.returncode

    async def __aenter__(self) -> EmulatorClient:
        if self._process is not None:
            raise RuntimeError("this EmulatorProcess was already started")
        process = await anyio.open_process(self.command, stderr=None)
        self._process = process
        try:
            with anyio.fail_after(START_TIMEOUT):
                base_url = await _first_line(process)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._stop(asked=False)
            raise
        self.client = EmulatorClient(base_url)
        return self.client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self._stop(asked=True)

    async def _stop(self, *, asked: bool) -> None:
        process, client = self._process, self.client
        if process is None:
            return
        try:
            if asked and client is not None and process.returncode is None:
                with contextlib.suppress(EmulatorError):
                    await client.shutdown()
            with anyio.move_on_after(STOP_TIMEOUT):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
        finally:
            await process.aclose()


async def _first_line(process: Process) -> str:
    """The base URL the emulator prints once it listens."""
    assert process.stdout is not None
    buffer = b""
    while b"\n" not in buffer:
        try:
            buffer += await process.stdout.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise EmulatorError(0, "the emulator process exited before serving") from None
    line = buffer.split(b"\n", 1)[0].decode().strip()
    if not line.startswith("http"):
        raise EmulatorError(0, f"the emulator printed {line!r}, not its URL")
    return line
