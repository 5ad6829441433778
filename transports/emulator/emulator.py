"""The in-process emulator: the server on its own thread and asyncio loop.

A separate thread and loop let the same object serve asyncio tests, trio
tests and plain synchronous code, and keep the server's timing independent of
whatever the test's own loop is doing.  Control goes through the HTTP
surface like for any other client (:class:`EmulatorClient`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence
from types import TracebackType

import anyio

from transports.emulator.client import EmulatorClient, EmulatorError
from transports.emulator.server import serve
from transports.emulator.services import Config
from transports.emulator.state import ChannelMode
from transports.emulator.webhooks import DEFAULT_RETRY_INTERVALS

START_TIMEOUT = 10.0
STOP_TIMEOUT = 15.0


class Emulator(EmulatorClient):
    """``async with Emulator(...) as emu:`` (or ``with``) runs an emulator on loopback."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        project_id: int = 12345,
        secret: str = "PROJECT_SECRET_KEY",
        ping_interval: float = 25.0,
        pong_timeout: float = 10.0,
        stale_timeout: float = 15.0,
        seed: int = 0,
        history_size: int = 300,
        history_limit: int = 300,
        channel_mode: ChannelMode = "recovery",
        webhook_url: str | None = None,
        webhook_retry_intervals: Sequence[float] = DEFAULT_RETRY_INTERVALS,
        webhook_timeout: float = 5.0,
    ) -> None:
        super().__init__("http://not-started")
        self.config = Config(
            host=host,
            port=port,
            project_id=project_id,
            secret=secret,
            ping_interval=ping_interval,
            pong_timeout=pong_timeout,
            stale_timeout=stale_timeout,
            seed=seed,
            history_size=history_size,
            history_limit=history_limit,
            channel_mode=channel_mode,
            webhook_url=webhook_url,
            webhook_retry_intervals=tuple(webhook_retry_intervals),
            webhook_timeout=webhook_timeout,
        )
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: anyio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def project_id(self) -> int:
        return self.config.project_id

    @property
    def secret(self) -> str:
        return self.config.secret

    # --- lifecycle (blocking; the async forms run these on a worker thread) -----

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("this Emulator was already started")
        self._thread = threading.Thread(target=self._run, name="orderfsm-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise EmulatorError(0, "the emulator did not start in time")
        if self._error is not None:
            self._thread.join()
            raise EmulatorError(0, f"the emulator failed to start: {self._error}") from self._error

    def stop(self) -> None:
        loop, stop, thread = self._loop, self._stop, self._thread
        if thread is None:
            return
        if loop is not None and stop is not None:
            # RuntimeError: the loop already ended (POST /control/shutdown)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        thread.join(STOP_TIMEOUT)
        if thread.is_alive():
            raise EmulatorError(0, "the emulator thread did not stop")

    def _run(self) -> None:
        try:
            anyio.run(self._main, backend="asyncio")
        except BaseException as exc:  # reported to start() or lost after a clean start
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = anyio.Event()

        def ready(base_url: str) -> None:
            self._base_url = base_url
            self._ready.set()

        await serve(self.config, ready=ready, stop=self._stop)

    async def __aenter__(self) -> Emulator:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.stop)

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
