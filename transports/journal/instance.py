"""The name a tracker leases orders under in the journal: the same after a restart.

A restarting instance takes back at once the orders its previous life held,
whose leases are still live (a SIGKILLed process renews nothing, yet its
leases run on for a lease): that needs the same name after a restart, and
never one name for two live instances, or both would follow one order and
the newer one's start would end the older one's leases.

``Tracker(instance=NAME)`` names it (a StatefulSet pod, a host that runs one
tracker), and the name is held for the tracker's life so that a second live
tracker given it (a deployer's mistake, an old pod still running in a rolling
deploy) is noticed: its start waits up to a lease for the name (the holder
may be dying), then raises :class:`~orderfsm.errors.InstanceNameInUse`.  On
SQLite the name is an OS lock (``flock``) on a file beside the database; on
PostgreSQL a session advisory lock (:mod:`~transports.journal.postgres_name`).
Both are dropped when the holding process ends, even by SIGKILL.

Without a name, on SQLite, the instance holds a *slot* of the database file:
the same kind of lock on ``<database>-instance-<n>.lock``.  The first
process to open the file after another's death gets that slot, so a single
application restarted mid-purchase takes its orders back at once, and two
live trackers (two processes, or two in one process: the lock is per open
file) never share a slot.  On PostgreSQL without a name (instances on other
hosts, no shared file system) the name is new per tracker: a restarted
instance's orders are adopted once their leases run out, by it or by the
others.  A name made here needs no lock, and held nothing before.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Callable, Coroutine
from typing import IO, Any, Protocol, runtime_checkable

import anyio
import anyio.to_thread
import attrs

from orderfsm.errors import InstanceNameInUse, JournalUnavailable
from orderfsm.journal.orders import SLOT_PREFIX
from transports.journal.core import new_owner
from transports.journal.journal import Journal

logger = logging.getLogger("orderfsm.fleet")

SLOTS = 64
"""Trackers on one SQLite file that each get a slot; more get a new name each."""
NAME_RETRY = 0.1
"""Seconds between two tries to take a name another tracker holds (its holder dying)."""


@attrs.frozen
class LeaseName:
    """The name a tracker leases under, and what holds it."""

    name: str
    fresh: bool
    """Made for this tracker (no name, no slot): no previous life held leases under it."""
    keep: Callable[[], Coroutine[Any, Any, None]] | None = None
    """Run for the tracker's life: takes the name again if its lock was lost with its
    connection (PostgreSQL); ``None`` where a lock is never lost (a file's)."""


class NameLock(Protocol):
    """A lock on one instance name, held by one tracker at a time."""

    def take(self) -> bool:
        """Blocking: ``True`` once held here, ``False`` while another holds it; raises
        ``JournalUnavailable`` when the database cannot say."""

    def close(self) -> None: ...

    @property
    def keep(self) -> Callable[[], Coroutine[Any, Any, None]] | None:
        """See :attr:`LeaseName.keep`."""


@runtime_checkable
class LocksNames(Protocol):
    """A store whose database holds instance names itself (PostgreSQL: a session's
    advisory lock, :mod:`~transports.journal.postgres_name`)."""

    def name_lock(self, name: str) -> NameLock: ...


def lock_file(path: str) -> IO[bytes] | None:
    """``path`` opened and locked (``flock``, exclusive, per open file): closing it frees
    the lock, as the process's end does, even by SIGKILL.  ``None`` while another open
    file holds it; ``OSError`` when it cannot be opened; ``ImportError`` on Windows."""
    import fcntl

    handle = open(path, "ab")  # noqa: SIM115 (held open: the lock)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held by a live tracker
        handle.close()
        return None
    return handle


def hold_sqlite_slot(path: str) -> tuple[str, IO[bytes]] | None:
    """The first free slot of the SQLite database at ``path``: its name and the open
    lock file holding it (closing it frees the slot).  ``None`` where file locks are
    not available (Windows) or every slot is held."""
    path = os.path.realpath(path)  # one file reached by two paths is one set of slots
    for slot in range(SLOTS):
        try:
            handle = lock_file(f"{path}-instance-{slot}.lock")
        except ImportError:  # Windows: no flock; a name of its own per tracker
            return None
        except OSError as exc:
            logger.warning(
                "no instance slot beside %s: %s",
                path,
                exc,
                extra={"event": "fleet.name_slot_failed"},
            )
            return None
        if handle is not None:
            return f"{SLOT_PREFIX}{slot}", handle
    logger.warning(
        "every instance slot of %s is held: a new name for this tracker",
        path,
        extra={"event": "fleet.name_slots_full"},
    )
    return None


class FileNameLock:
    """An instance name of a SQLite journal: a lock file beside the database, named from
    the name (``<database>-name-<name>-<hash>.lock``; never a slot's file)."""

    keep = None  # a file's lock is never lost

    def __init__(self, database: str, name: str) -> None:
        readable = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40]
        digest = hashlib.blake2b(name.encode(), digest_size=4).hexdigest()
        self.path = f"{os.path.realpath(database)}-name-{readable}-{digest}.lock"
        self._handle: IO[bytes] | None = None

    def take(self) -> bool:
        if self._handle is None:
            try:
                self._handle = lock_file(self.path)
            except OSError as exc:
                raise JournalUnavailable(f"cannot lock {self.path}: {exc}") from None
        return self._handle is not None

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()


