"""What every webhook receiver does before its journal: the peer, the size and the
signature checks, the observation sink, and the counters.

The async receiver (:mod:`~transports.webhook.receiver`) and the synchronous one
(:mod:`~transports.webhook.sync`) differ only in how they drive the journal and
the handler; this is the part they share.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from orderfsm.core import Observation, Status
from orderfsm.interface import WEBHOOK, ObservationSink
from orderfsm.journal import Reply
from orderfsm.journal.orders import WEBHOOK_STATUSES
from transports.journal.base import Store as JournalStore
from transports.journal.orders import Note
from transports.journal.steps import Ran
from transports.webhook.answers import (
    ACCEPTED,
    WebhookAnswer,
)
from transports.webhook.checks import Headers, Refused, Verified, refusal, verified
from transports.webhook.counters import DeliveryListener, ReceiverCounters, ReceiverStats
from transports.webhook.errors import BodyTooLarge, ForbiddenSource
from transports.webhook.events import log_answer
from transports.webhook.handlers import ran
from transports.webhook.networks import AllowList, Network
from transports.webhook.records import (
    Notification,
    OrderCanceled,
    OrderPaid,
    UnknownNotification,
)

DEFAULT_MAX_BODY = 256 * 1024
"""Real notifications are a few kilobytes; bundles with many items stay far below this."""

logger = logging.getLogger("orderfsm.webhook")

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
        check_settings(secret, sink, max_body_size)
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

    def precheck(self, content_length: int | None) -> WebhookAnswer | None:
        """The 413 for a declared size too big, or None: the one refusal that needs no
        body.  Adapters call it before reading the body; ``handle`` repeats it."""
        early = self._precheck(content_length)
        if early is None:
            return None
        self._counters.answered(early.outcome, early.answer.status)
        return early.answer

    def _precheck(self, content_length: int | None) -> Refused | None:
        if content_length is not None and content_length > self.max_body_size:
            return Refused(self._too_large(), "too_large")
        return None

    def _unlisted(self, checked: Verified, peer: str | None) -> Refused | None:
        """A correctly signed delivery from outside ``allowed_networks``: 503, never
        a 4xx.  Either Xsolla sends from a network the list lacks (a 4xx to
        ``order_paid`` would refund the player at once, with automatic refunds on;
        a 5xx is retried for 12 hours while the list is mended) or the secret has
        leaked (nothing is handled either way).  Judged after the signature, so
        a forged body from anywhere still gets its 400."""
        if self.allow_list is None or self.allow_list.allows(peer):
            return None
        logger.error(
            "a correctly signed %s for order %s came from %s, outside allowed_networks: "
            "answered 503 so Xsolla retries; add the network if it is Xsolla's, "
            "or rotate the secret if it is not",
            checked.delivery.kind,
            checked.delivery.order_id,
            peer,
            extra={"event": "webhook.unlisted", "peer": peer},
        )
        unlisted = ForbiddenSource(f"source address {peer} is not allowed")
        return Refused(refusal(unlisted), "forbidden")

    def too_large(self) -> WebhookAnswer:
        """The 413 for a body found too large while reading it."""
        answer = self._too_large()
        self._counters.answered("too_large", answer.status)
        return answer

    def read_body(self, read: Callable[[int], bytes]) -> bytes | WebhookAnswer:
        """The body from a blocking ``read(size)`` (a WSGI input), or the 413 once it
        passes ``max_body_size``: read no further than that + 1 byte, since a chunked
        request has no length for :meth:`precheck` and may never end.  ``read`` may
        return less than asked before the end; an empty read is the end."""
        limit = self.max_body_size
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = read(limit + 1 - size)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
        return self.too_large()

    def _too_large(self) -> WebhookAnswer:
        return refusal(BodyTooLarge(f"body exceeds {self.max_body_size} bytes"))

    def check(
        self, headers: Headers, body: bytes, peer: str | None, at: float
    ) -> Verified | Refused:
        """Everything before the journal: the answer when there is nothing for the
        handler (a refusal, a type we ignore), else the verified delivery.  A
        verified ``order_paid`` / ``order_canceled`` goes to the sink, stamped ``at``."""
        early = self._precheck(len(body))
        if early is not None:
            return early
        checked = verified(self._secret, headers, body, peer)
        if not isinstance(checked, Verified):
            return checked
        unlisted = self._unlisted(checked, peer)
        if unlisted is not None:
            return unlisted
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

    def _transaction_ended(
        self, result: Ran | Reply, started: float, handler_seconds: list[float]
    ) -> tuple[WebhookAnswer, bool, str]:
        """A transactional delivery's journal run (started at ``started``) ended: the
        handler's runs and the journal's time counted; the answer, whether the handler
        ran, and the outcome."""
        for seconds in handler_seconds:
            self._counters.handler_ran(seconds)
        self._journal_used(started + sum(handler_seconds), failed=False)
        if isinstance(result, Ran):
            return result.answer, True, ran(result.answer)
        return result.answer, False, "duplicate"


def _status_of(notification: Notification) -> tuple[int, Status] | None:
    """The order and status a notification tells: ``paid``, or ``canceled`` (a refund)."""
    if isinstance(notification, (OrderPaid, OrderCanceled)):
        return notification.order_id, WEBHOOK_STATUSES[notification.notification_type]
    return None


def check_settings(secret: object, sink: object, max_body_size: object) -> None:
    """Refuse, when the receiver is made, what would answer every real delivery 4xx (a
    refund, with automatic refunds on) or drop its news: a secret with whitespace
    around it (a file read without ``strip()``: every signature "wrong"), a body
    limit of 0 (every delivery 413), a sink that cannot be told."""
    if not isinstance(secret, (str, bytes)):
        raise TypeError(f"the webhook secret must be a str or bytes, got {type(secret).__name__}")
    if not secret.strip():
        raise ValueError("the webhook secret must not be empty")
    if secret != secret.strip():
        raise ValueError(
            "the webhook secret has whitespace around it (read from a file without"
            " .strip()?): every signature would be refused"
        )
    if type(max_body_size) is not int or max_body_size <= 0:
        raise ValueError(f"max_body_size must be a positive int of bytes, got {max_body_size!r}")
    if sink is not None and not callable(getattr(sink, "observe", None)):
        raise TypeError(f"sink must have observe() (a Tracker, say), got {sink!r}")
