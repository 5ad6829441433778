"""A throw-away PostgreSQL server for tests and benchmarks (yours too).

``TemporaryPostgres()`` finds ``initdb`` and ``pg_ctl`` on PATH or in
``/usr/lib/postgresql/*/bin``, makes a cluster in a temporary folder and
serves it on a free loopback port.  PostgreSQL refuses to run as root, so
under root it runs as the unprivileged ``postgres`` user (``runuser -u
postgres --``), which then owns the folder.  ``url()`` gives a fresh, empty
schema each time (through ``search_path``), much faster than a database.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from urllib.parse import quote


class PostgresMissing(RuntimeError):
    """initdb / pg_ctl are not installed."""


def find_bindir() -> Path | None:
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for candidate in candidates:
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TemporaryPostgres:
    """One running cluster, stopped and deleted by :meth:`close` (or ``with``)."""

    def __init__(self, *settings: str) -> None:
        """``settings`` are extra ``-c name=value`` server settings."""
        bindir = find_bindir()
        if bindir is None:
            raise PostgresMissing(
                "PostgreSQL's initdb and pg_ctl were not found (PATH, /usr/lib/postgresql/*/bin)"
            )
        self.bindir = bindir
        self.folder = Path(tempfile.mkdtemp(prefix="orderfsm-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.port = free_port()
        self.settings = ("max_connections=300", *settings)
        self.wrap: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self.wrap = ["runuser", "-u", "postgres", "--"]
        self._schemas = itertools.count(1)
        try:
            self._run(
                "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                "--no-sync",
            )  # fmt: skip
            self.start()
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise

    def _run(self, tool: str, *args: str) -> None:
        command = [*self.wrap, str(self.bindir / tool), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed: {result.stdout}{result.stderr}{log}")

    def start(self) -> None:
        options = f"-p {self.port} -h 127.0.0.1 -k {self.folder}"
        options += "".join(f" -c {setting}" for setting in self.settings)
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start")

    def stop(self) -> None:
        """Stop now (fast shutdown: every session is ended, as in an outage)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    @property
    def base(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self) -> str:
        """A URL whose tables live in a new, empty schema."""
        import psycopg

        schema = f"t{os.getpid()}_{next(self._schemas)}"
        with psycopg.connect(self.base, autocommit=True) as connection:
            connection.execute(f"CREATE SCHEMA {schema}")
        return f"{self.base}?options={quote(f'-c search_path={schema}')}"

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> TemporaryPostgres:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
