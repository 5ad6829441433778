"""Commit concurrent units of work together, on one connection.

SQLite has one writer at a time and each commit of ``synchronous=FULL``
waits for the disk, so committing each delivery alone caps a host at a few
thousand commits a second and makes processes fight for the lock.  Here the
thread that gets the connection runs every unit of work queued meanwhile in
one transaction, each in a savepoint of its own (one failing rolls back only
itself), and commits once; the others find their work done.  No extra
thread: whoever arrives first leads.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Generic, TypeVar

from orderfsm.errors import JournalUnavailable

T = TypeVar("T")

MAX_BATCH = 64
"""Units of work per transaction, at most: a bound on one commit's latency."""


class _Job(Generic[T]):
    __slots__ = ("deadline", "done", "durable", "error", "finished", "result", "work")

    def __init__(self, work: Callable[[], T], deadline: float, durable: bool) -> None:
        self.work = work
        self.deadline = deadline
        self.durable = durable
        self.done = threading.Event()
        self.finished = False
        self.result: Any = None
        self.error: BaseException | None = None

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        result: T = self.result
        return result


class GroupCommit:
    """``run(work, deadline)`` runs ``work`` in a transaction, maybe beside others.

    ``begin(deadline, durable)`` opens a write transaction (raising
    :class:`JournalUnavailable` past the deadline) whose commit waits for the
    disk when any of its work asked for it; ``execute(sql)`` runs a statement
    without parameters (savepoints, commit, rollback).  ``held()`` is held from
    before the connection's lock is asked for until the batch ends (the fork gate,
    :mod:`~transports.journal.fork_gate`): its lock is never held outside it.
    """

    def __init__(
        self,
        begin: Callable[[float, bool], None],
        execute: Callable[[str], object],
        held: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
    ) -> None:
        self._begin = begin
        self._execute = execute
        self._held = held
        self._lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Job[Any]] = []
        self.batches = 0
        self.jobs = 0

    def run(self, work: Callable[[], T], deadline: float, durable: bool = True) -> T:
        job: _Job[T] = _Job(work, deadline, durable)
        with self._queue_lock:
            self._queue.append(job)
        may_lead = True  # once even with no patience left: a wait of 0 tries once
        while not job.finished:
            patience = deadline - time.monotonic()
            if (may_lead or patience > 0) and self._led(job, patience):
                may_lead = False
                continue
            may_lead = False
            with self._queue_lock:
                if job in self._queue:
                    self._queue.remove(job)
                    raise JournalUnavailable("timed out waiting for the journal's writer")
                woken = job.done
            woken.wait()  # a leader took it: it finishes it, or hands it back
        return job.outcome()

    def _led(self, job: _Job[Any], patience: float) -> bool:
        """Whether this thread got the connection within ``patience`` (and led a batch)."""
        with self._held():
            if not self._lock.acquire(timeout=max(patience, 0.0)):
                return False
            try:
                if not job.finished:
                    self._lead(job)
            finally:
                self._lock.release()
        return True

    def _lead(self, own: _Job[Any]) -> None:
        with self._queue_lock:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        handed_back: list[_Job[Any]] = []
        try:
            handed_back = self._run_batch(batch, own)
        finally:
            for job in batch:
                if job not in handed_back:
                    self._finish(job)

    def _hand_back(self, jobs: list[_Job[Any]]) -> None:
        """Queue ``jobs`` again and wake their callers, one of whom leads them next."""
        with self._queue_lock:
            self._queue[:0] = jobs
            for job in jobs:
                woken, job.done = job.done, threading.Event()
                woken.set()

    @staticmethod
    def _finish(job: _Job[Any]) -> None:
        job.finished = True
        job.done.set()

    def _run_batch(self, batch: list[_Job[Any]], own: _Job[Any]) -> list[_Job[Any]]:
        """Run ``batch`` in one transaction; what it returns was handed back, not run."""
        while True:
            try:
                soonest = min(min(job.deadline for job in batch), own.deadline)
                self._begin(soonest, any(j.durable for j in batch))
                break
            except BaseException as exc:
                # The lock stayed busy past the nearest deadline: only the jobs whose own
                # deadline has passed fail; the others try again (an answer given 5xx
                # because a claim beside it was in a hurry is a handler run again).
                now = time.monotonic()
                late = [job for job in batch if job.deadline <= now]
                timed_out = isinstance(exc, Exception) and (bool(late) or own.deadline <= now)
                if not timed_out:
                    late = batch  # not a timeout: every job meets the same trouble
                for job in late:
                    job.error = exc
                    self._finish(job)
                batch = [job for job in batch if job.error is None]
                if not batch:
                    return []
                if own.deadline <= now:
                    # This thread's caller has given up: it answers now, and a caller
                    # still waiting leads the rest (or they waited past their own
                    # deadlines for a leader in no hurry of theirs).
                    self._hand_back(batch)
                    return batch
        self.batches += 1
        self.jobs += len(batch)
        try:
            if len(batch) == 1:
                (job,) = batch
                job.result = job.work()
            else:
                for job in batch:
                    self._execute("SAVEPOINT job")
                    try:
                        job.result = job.work()
                    except Exception as exc:
                        try:
                            self._execute("ROLLBACK TO job")
                        except Exception:
                            # SQLite ended the transaction itself (disk full, I/O error):
                            # say what did it, not "no such savepoint".
                            raise exc from None
                        job.error = exc
                    self._execute("RELEASE job")
            self._execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(Exception):
                self._execute("ROLLBACK")
            for job in batch:
                if job.error is None:
                    job.error = exc
                job.result = None
        return []
