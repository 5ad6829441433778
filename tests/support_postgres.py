"""The test session's PostgreSQL server: started on first use, torn down at exit.

A :class:`~transports.journal.testing.TemporaryPostgres` (a cluster in a
temporary folder, on a free loopback port, as the ``postgres`` user under
root).  Without the binaries the tests that need it skip with one reason;
``.ci/run`` installs them.  Each test gets a schema of its own.
"""

from __future__ import annotations

import atexit

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


__all__ = ["free_port", "postgres_server"]
