"""The framework-neutral webhook receiver: headers and raw bytes in, an answer out.

The order of checks is the safe one: the size before reading anything, the
signature before parsing or judging the peer (a signed delivery from outside
the allow-list gets a 5xx, never the 4xx that can refund), and the
application's handler before any 2xx.  Which delivery runs the handler, and
what every other delivery of the same notification answers, is the journal's business
(``transports.journal``): one claim per notification across every process
and host sharing the journal, the first answer stored and repeated.  The checks
before the journal are :mod:`~transports.webhook.receiver_base`'s, what a handler's
outcome answers :mod:`~transports.webhook.handlers`'.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Iterable
from types import TracebackType

import anyio

from orderfsm.callables import require_ran
from orderfsm.errors import JournalError
from orderfsm.interface import ObservationSink
from orderfsm.journal import Reply
from transports.journal import Journal, open_journal
from transports.webhook.answers import ACCEPTED, STORE_FAILED, WebhookAnswer
from transports.webhook.checks import Headers, Verified
from transports.webhook.events import journal_failed, log_answer
from transports.webhook.handlers import (
    Handler as Handler,  # re-exported: the package and applications import it from here
)
from transports.webhook.handlers import (
    TransactionalHandler as TransactionalHandler,  # re-exported, as Handler
)
from transports.webhook.handlers import check_handlers, handler_failed, ran, transactional_work
from transports.webhook.networks import Network
from transports.webhook.receiver_base import (
    DEFAULT_MAX_BODY as DEFAULT_MAX_BODY,  # re-exported, as Handler
)
from transports.webhook.receiver_base import ReceiverBase
from transports.webhook.records import Notification

Store = Journal | str | os.PathLike[str] | None


class WebhookReceiver(ReceiverBase):
    """Verifies, deduplicates (through the journal) and dispatches Xsolla notifications.

    ``store`` is a :class:`~transports.journal.Journal`, or a URL for one
    (a path or ``sqlite:///...`` for SQLite, ``postgresql://...``); without
    it the journal is in memory (one process, forgotten on restart).  A
    journal given as a URL is opened on first use (or by ``async with
    receiver``) and closed by :meth:`aclose`; a journal object stays the
    caller's to close.

    ``sink`` (optional) receives an :class:`Observation` for every verified
    ``order_paid`` (status ``paid``) and ``order_canceled`` (``canceled``),
    so trackers in the same process learn from webhooks too.  With a SQLite or
    PostgreSQL journal the status of an order the fleet tracks is also written
    in the journal's orders, in the claim's own transaction (``record_orders``),
    so trackers of a fleet sharing the journal learn it on any host; an order
    nobody tracks yet costs no write: its first track reads its deliveries.
    """

    def __init__(
        self,
        secret: str | bytes,
        handler: Handler | None = None,
        *,
        transactional: TransactionalHandler | None = None,
        store: Store = None,
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
        self._owns_journal = not isinstance(store, Journal)
        self.journal: Journal = store if isinstance(store, Journal) else open_journal(store)
        check_handlers(handler, transactional, self.journal.store.blocking, awaited=True)

    async def handle(self, headers: Headers, body: bytes, peer: str | None = None) -> WebhookAnswer:
        """Answer one delivery.  Never raises for anything the sender controls, and
        never answers 4xx for a trouble of ours (the journal's): that is a 5xx."""
        listener = self._listener
        if listener is None:
            answer, outcome = await self._answer(headers, body, peer)
        else:
            with listener.delivery() as span:
                answer, outcome = await self._answer(headers, body, peer)
                span.answered(outcome, answer.status)
        self._counters.answered(outcome, answer.status)
        return answer

    async def _answer(
        self, headers: Headers, body: bytes, peer: str | None
    ) -> tuple[WebhookAnswer, str]:
        """The answer and the delivery's outcome (one of ``DELIVERY_OUTCOMES``)."""
        checked = self.check(headers, body, peer, anyio.current_time())
        if not isinstance(checked, Verified):
            return checked.answer, checked.outcome
        answer, _, outcome = await self._handle_verified(checked)
        log_answer(checked, answer, outcome, peer)
        return answer, outcome

    async def handle_verified(self, checked: Verified) -> tuple[WebhookAnswer, bool]:
        """The journal's part: claim, run the handler once, record; returns the answer
        and whether the handler ran for this delivery (a replay reports it)."""
        answer, ran, _ = await self._handle_verified(checked)
        return answer, ran

    async def _handle_verified(self, checked: Verified) -> tuple[WebhookAnswer, bool, str]:
        """The answer, whether the handler ran, and the delivery's outcome."""
        if self.transactional is not None:
            return await self._handle_in_transaction(checked)
        started = time.perf_counter()
        try:
            notes = self._order_notes(checked.notification, self.journal.store)
            begun = await self.journal.begin(checked.delivery, STORE_FAILED, notes)
        except JournalError as exc:
            self._journal_used(started, failed=True)
            journal_failed("before the handler", exc, checked)
            return STORE_FAILED, False, "journal_failed"
        if isinstance(begun, Reply):
            self._journal_used(started, failed=False)
            return begun.answer, False, "duplicate"
        lag = time.perf_counter() - started
        # The claim is renewed until its answer is recorded, not only while the
        # handler runs: a slow write of the answer must not let a duplicate in.
        with self.journal.sync.renewer.held(begun.key, begun.attempt):
            answer, error = await self._dispatch(checked.notification)
            started = time.perf_counter() - lag
            try:
                # The handler ran: its answer is recorded even if the request is
                # cancelled now (the server stopping, the client gone), or the retry
                # would run it again.  Bounded all the same: the write's patience is
                # the lease.
                with anyio.CancelScope(shield=True):
                    recorded = await self.journal.settle(begun, answer, error, STORE_FAILED)
            except JournalError as exc:
                self._journal_used(started, failed=True)
                # The handler ran, but its answer is not recorded: the retry runs it
                # again once the lease (no longer renewed) runs out (the transactional
                # handler avoids this).
                journal_failed("recording the answer", exc, checked)
                return STORE_FAILED, True, "journal_failed"
        self._journal_used(started, failed=False)
        return recorded, True, ran(recorded)

    async def _dispatch(self, notification: Notification) -> tuple[WebhookAnswer, str | None]:
        if self.handler is None:
            return ACCEPTED, None
        started = time.perf_counter()
        try:
            result = self.handler(notification)
            if inspect.isawaitable(result):  # an async def, or a lambda that makes one
                await result
            else:
                require_ran(result, awaited=True)
        except Exception as exc:
            return handler_failed(exc, notification)
        finally:
            self._counters.handler_ran(time.perf_counter() - started)
        return ACCEPTED, None

    async def _handle_in_transaction(self, checked: Verified) -> tuple[WebhookAnswer, bool, str]:
        transactional = self.transactional
        assert transactional is not None
        notification = checked.notification
        handler_seconds: list[float] = []
        """Measured in the worker thread, counted back on the loop."""

        store = self.journal.store
        notes = self._order_notes(notification, store)
        work = transactional_work(transactional, notification, notes, store, handler_seconds)

        started = time.perf_counter()
        try:
            result = await self.journal.run(checked.delivery, work, STORE_FAILED)
        except JournalError as exc:
            self._journal_used(started + sum(handler_seconds), failed=True)
            journal_failed("around the transactional handler", exc, checked)
            return STORE_FAILED, False, "journal_failed"
        return self._transaction_ended(result, started, handler_seconds)

    async def open(self) -> None:
        """Open the journal now, so start-up problems raise here rather than answer 5xx."""
        await self.journal.open()

    async def aclose(self) -> None:
        if self._owns_journal:
            await self.journal.aclose()

    async def __aenter__(self) -> WebhookReceiver:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
