"""The test session's PostgreSQL server: started on first use, torn down at exit.

A :class:`~transports.journal.testing.TemporaryPostgres` (a cluster in a
temporary folder, on a free loopback port, as the ``postgres`` user under
root).  Without the binaries the tests that need it skip with one reason;
``.ci/run`` installs them.  Each test gets a schema of its own.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from transports.journal.testing import PostgresMissing, TemporaryPostgres, free_port

MISSING = (
    "PostgreSQL's initdb and pg_ctl were not found (PATH, /usr/lib/postgresql/*/bin); "
    ".ci/run installs them with apt"
)

_server: TemporaryPostgres | None = None


def postgres_server() -> TemporaryPostgres:
    """The session's server (started on first use); skips the test without the binaries."""
    global _server
    if _server is None:
        try:
            _server = TemporaryPostgres()
        except PostgresMissing:
            pytest.skip(MISSING)
        atexit.register(_server.close)
    return _server


def own_server() -> TemporaryPostgres:
    """A server of the test's own (closed by it), for what the session's must not go
    through: being frozen.  Skips the test without the binaries."""
    try:
        return TemporaryPostgres()
    except PostgresMissing:
        pytest.skip(MISSING)


DATABASES = itertools.count(1)

NO_ORDERS = (
    "GRANT SELECT ON orderfsm_schema, orderfsm_claims, orderfsm_deliveries TO {role}",
    "GRANT INSERT, UPDATE, DELETE ON orderfsm_claims, orderfsm_deliveries TO {role}",
)
"""For :func:`database_of_a_role`: a webhook-only backend's role, the journal's claims
and deliveries and nothing of the orders' tables."""


@contextlib.contextmanager
def database_of_a_role(*grants: str) -> Iterator[tuple[str, str, Any]]:
    """A database of the test's own, its schema made by its owner, and a role given
    ``grants`` (``{role}`` in each names it): the role's URL, its name, and the owner's
    connection (autocommit) to grant and revoke with."""
    from transports.journal import open_journal

    server = postgres_server()  # skips without the binaries
    import psycopg

    number = next(DATABASES)
    name, role = f"grants_{os.getpid()}_{number}", f"receiver_{os.getpid()}_{number}"
    admin = psycopg.connect(server.base, autocommit=True)
    admin.execute(f"CREATE DATABASE {name}")
    admin.execute(f"CREATE ROLE {role} LOGIN")
    owner_url = f"{server.base.rsplit('/', 1)[0]}/{name}"
    try:
        schema = open_journal(owner_url).sync  # the schema, made by its owner
        schema.open()
        schema.close()
        database = psycopg.connect(owner_url, autocommit=True)
        try:
            for grant in grants:
                database.execute(grant.format(role=role))
            url = owner_url.replace("//postgres@", f"//{role}@", 1)
            assert url != owner_url, owner_url
            yield url, role, database
        finally:
            database.close()
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"DROP ROLE IF EXISTS {role}")
        admin.close()


@contextlib.contextmanager
def frozen(server: TemporaryPostgres) -> Iterator[None]:
    """The server stops answering and closes nothing: SIGSTOP to the postmaster, then to
    every process it started (the sessions' backends, the WAL writer...), as a host
    that hangs (a VM paused, a disk that stopped answering) would.  The kernel still
    acknowledges what clients send, so no client-side TCP timeout fires.  Always
    thawed (SIGCONT) on the way out, whatever the test did meanwhile."""
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    stopped: list[int] = []
    try:
        os.kill(postmaster, signal.SIGSTOP)  # first: a stopped postmaster starts nobody
        stopped.append(postmaster)
        for pid in _children(postmaster):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        yield
    finally:
        for pid in reversed(stopped):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:  # the name may hold spaces
            found.append(int(entry.name))
    return found


__all__ = [
    "NO_ORDERS",
    "database_of_a_role",
    "free_port",
    "frozen",
    "own_server",
    "postgres_server",
]
