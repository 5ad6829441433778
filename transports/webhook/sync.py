"""The webhook receiver for synchronous code: a WSGI view (Django, Flask), a script.

The same checks, journal steps and answers as
:class:`~transports.webhook.receiver.WebhookReceiver`, called from plain
threads: the journal's synchronous steps
(:class:`~transports.journal.SyncJournal`), a plain-function handler, and no
event loop, so a worker process pays no loop start per delivery and nothing
is bound to a loop that a request does not own.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from types import TracebackType

from orderfsm.callables import require_ran
from orderfsm.errors import JournalError, JournalOpenFailed
from orderfsm.interface import ObservationSink
from orderfsm.journal import JournalSettings, Reply
from transports.journal import Journal, SyncJournal, open_journal
from transports.webhook.answers import ACCEPTED, STORE_FAILED, WebhookAnswer
from transports.webhook.checks import Headers, Verified
from transports.webhook.counters import ReceiverCounters
from transports.webhook.events import journal_failed, log_answer
from transports.webhook.handlers import (
    TransactionalHandler,
    check_handlers,
    handler_failed,
    ran,
    transactional_work,
)
from transports.webhook.networks import Network
from transports.webhook.receiver_base import DEFAULT_MAX_BODY, ReceiverBase
from transports.webhook.records import Notification

SyncHandler = Callable[[Notification], None]
"""A plain function: returning means 204; a ``WebhookError`` answers 400 (a refusal,
stored); anything else 500, and Xsolla delivers again.  At least once, like the async
receiver's plain handler; the transactional form is exactly once."""

SyncStore = SyncJournal | Journal | str | os.PathLike[str] | None


