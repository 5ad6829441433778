"""Real servers for the framework tests (gunicorn's worker processes, uvicorn), and a sender
that acts like Xsolla from plain threads: every copy of a notification is retried until it
gets a 2xx; a dropped connection (a killed worker) or a 5xx is retried, a 4xx is final.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path

import attrs
import psutil
from support_postgres import free_port
from support_webhook import signed

TESTS = Path(__file__).resolve().parent
APPS = TESTS / "framework_apps"
DEADLINE = 60.0


@attrs.define
class Server:
    """A server process on loopback: its master's pid and the log it wrote."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def workers(self) -> list[int]:
        return [child.pid for child in psutil.Process(self.process.pid).children()]

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def post(port: int, path: str, body: bytes, headers: dict[str, str]) -> int | None:
    """One POST; ``None`` when no answer came (the connection was dropped or refused)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", path, body, headers)
        return connection.getresponse().status
    except (ConnectionError, http.client.HTTPException, OSError):
        return None
    finally:
        connection.close()


def wait_until_serving(server: Server, path: str) -> None:
    """Until the server answers (any status): a forged signature gets its 400."""
    deadline = time.monotonic() + DEADLINE
    while post(server.port, path, b"{}", {"Authorization": "Signature x"}) is None:
        if server.process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the server did not start:\n{server.output()}")
        time.sleep(0.05)


@contextmanager
def serving(
    command: Sequence[str], env: dict[str, str], tmp: Path, path: str, cwd: Path = APPS
) -> Iterator[Server]:
    """Run ``command`` (given ``{port}``) in ``cwd`` until the block ends; its output goes to
    a log."""
    port = free_port()
    log = tmp / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [part.format(port=port) for part in command],
            env={**os.environ, **env},
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(process, port, log)
    try:
        wait_until_serving(server, path)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # gunicorn / uvicorn: a graceful stop
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


def gunicorn(app: str, workers: int = 2) -> list[str]:
    """gunicorn's sync workers: one request at a time each, several processes."""
    return [
        sys.executable, "-m", "gunicorn", "--workers", str(workers), "--worker-class", "sync",
        "--bind", "127.0.0.1:{port}", "--timeout", "30", "--graceful-timeout", "5", app,
    ]  # fmt: skip


def deliver(port: int, path: str, body: bytes) -> list[int | None]:
    """Like Xsolla: retried (at a test's pace) until a 2xx or a 4xx; every answer given."""
    answers: list[int | None] = []
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        status = post(port, path, body, signed(body))
        answers.append(status)
        if status is not None and status < 500:
            return answers
        time.sleep(0.05)
    return answers


def deliver_with_a_kill(
    server: Server, path: str, bodies: list[bytes], copies: int
) -> tuple[list[list[int | None]], int]:
    """Every body ``copies`` times, all at once from 8 threads; a worker is SIGKILLed when a
    third of them are answered.  Returns each copy's answers and the killed pid."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures: list[Future[list[int | None]]] = [
            pool.submit(deliver, server.port, path, body) for body in bodies for _ in range(copies)
        ]
        pending = set(futures)
        while len(futures) - len(pending) < len(futures) // 3:
            _, pending = wait(pending, timeout=DEADLINE, return_when=FIRST_COMPLETED)
        victim = server.workers()[0]
        os.kill(victim, signal.SIGKILL)
        return [future.result() for future in futures], victim


def wait_for_workers(server: Server, count: int, gone: int) -> list[int]:
    """Until the master runs ``count`` workers again, none of them ``gone``."""
    deadline = time.monotonic() + DEADLINE
    while True:
        workers = server.workers()
        if len(workers) == count and gone not in workers:
            return workers
        if time.monotonic() > deadline:
            raise AssertionError(f"workers are {workers}:\n{server.output()}")
        time.sleep(0.05)
