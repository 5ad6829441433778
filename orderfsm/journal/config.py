"""Which journal a URL names, and the settings every backend shares.

| URL | journal |
|---|---|
| ``None``, ``""``, ``memory:`` | in memory, one process, forgets on restart |
| ``webhooks.sqlite3``, ``/var/lib/app/webhooks.sqlite3`` | SQLite file (a plain path) |
| ``sqlite:///relative.sqlite3``, ``sqlite:////abs/path.sqlite3`` | SQLite (SQLAlchemy's way) |
| ``postgresql://user:pass@host:5432/db?sslmode=require``, ``postgres://...`` | PostgreSQL |
"""

from __future__ import annotations

import re

import attrs

from orderfsm.errors import BadStoreUrl, JournalConfigError

DAY = 86400.0


@attrs.frozen
class MemoryConfig:
    def display(self) -> str:
        return "memory:"


@attrs.frozen
class SqliteConfig:
    path: str

    def display(self) -> str:
        return f"sqlite:///{self.path}"  # an absolute path gives the four slashes


@attrs.frozen
class PostgresConfig:
    conninfo: str = attrs.field(repr=False)
    """Handed to libpq as is (it understands both URLs and ``key=value`` strings).
    Better without a password: libpq reads ``PGPASSWORD`` and ``~/.pgpass`` itself."""

    def passwords(self) -> tuple[str, ...]:
        """The password written in ``conninfo`` (in the user part, a ``password=``
        query parameter or key), as written and decoded; none for a URL without one."""
        found: list[str] = []
        _, sep, rest = self.conninfo.partition("://")
        if sep:
            userinfo, at, _ = rest.rpartition("@")
            if at and ":" in userinfo:
                found.append(userinfo.split(":", 1)[1])
        found += [m[1] or m[2] for m in _PASSWORD_KEY.finditer(self.conninfo)]
        decoded = [_percent_decoded(p) for p in found]
        return tuple(p for p in dict.fromkeys([*found, *decoded]) if p)

    def scrub(self, text: str) -> str:
        """``text`` (a driver's error message, which may quote the URL) without the password."""
        for password in sorted(self.passwords(), key=len, reverse=True):
            text = text.replace(password, "***")
        return text

    def display(self) -> str:
        """The URL with its password hidden, for messages and logs."""
        return self.scrub(self.conninfo)


def _percent_decoded(text: str) -> str:
    """``%40`` -> ``@``: how a URL's password reads once libpq decodes it (pure, no urllib)."""
    raw = re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m[1], 16)]), text.encode())
    return raw.decode("utf-8", "replace")


StoreConfig = MemoryConfig | SqliteConfig | PostgresConfig

_POSTGRES = ("postgresql", "postgres")
_PASSWORD_KEY = re.compile(r"password\s*=\s*(?:'((?:[^'\\]|\\.)*)'|([^\s&']+))")
"""``password=...`` as a URL query parameter or a ``key=value`` conninfo entry."""
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")
_LIBPQ_KEYWORD = re.compile(r"[a-z_]+\s*=")


def parse_store_url(url: str | None) -> StoreConfig:
    """Read a store URL; raise :class:`BadStoreUrl` for anything else."""
    if url is None or url.strip() in ("", "memory:", ":memory:"):
        return MemoryConfig()
    text = url.strip()
    head = _SCHEME.match(text)
    if head is None:
        if _LIBPQ_KEYWORD.match(text):
            # Taken for a file name, it would give each host a journal of its own
            # (no exactly-once across the fleet), named with the password.
            raise BadStoreUrl(
                "a libpq connection string (key=value ...) is not a store URL:"
                " write postgresql://user:password@host:port/dbname"
            )
        # No scheme (or a Windows drive letter): a path to an SQLite file.
        return SqliteConfig(text)
    scheme = head[1].lower()
    rest = text[head.end() :]
    if not rest.startswith("//"):
        raise BadStoreUrl(
            f"{text!r}: a URL needs '//' after '{scheme}:' (a file path with a colon: ./{text})"
        )
    rest = rest[2:]
    if scheme == "sqlite":
        # sqlite:///relative and sqlite:////absolute, as SQLAlchemy spells them.
        if not rest.startswith("/") or len(rest) < 2:
            raise BadStoreUrl(
                f"{text!r}: write sqlite:///relative/path or sqlite:////absolute/path"
            )
        return SqliteConfig(rest[1:].split("?", 1)[0])
    if scheme in _POSTGRES:
        return PostgresConfig(text)
    raise BadStoreUrl(
        f"{text!r}: unknown scheme {scheme!r}; use a file path, sqlite:///path or postgresql://..."
    )


@attrs.frozen
class JournalSettings:
    """Timing and size settings; the defaults fit Xsolla's rules (xsolla.md §5.5, §5.6)."""

    lease: float = 60.0
    """How long a claim's owner may work before another instance may take the key
    over.  Well under Xsolla's first retry (5 min) and far over a handler that
    answers within Xsolla's recommended 3 s."""
    wait: float = 2.0
    """How long a delivery waits for a busy key or a locked database before
    answering 5xx: under Xsolla's 3 s, so a wait never turns into a timeout."""
    retention: float = 14 * DAY
    """How long claims, deliveries and the fleet's order changes are kept: far past
    Xsolla's 12 h of retries (an order's latest change, and one whose ``on_settled``
    call is still owed, are kept longer: :func:`~orderfsm.journal.orders.change_prunable`)."""
    prune_every: float = 3600.0
    """How often expired rows are deleted (in a background thread)."""
    pool_size: int = 8
    """Worker threads for the journal, and PostgreSQL connections per process: up to this
    many for single statements and as many again for batches (one per event loop in
    practice), plus one listening connection per journal-backed tracker."""

    def __attrs_post_init__(self) -> None:
        if not self.lease > 0:
            raise JournalConfigError(f"lease must be positive, got {self.lease}")
        if not self.wait >= 0:
            raise JournalConfigError(f"wait must not be negative, got {self.wait}")
        if not self.retention > self.lease:
            raise JournalConfigError(
                f"retention ({self.retention} s) must be longer than the lease ({self.lease} s)"
            )
        if not self.prune_every > 0:
            raise JournalConfigError(f"prune_every must be positive, got {self.prune_every}")
        if self.pool_size < 1:
            raise JournalConfigError(f"pool_size must be at least 1, got {self.pool_size}")