class SyncWebhookReceiver(ReceiverBase):
    """``receiver.handle(headers, body, peer)`` from any thread, answered like the async one.

    ``store`` is a URL (memory by default, a path or ``sqlite:///...``,
    ``postgresql://...``), a :class:`~transports.journal.SyncJournal`, or a
    :class:`~transports.journal.Journal` (its ``.sync`` face is used).  A URL's
    journal is opened on the first delivery (in each worker process, after a
    pre-forking server forks) or by :meth:`open`, and closed by :meth:`close`;
    a process forked after the receiver was made opens a journal of its own,
    and counts its own deliveries (:func:`_after_fork_in_child`).

    ``sink`` receives the same observations as the async receiver's, stamped
    with ``time.monotonic()`` (asyncio's clock): hand it a thread-safe sink,
    such as :class:`orderfsm.blocking.Tracker`, which stamps them again on its
    own loop.  With a SQLite or PostgreSQL journal the status of an order the
    fleet tracks is also written in the journal's orders in the claim's
    transaction (``record_orders``), as the async receiver does.
    """

    def __init__(
        self,
        secret: str | bytes,
        handler: SyncHandler | None = None,
        *,
        transactional: TransactionalHandler | None = None,
        store: SyncStore = None,
        settings: JournalSettings | None = None,
        sink: ObservationSink | None = None,
        max_body_size: int = DEFAULT_MAX_BODY,
        allowed_networks: Iterable[str | Network] | None = None,
        record_orders: bool = True,
    ) -> None:
        super().__init__(
            secret,
            sink=sink,
            max_body_size=max_body_size,
            allowed_networks=allowed_networks,
            record_orders=record_orders,
        )
        self.handler = handler
        self.transactional = transactional
        if isinstance(store, Journal):
            store = store.sync
        self._owns_journal = not isinstance(store, SyncJournal)
        self._url = store
        self._settings = settings
        self._pid = os.getpid()
        self._fork_lock = threading.Lock()
        self._parents: list[SyncJournal] = []
        self.journal: SyncJournal = (
            store if isinstance(store, SyncJournal) else open_journal(store, settings).sync
        )
        check_handlers(handler, transactional, self.journal.store.blocking, awaited=False)
        _RECEIVERS.add(self)

    def handle(self, headers: Headers, body: bytes, peer: str | None = None) -> WebhookAnswer:
        """Answer one delivery; like :meth:`WebhookReceiver.handle`, never raises for what
        the sender controls and never answers 4xx for a trouble of the journal's."""
        listener = self._listener
        if listener is None:
            answer, outcome = self._answer(headers, body, peer)
        else:
            with listener.delivery() as span:
                answer, outcome = self._answer(headers, body, peer)
                span.answered(outcome, answer.status)
        self._counters.answered(outcome, answer.status)
        return answer

    def _answer(self, headers: Headers, body: bytes, peer: str | None) -> tuple[WebhookAnswer, str]:
        checked = self.check(headers, body, peer, time.monotonic())
        if not isinstance(checked, Verified):
            return checked.answer, checked.outcome
        answer, _, outcome = self._handle_verified(checked)
        log_answer(checked, answer, outcome, peer)
        return answer, outcome

    def handle_verified(self, checked: Verified) -> tuple[WebhookAnswer, bool]:
        """Claim, run the handler once, record; the answer and whether the handler ran."""
        answer, ran, _ = self._handle_verified(checked)
        return answer, ran

    def _handle_verified(self, checked: Verified) -> tuple[WebhookAnswer, bool, str]:
        """The answer, whether the handler ran, and the delivery's outcome (as the async
        receiver counts it: a busy duplicate's 5xx is a duplicate, not a journal failure)."""
        try:
            self._after_fork()
        except JournalError as exc:
            journal_failed("before the handler", exc, checked)
            return STORE_FAILED, False, "journal_failed"
        if self.transactional is not None:
            return self._handle_in_transaction(checked)
        started = time.perf_counter()
        try:
            notes = self._order_notes(checked.notification, self.journal.store)
            begun = self.journal.begin(checked.delivery, STORE_FAILED, notes)
        except JournalError as exc:
            self._journal_used(started, failed=True)
            journal_failed("before the handler", exc, checked)
            return STORE_FAILED, False, "journal_failed"
        if isinstance(begun, Reply):
            self._journal_used(started, failed=False)
            return begun.answer, False, "duplicate"
        lag = time.perf_counter() - started
        with self.journal.renewer.held(begun.key, begun.attempt):  # until recorded
            answer, error = self._dispatch(checked.notification)
            started = time.perf_counter() - lag
            try:
                recorded = self.journal.settle(begun, answer, error, STORE_FAILED)
            except JournalError as exc:
                self._journal_used(started, failed=True)
                journal_failed("recording the answer", exc, checked)
                return STORE_FAILED, True, "journal_failed"
        self._journal_used(started, failed=False)
        return recorded, True, ran(recorded)

    def _handle_in_transaction(self, checked: Verified) -> tuple[WebhookAnswer, bool, str]:
        assert self.transactional is not None
        store = self.journal.store
        notes = self._order_notes(checked.notification, store)
        handler_seconds: list[float] = []
        work = transactional_work(
            self.transactional, checked.notification, notes, store, handler_seconds
        )
        started = time.perf_counter()
        try:
            result = self.journal.run(checked.delivery, work, STORE_FAILED)
        except JournalError as exc:
            self._journal_used(started + sum(handler_seconds), failed=True)
            journal_failed("around the transactional handler", exc, checked)
            return STORE_FAILED, False, "journal_failed"
        return self._transaction_ended(result, started, handler_seconds)

    def _dispatch(self, notification: Notification) -> tuple[WebhookAnswer, str | None]:
        if self.handler is None:
            return ACCEPTED, None
        started = time.perf_counter()
        try:
            require_ran(self.handler(notification), awaited=False)
        except Exception as exc:
            return handler_failed(exc, notification)
        finally:
            self._counters.handler_ran(time.perf_counter() - started)
        return ACCEPTED, None

    def _after_fork(self) -> None:
        """In a process forked after this receiver was made (an app preloaded by gunicorn
        ``--preload`` or uWSGI, maybe with its journal opened there), a journal of its
        own: the parent's connections and pools are the parent's, and two workers
        talking on one PostgreSQL socket read each other's replies (a grant twice).
        The parent's is kept, neither closed nor left to the garbage collector: a
        PostgreSQL connection finalized here would end the session it shares with
        the parent (libpq says goodbye on the socket).  A SQLite store's copies were
        taken from it at the fork and are closed before this process opens its own
        (:mod:`~transports.journal.fork_gate`).  A journal the application
        gave (not a URL) cannot be made again here: refused, never shared."""
        if self._pid == os.getpid():
            return
        if not self._owns_journal:
            raise JournalOpenFailed(
                "this receiver's journal was made in another process (before a fork): give"
                " the receiver a URL, or make the journal in each worker"
            )
        with self._fork_lock:
            if self._pid != os.getpid():
                assert not isinstance(self._url, (SyncJournal, Journal))
                self._parents.append(self.journal)
                self.journal = open_journal(self._url, self._settings).sync
                self._pid = os.getpid()

    def _forked(self) -> None:
        """In the child, at the fork itself (see :func:`_after_fork_in_child`): the locks
        a delivery takes here before the journal are new, free ones, and the counts start
        from nothing, this process's own."""
        self._fork_lock = threading.Lock()
        self._counters = ReceiverCounters()

    def open(self) -> None:
        """Open the journal now, so start-up problems raise here rather than answer 5xx."""
        self._after_fork()
        self.journal.open()

    def close(self) -> None:
        """Close the journal this process opened; in a process forked since, with none
        of its own yet, nothing (the parent's is the parent's: see ``_after_fork``)."""
        if self._owns_journal and self._pid == os.getpid():
            self.journal.close()

    def __enter__(self) -> SyncWebhookReceiver:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_RECEIVERS: weakref.WeakSet[SyncWebhookReceiver] = weakref.WeakSet()
"""This process's receivers, held weakly: one hook for them all (a hook cannot be
unregistered, so one per receiver would pile up), and none kept alive by it."""


def _after_fork_in_child() -> None:
    """A lock is copied into a child as it was at the fork: one that another thread of
    the parent held then (a metrics scrape reading ``stats()``, a delivery counting its
    answer) stays held in the child, by a thread that does not exist there, and the
    child's first delivery waits for it forever (a gunicorn ``--preload`` worker forked
    while the master's exporter thread scraped).  So every receiver gets new locks in
    the child, at the fork, before any thread can take them; and new counts, as a
    count caught half-way is not carried over, and a worker's metrics are its own (the
    master's deliveries are not counted again in each worker).  The journal is not
    touched here: the first delivery opens the child's own (``_after_fork``), as a
    child that never delivers must not connect."""
    for receiver in list(_RECEIVERS):
        receiver._forked()


if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = ["SyncHandler", "SyncStore", "SyncWebhookReceiver"]
