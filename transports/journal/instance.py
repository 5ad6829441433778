"""The name a tracker leases orders under in the journal: the same after a restart.

A restarting instance takes back at once the orders its previous life held,
whose leases are still live (a SIGKILLed process renews nothing, yet its
leases run on for a lease): that needs the same name after a restart, and
never one name for two live instances, or both would follow one order.

``Tracker(instance=NAME)`` names it (a StatefulSet pod, a host that runs one
tracker: the deployer keeps it unique).  Without a name, on SQLite, the
instance holds a *slot* of the database file: an OS lock (``flock``) on a
small file beside it, ``<database>-instance-<n>.lock``, which the kernel
drops when the process ends, even by SIGKILL.  The first process to open
the file after another's death gets that slot, so a single application
restarted mid-purchase takes its orders back at once, and two live trackers
(two processes, or two in one process: the lock is per open file) never
share a slot.  On PostgreSQL without a name (instances on other hosts, no
shared file system) the name is new per tracker: a restarted instance's
orders are adopted once their leases run out, by it or by the others.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import IO

import anyio.to_thread

from transports.journal.core import new_owner
from transports.journal.journal import Journal

logger = logging.getLogger("orderfsm.fleet")

SLOTS = 64
"""Trackers on one SQLite file that each get a slot; more get a new name each."""


def hold_sqlite_slot(path: str) -> tuple[str, IO[bytes]] | None:
    """The first free slot of the SQLite database at ``path``: its name and the open
    lock file holding it (closing it frees the slot).  ``None`` where file locks are
    not available (Windows) or every slot is held."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; a name of its own per tracker
        return None
    path = os.path.realpath(path)  # one file reached by two paths is one set of slots
    for slot in range(SLOTS):
        try:
            handle = open(f"{path}-instance-{slot}.lock", "ab")  # noqa: SIM115 (held open)
        except OSError as exc:
            logger.warning("no instance slot beside %s: %s", path, exc)
            return None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by a live tracker
            handle.close()
            continue
        return f"sqlite-slot-{slot}", handle
    logger.warning("every instance slot of %s is held: a new name for this tracker", path)
    return None


async def lease_name(
    journal: Journal, instance: str | None, stack: contextlib.AsyncExitStack
) -> str:
    """The name a tracker leases orders under: ``instance`` when given, else a slot of
    the SQLite file (held until ``stack`` closes, once the fleet's tasks have ended),
    else a new name."""
    if instance is not None:
        return instance
    path = getattr(journal.store, "path", None)
    if journal.store.kind == "sqlite" and isinstance(path, str):
        held = await anyio.to_thread.run_sync(hold_sqlite_slot, path)
        if held is not None:
            name, handle = held
            stack.callback(handle.close)
            return name
    return new_owner()