async def hold_name(lock: NameLock, name: str, within: float) -> None:
    """Take ``name``'s lock, waiting up to ``within`` s while another holds it (it may be
    dying: a SIGKILLed host's PostgreSQL session lasts until keepalives notice), then
    ``InstanceNameInUse``.  When the database cannot say, that is logged and the
    tracker starts all the same, as it does when it cannot take its orders over (on
    PostgreSQL the lock's ``keep`` takes the name once the database answers)."""
    deadline = anyio.current_time() + within
    told = False
    while True:
        try:
            if await anyio.to_thread.run_sync(lock.take):
                if told:
                    logger.info(
                        "instance name %r freed and held here",
                        name,
                        extra={"event": "fleet.name_held", "instance": name},
                    )
                return
        except JournalUnavailable as exc:
            logger.warning(
                "cannot make sure instance name %r is this tracker's alone (%s): starting"
                " all the same",
                name,
                exc,
                extra={"event": "fleet.name_unchecked", "instance": name},
            )
            return
        left = deadline - anyio.current_time()
        if left <= 0:
            raise InstanceNameInUse(name, within)
        if not told:
            told = True
            logger.warning(
                "instance name %r is held by another live tracker (one stopping, or the"
                " name given twice): waiting up to %g s for it",
                name,
                within,
                extra={"event": "fleet.name_held", "instance": name},
            )
        await anyio.sleep(min(NAME_RETRY, left))


def name_lock(journal: Journal, name: str, sessions: bool) -> NameLock | None:
    """The lock of ``name`` on the journal's database; ``None`` where none can be held
    (the memory journal, which cannot back a fleet; no ``flock``; PostgreSQL without
    ``sessions``: behind PgBouncer's transaction pooling a session's lock would stay
    with a pooled server connection, not with this tracker)."""
    store = journal.store
    path = getattr(store, "path", None)
    if store.kind == "sqlite" and isinstance(path, str):
        try:
            import fcntl  # noqa: F401
        except ImportError:
            return None
        return FileNameLock(path, name)
    if sessions and isinstance(store, LocksNames):
        return store.name_lock(name)
    if store.kind == "postgresql":
        logger.warning(
            "instance name %r is not checked for another live holder: a session lock"
            " cannot be held through PgBouncer's transaction pooling (journal_poll)",
            name,
            extra={"event": "fleet.name_unchecked", "instance": name},
        )
    return None


async def lease_name(
    journal: Journal,
    instance: str | None,
    stack: contextlib.AsyncExitStack,
    *,
    within: float,
    sessions: bool = True,
) -> LeaseName:
    """The name a tracker leases orders under: ``instance`` when given (held until
    ``stack`` closes, once the fleet's tasks have ended; waited for up to ``within``
    s), else a slot of the SQLite file (held likewise), else a new name.
    ``sessions``: the database keeps a session's lock (not behind PgBouncer's
    transaction pooling)."""
    if instance is not None:
        lock = name_lock(journal, instance, sessions)
        if lock is None:
            return LeaseName(instance, fresh=False)
        stack.callback(lock.close)
        await hold_name(lock, instance, within)
        return LeaseName(instance, fresh=False, keep=lock.keep)
    path = getattr(journal.store, "path", None)
    if journal.store.kind == "sqlite" and isinstance(path, str):
        held = await anyio.to_thread.run_sync(hold_sqlite_slot, path)
        if held is not None:
            name, handle = held
            stack.callback(handle.close)
            return LeaseName(name, fresh=False)
    return LeaseName(new_owner(), fresh=True)
