"""``os.fork()`` waits until none of the journal's SQLite work is under way in this process.

SQLite's unix VFS keeps, once per process and shared by every connection to a
file, which locks the process holds on it and on its WAL index (the ``-shm``
mapping), behind mutexes of its own.  A forked child gets that memory as it was,
but not the ``fcntl`` locks it describes (they are never inherited).  A child
forked while a thread of the parent was inside a transaction or a read of the
journal's file believes it still holds what that thread held (the write lock, a
read mark, the WAL index's mutex): its own new connections to the file answer
"database is locked" for good, or wait forever on the mutex (measured: 40 forks
in 100 with two threads delivering, 13 in 200 with two threads only reading).  A
pre-fork server whose master writes (a tracker, the background prune) and
``multiprocessing``'s ``fork`` meet it.

So every use of the journal's SQLite connections holds :data:`GATE` shared, and
a fork (``os.register_at_fork``) waits until none is under way, holding new ones
back until it returns.  Each use ends by its own deadline, so a fork waits at
most that long: a delivery's write or read within the journal's ``wait`` (a
write queued behind another process's lock waits out its deadline), the
transactional handler's own run (it runs inside the write transaction), a first
open at start-up its patience (30 s).  In the child, the stores holding the
parent's connections are told (:meth:`ForkedAway.forked_away`): the SQLite
store closes its copies before the child opens a connection of its own
(:data:`~transports.journal.sqlite_connections.INHERITED`).

A fork from a thread that is itself inside (a transactional handler that
forks) waits for nothing: it would wait for itself, or for threads that wait
for it.  Its child gets a copy of that transaction, which it must neither
commit nor close (the parent commits it): the child must exec or leave with
``os._exit()`` without returning into it, as ``multiprocessing`` does
(``sys.exit()`` would close the copies at shutdown, a rollback of the parent's
transaction); the journal refuses the copy's
commit there (``JournalClosed``), and the child's own journal on that file
cannot write (each write answers 5xx).

``subprocess`` without ``preexec_fn`` runs none of these hooks (it execs at
once) and waits for nothing.  SQLite used outside the journal's connections (the
application's, Django's) is not gated.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Protocol, cast


class ForkedAway(Protocol):
    """What holds the journal's connections, told in a forked child that they are the
    parent's; ``inside``: the fork came from inside a use of them."""

    def forked_away(self, inside: bool) -> None: ...


class _Owned(Protocol):
    def _is_owned(self) -> bool: ...


class ForkGate:
    """``with GATE.held():`` around each use; shared by every thread, closed by a fork.

    Each thread holds a re-entrant lock of its own while inside (a read inside a
    write transaction does not wait for a fork that waits for it): entering is one
    uncontended lock.  A fork takes every thread's lock but its own."""

    def __init__(self) -> None:
        self._mine = threading.local()
        self._fresh()

    def _fresh(self) -> None:
        self._joining = threading.Lock()  # a thread's first use, and a fork, take it
        self._threads: weakref.WeakSet[threading.RLock] = weakref.WeakSet()
        self._held: list[threading.RLock] = []
        self._holders: weakref.WeakSet[ForkedAway] = weakref.WeakSet()

    def held(self) -> threading.RLock:
        """This thread's share, to hold with ``with`` around one use of a connection."""
        try:
            lock: threading.RLock = self._mine.lock
        except AttributeError:
            lock = threading.RLock()
            with self._joining:
                self._threads.add(lock)
            self._mine.lock = lock
        return lock

    def tell_at_fork(self, holder: ForkedAway) -> None:
        """``holder.forked_away(inside)`` in each child forked from now on (held weakly)."""
        self._holders.add(holder)

    def _inside(self) -> bool:
        own = getattr(self._mine, "lock", None)
        # The C lock's own test, which threading.Condition uses too.
        return own is not None and cast(_Owned, own)._is_owned()

    def _before(self) -> None:
        self._joining.acquire()
        if self._inside():
            return
        own = getattr(self._mine, "lock", None)
        for lock in list(self._threads):
            if lock is not own:
                lock.acquire()  # waits for that thread's use under way, then holds it back
                self._held.append(lock)

    def _after_in_parent(self) -> None:
        held, self._held = self._held, []
        for lock in held:
            lock.release()
        self._joining.release()

    def _after_in_child(self) -> None:
        """New locks, none held by a thread that is not here; every holder told."""
        inside = self._inside()
        own = getattr(self._mine, "lock", None)
        holders = list(self._holders)
        self._fresh()
        if own is not None:
            self._threads.add(own)  # still held by this thread if it forked from inside
        for holder in holders:
            self._holders.add(holder)
            holder.forked_away(inside)


GATE = ForkGate()
"""The one gate of this process: a fork waits for every store's uses."""

if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(
        before=GATE._before,
        after_in_parent=GATE._after_in_parent,
        after_in_child=GATE._after_in_child,
    )
