"""The framework-neutral webhook receiver: headers and raw bytes in, an answer out.

The order of checks is the safe one: the peer and the size before reading
anything, the signature before parsing, and the application's handler before
any 2xx.  Which delivery runs the handler, and what every other delivery of
the same notification answers, is the journal's business
(``transports.journal``): one claim per notification across every process
and host sharing the journal, the first answer stored and repeated.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any

import anyio

from orderfsm.callables import require_plain
from orderfsm.core import Observation, Status
from orderfsm.errors import JournalError, WebhookError
from orderfsm.interface import WEBHOOK, ObservationSink
from orderfsm.journal import Reply
from transports.journal import Journal, Ran, open_journal
from transports.journal.base import Store as JournalStore
from transports.journal.base import Work
from transports.journal.orders import CHANNEL, Note, record
from transports.webhook.answers import (
    ACCEPTED,
    HANDLER_FAILED,
    STORE_FAILED,
    WebhookAnswer,
)
from transports.webhook.checks import Headers, Refused, Verified, refusal, verified
from transports.webhook.counters import DeliveryListener, ReceiverCounters, ReceiverStats
from transports.webhook.errors import BodyTooLarge, ForbiddenSource
from transports.webhook.events import journal_failed, log_answer
from transports.webhook.networks import AllowList, Network
from transports.webhook.records import (
    Notification,
    OrderCanceled,
    OrderPaid,
    UnknownNotification,
)

Handler = Callable[[Notification], Awaitable[None]]
"""The application's reaction to a verified notification, run with no database lock
held.  Returning means success (204).  Raising a
:class:`~orderfsm.errors.WebhookError` answers 400 with its code (a deliberate,
final refusal); raising anything else answers 500, and Xsolla delivers again
later."""

TransactionalHandler = Callable[[Notification, Any], None]
"""The exactly-once form: a synchronous function given the notification and the
journal's open DB-API connection (``sqlite3.Connection`` or
``psycopg.Connection``), run in a worker thread inside the transaction that
records the answer.  Its writes commit with the answer, or not at all; they
are kept only when it returns (a refusal rolls them back).  It must not
commit or roll back itself."""

Store = Journal | str | os.PathLike[str] | None

DEFAULT_MAX_BODY = 256 * 1024
"""Real notifications are a few kilobytes; bundles with many items stay far below this."""

logger = logging.getLogger("orderfsm.webhook")


def failure_text() -> str:
    """The current exception, as a delivery record keeps it."""
    return traceback.format_exc()


IGNORED = Refused(ACCEPTED, "ignored")
"""What a verified notification of a type we do not handle gets: 204, nothing else."""


class ReceiverBase:
    """What every receiver shares, whatever its journal and its loop (none, for
    :class:`~transports.webhook.sync.SyncWebhookReceiver`): the secret, the
    limits, the sink, the checks a delivery passes before the journal, and the
    counters behind :meth:`stats`."""

    journal: Any
    """The receiver's journal (async or synchronous face); both have ``display``."""

    def __init__(
        self,
        secret: str | bytes,
        *,
        sink: ObservationSink | None = None,
        max_body_size: int = DEFAULT_MAX_BODY,
        allowed_networks: Iterable[str | Network] | None = None,
        record_orders: bool = True,
    ) -> None:
        if not secret:
            raise ValueError("the webhook secret must not be empty")
        self._secret = secret
        self.record_orders = record_orders
        self.sink = sink
        self.max_body_size = max_body_size
        self.allow_list = AllowList(allowed_networks) if allowed_networks is not None else None
        self._counters = ReceiverCounters()
        self._listener: DeliveryListener | None = None

    def stats(self) -> ReceiverStats:
        """Deliveries by outcome and by answer, the handler's and the journal's time, the
        journal's outages: counted as deliveries are answered, copied out now."""
        return self._counters.snapshot(self.journal.display)

    def instrument(self, listener: DeliveryListener | None) -> None:
        """Tell ``listener`` about each delivery answered through ``handle`` (what
        :mod:`orderfsm.metrics.otel` makes spans of); ``None`` stops it."""
        self._listener = listener

    def precheck(self, peer: str | None, content_length: int | None) -> WebhookAnswer | None:
        """A refusal that needs no body (peer not allowed, declared size too big), or None.

        Adapters call it before reading the body; ``handle`` repeats it.
        """
        early = self._precheck(peer, content_length)
        if early is None:
            return None
        self._counters.answered(early.outcome, early.answer.status)
        return early.answer

    def _precheck(self, peer: str | None, content_length: int | None) -> Refused | None:
        if self.allow_list is not None and not self.allow_list.allows(peer):
            forbidden = ForbiddenSource(f"source address {peer} is not allowed")
            return Refused(refusal(forbidden), "forbidden")
        if content_length is not None and content_length > self.max_body_size:
            return Refused(self._too_large(), "too_large")
        return None

    def too_large(self) -> WebhookAnswer:
        """The 413 for a body found too large while reading it."""
        answer = self._too_large()
        self._counters.answered("too_large", answer.status)
        return answer

    def _too_large(self) -> WebhookAnswer:
        return refusal(BodyTooLarge(f"body exceeds {self.max_body_size} bytes"))

    def check(
        self, headers: Headers, body: bytes, peer: str | None, at: float
    ) -> Verified | Refused:
        """Everything before the journal: the answer when there is nothing for the
        handler (a refusal, a type we ignore), else the verified delivery.  A
        verified ``order_paid`` / ``order_canceled`` goes to the sink, stamped ``at``."""
        early = self._precheck(peer, len(body))
        if early is not None:
            return early
        checked = verified(self._secret, headers, body, peer)
        if not isinstance(checked, Verified):
            return checked
        self._observe(checked.notification, at)
        if isinstance(checked.notification, UnknownNotification):
            log_answer(checked, IGNORED.answer, IGNORED.outcome, peer)
            return IGNORED
        return checked

    @property
    def secret(self) -> str | bytes:
        return self._secret

    def _observe(self, notification: Notification, at: float) -> None:
        told = _status_of(notification)
        if self.sink is None or told is None:
            return
        observation = Observation(*told, source=WEBHOOK, at=at, raw=notification)
        try:
            self.sink.observe(observation)
        except Exception:
            # The sink's trouble must not turn into an answer that makes Xsolla retry.
            logger.exception(
                "the observation sink failed on %s",
                observation,
                extra={"event": "sink.failed", "order_id": observation.order_id},
            )

    def _order_notes(self, notification: Notification, store: JournalStore) -> tuple[Note, ...]:
        """The order's status, to record in the claim's transaction: trackers of a
        fleet sharing the journal learn it on any host (not in memory)."""
        told = _status_of(notification)
        if told is None or not self.record_orders or store.kind == "memory":
            return ()
        return (Note(*told, WEBHOOK, time.time()),)

    def _journal_used(self, started: float, *, failed: bool) -> None:
        self._counters.journal_used(time.perf_counter() - started, failed=failed)


