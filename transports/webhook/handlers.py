"""The application's webhook handlers: their two kinds, the checks made when a
receiver is built, and what a handler's return or exception answers.

Shared by the async receiver (:mod:`~transports.webhook.receiver`) and the
synchronous one (:mod:`~transports.webhook.sync`), so both answer a handler's
outcome the same way.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from orderfsm.callables import require_plain, require_ran, require_runs
from orderfsm.errors import WebhookError
from transports.journal.base import Store as JournalStore
from transports.journal.base import Work
from transports.journal.orders import CHANNEL, Note, record
from transports.webhook.answers import (
    ACCEPTED,
    HANDLER_FAILED,
    WebhookAnswer,
)
from transports.webhook.checks import refusal
from transports.webhook.records import (
    Notification,
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

logger = logging.getLogger("orderfsm.webhook")


def failure_text() -> str:
    """The current exception, as a delivery record keeps it."""
    return traceback.format_exc()


def check_handlers(
    handler: object | None, transactional: object | None, blocking: bool, *, awaited: bool
) -> None:
    """One handler at most, the transactional one only over a database, and none that
    would never run: a generator function anywhere, an ``async def`` where the receiver
    only calls (``awaited`` false; the transactional handler is always called, in a
    worker thread).  Where the receiver awaits, any other callable will do: what it
    returns is awaited if it can be (see :mod:`orderfsm.callables` for what the wrong
    kind costs)."""
    if handler is not None and transactional is not None:
        raise ValueError("give either handler or transactional, not both")
    if handler is not None:
        (require_runs if awaited else require_plain)(handler, "the webhook handler")
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
    run: Callable[[Notification, Any], object] = transactional  # what it returns is checked

    def facts(connection: Any) -> None:
        # The channel is the schema's, known once the store is open: the work is built
        # before that on a receiver's first delivery.
        channel = str(getattr(store, "channel", CHANNEL))
        record(connection, store.kind, notes, time.time(), channel, tracked_only=True)

    def handle(connection: Any, attempt: int) -> tuple[WebhookAnswer, str | None]:
        started = time.perf_counter()
        try:
            require_ran(run(notification, connection), awaited=False)
        except Exception as exc:
            return handler_failed(exc, notification)
        finally:
            if timing is not None:
                timing.append(time.perf_counter() - started)
        return ACCEPTED, None

    return Work(handle, facts if notes else None)


def ran(answer: WebhookAnswer) -> str:
    """The outcome of a delivery whose handler ran."""
    if answer.status < 300:
        return "handled"
    return "refused" if answer.status < 500 else "failed"
