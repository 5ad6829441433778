"""The framework-neutral webhook receiver: headers and raw bytes in, an answer out.

The order of checks is the safe one: the peer and the size before reading
anything, the signature before parsing, and the application's handler before
any 2xx.  A notification already answered is answered again from the store,
without the handler; two concurrent deliveries of one notification run the
handler once, because each key has its own lock.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager

import anyio

from orderfsm.core import Observation
from orderfsm.errors import InvalidPayload, InvalidSignature, WebhookError
from orderfsm.interface import WEBHOOK, ObservationSink
from transports.webhook.answers import (
    ACCEPTED,
    HANDLER_FAILED,
    STORE_FAILED,
    WebhookAnswer,
    error_answer,
)
from transports.webhook.errors import BodyTooLarge, ForbiddenSource, status_for
from transports.webhook.networks import AllowList, Network
from transports.webhook.records import (
    Notification,
    OrderCanceled,
    OrderPaid,
    UnknownNotification,
    idempotency_key,
    parse_notification,
)
from transports.webhook.signature import verify
from transports.webhook.store import MemoryStore, SeenStore

Handler = Callable[[Notification], Awaitable[None]]
"""The application's reaction to a verified notification.  Returning means
success (204).  Raising a :class:`~orderfsm.errors.WebhookError` answers 400
with its code (a deliberate, final refusal); raising anything else answers
500, and Xsolla delivers again later."""

Headers = Mapping[str, str] | Iterable[tuple[str, str]]

DEFAULT_MAX_BODY = 256 * 1024
"""Real notifications are a few kilobytes; bundles with many items stay far below this."""

logger = logging.getLogger("orderfsm.webhook")


def _header(headers: Headers, name: str) -> str | None:
    """The single value of ``name``, case-insensitively; two values count as none."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    found = [value for key, value in pairs if key.lower() == name]
    return found[0] if len(found) == 1 else None


def _refusal(error: WebhookError) -> WebhookAnswer:
    return error_answer(status_for(error), error.code, str(error) or error.code)


class _KeyedLocks:
    """One lock per key, alive only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[anyio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (anyio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class WebhookReceiver:
    """Verifies, deduplicates and dispatches Xsolla notifications.

    ``sink`` (optional) receives an :class:`Observation` for every verified
    ``order_paid`` (status ``paid``) and ``order_canceled`` (``canceled``),
    so trackers in the same process learn from webhooks too.
    """

    def __init__(
        self,
        secret: str | bytes,
        handler: Handler | None = None,
        *,
        store: SeenStore | None = None,
        sink: ObservationSink | None = None,
        max_body_size: int = DEFAULT_MAX_BODY,
        allowed_networks: Iterable[str | Network] | None = None,
    ) -> None:
        if not secret:
            raise ValueError("the webhook secret must not be empty")
        self._secret = secret
        self.handler = handler
        self.store: SeenStore = store if store is not None else MemoryStore()
        self.sink = sink
        self.max_body_size = max_body_size
        self.allow_list = AllowList(allowed_networks) if allowed_networks is not None else None
        self._locks = _KeyedLocks()

    def precheck(self, peer: str | None, content_length: int | None) -> WebhookAnswer | None:
        """A refusal that needs no body (peer not allowed, declared size too big), or None.

        Adapters call it before reading the body; :meth:`handle` repeats it.
        """
        if self.allow_list is not None and not self.allow_list.allows(peer):
            return _refusal(ForbiddenSource(f"source address {peer} is not allowed"))
        if content_length is not None and content_length > self.max_body_size:
            return self.too_large()
        return None

    def too_large(self) -> WebhookAnswer:
        return _refusal(BodyTooLarge(f"body exceeds {self.max_body_size} bytes"))

    async def handle(self, headers: Headers, body: bytes, peer: str | None = None) -> WebhookAnswer:
        """Answer one delivery.  Never raises for anything the sender controls."""
        refusal = self.precheck(peer, len(body))
        if refusal is not None:
            return refusal
        try:
            verify(_header(headers, "authorization"), body, self._secret)
            notification = parse_notification(body)
        except (InvalidSignature, InvalidPayload) as exc:
            logger.info("refused a webhook from %s: %s", peer, exc)
            return _refusal(exc)
        self._observe(notification)
        if isinstance(notification, UnknownNotification):
            logger.info("ignored a %r notification", notification.notification_type)
            return ACCEPTED
        key = idempotency_key(notification, body)
        if key is None:
            return await self._dispatch(notification)
        async with self._locks.hold(key):
            try:
                stored = await self.store.get(key)
            except Exception:
                logger.exception("the webhook store failed to read %s", key)
                return STORE_FAILED
            if stored is not None:
                return stored
            answer = await self._dispatch(notification)
            if answer.status < 500:
                try:
                    await self.store.put(key, answer)
                except Exception:
                    # The handler has run: answering 500 would make Xsolla run it again.
                    logger.exception("the webhook store failed to record %s", key)
            return answer

    async def _dispatch(self, notification: Notification) -> WebhookAnswer:
        if self.handler is None:
            return ACCEPTED
        try:
            await self.handler(notification)
        except WebhookError as exc:
            return _refusal(exc)
        except Exception:
            logger.exception("the webhook handler failed on %s", notification.notification_type)
            return HANDLER_FAILED
        return ACCEPTED

    def _observe(self, notification: Notification) -> None:
        if self.sink is None:
            return
        if isinstance(notification, OrderPaid):
            status = "paid"
        elif isinstance(notification, OrderCanceled):
            status = "canceled"
        else:
            return
        observation = Observation(
            notification.order_id, status, source=WEBHOOK, at=anyio.current_time(), raw=notification
        )
        try:
            self.sink.observe(observation)
        except Exception:
            # The sink's trouble must not turn into an answer that makes Xsolla retry.
            logger.exception("the observation sink failed on %s", observation)

    async def aclose(self) -> None:
        await self.store.aclose()