def check_handlers(
    handler: object | None, transactional: object | None, blocking: bool, *, awaited: bool
) -> None:
    """One handler at most, the transactional one only over a database, and none that
    would never run: an ``async def`` where the receiver only calls (``awaited`` false;
    the transactional handler is always called, in a worker thread).  Where the
    receiver awaits, any callable will do: what it returns is awaited if it can be
    (see :mod:`orderfsm.callables` for what the wrong kind costs)."""
    if handler is not None and transactional is not None:
        raise ValueError("give either handler or transactional, not both")
    if handler is not None and not awaited:
        require_plain(handler, "the webhook handler")
    if handler is not None and not callable(handler):
        raise TypeError(f"the webhook handler must be callable, got {handler!r}")
    if transactional is not None:
        require_plain(transactional, "the transactional handler")
    if transactional is not None and not blocking:
        raise ValueError(
            "a transactional handler needs a database: pass store='sqlite:///...' "
            "or store='postgresql://...'"
        )


def handler_failed(exc: Exception, notification: Notification) -> tuple[WebhookAnswer, str]:
    """The answer to a handler that raised ``exc`` (call it in the ``except`` block): a
    :class:`WebhookError` is a deliberate refusal (400, stored, not retried), anything
    else a 500 that Xsolla retries."""
    if isinstance(exc, WebhookError):
        return refusal(exc), f"{type(exc).__name__}: {exc}"
    logger.exception(
        "the webhook handler failed on %s",
        notification.notification_type,
        extra={
            "event": "webhook.handler_failed",
            "notification_type": notification.notification_type,
        },
    )
    return HANDLER_FAILED, failure_text()


def transactional_work(
    transactional: TransactionalHandler,
    notification: Notification,
    notes: tuple[Note, ...],
    store: JournalStore,
    timing: list[float] | None = None,
) -> Work:
    """The journal's unit of work for a transactional handler: its answer and error text.
    ``notes`` (the order's status) are the delivery's facts, kept whatever the handler
    answers.  ``timing`` gets the handler's seconds."""
    channel = str(getattr(store, "channel", CHANNEL))

    def facts(connection: Any) -> None:
        record(connection, store.kind, notes, time.time(), channel)

    def handle(connection: Any, attempt: int) -> tuple[WebhookAnswer, str | None]:
        started = time.perf_counter()
        try:
            transactional(notification, connection)
        except Exception as exc:
            return handler_failed(exc, notification)
        finally:
            if timing is not None:
                timing.append(time.perf_counter() - started)
        return ACCEPTED, None

    return Work(handle, facts if notes else None)


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
    PostgreSQL journal the order's status is also recorded in the journal's
    orders, in the claim's own transaction (``record_orders``), so trackers
    of a fleet sharing the journal learn it on any host.
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
                recorded = await self.journal.settle(begun, answer, error, STORE_FAILED)
            except JournalError as exc:
                self._journal_used(started, failed=True)
                # The handler ran, but its answer is not recorded: the retry runs it
                # again once the lease (no longer renewed) runs out (the transactional
                # handler avoids this).
                journal_failed("recording the answer", exc, checked)
                return STORE_FAILED, True, "journal_failed"
        self._journal_used(started, failed=False)
        return recorded, True, _ran(recorded)

    async def _dispatch(self, notification: Notification) -> tuple[WebhookAnswer, str | None]:
        if self.handler is None:
            return ACCEPTED, None
        started = time.perf_counter()
        try:
            result = self.handler(notification)
            if inspect.isawaitable(result):  # an async def, or a lambda that makes one
                await result
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
        for seconds in handler_seconds:
            self._counters.handler_ran(seconds)
        self._journal_used(started + sum(handler_seconds), failed=False)
        if isinstance(result, Ran):
            return result.answer, True, _ran(result.answer)
        return result.answer, False, "duplicate"

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


def _status_of(notification: Notification) -> tuple[int, Status] | None:
    """The order and status a notification tells: ``paid``, or ``canceled`` (a refund)."""
    if isinstance(notification, OrderPaid):
        return notification.order_id, Status.PAID
    if isinstance(notification, OrderCanceled):
        return notification.order_id, Status.CANCELED
    return None


def _ran(answer: WebhookAnswer) -> str:
    """The outcome of a delivery whose handler ran."""
    if answer.status < 300:
        return "handled"
    return "refused" if answer.status < 500 else "failed"
