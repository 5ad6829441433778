"""The receiver a Django project describes in ``settings.ORDERFSM_WEBHOOK``, one per process.

::

    ORDERFSM_WEBHOOK = {
        "SECRET": os.environ["XSOLLA_WEBHOOK_SECRET"],
        "TRANSACTIONAL": "game.hooks.grant",  # def grant(notification): ORM writes
        # or "HANDLER": "game.hooks.on_paid",  # plain, at least once, no transaction
        "DATABASE": "default",                 # the journal's tables live there
    }

Built on the first delivery in each worker process (a pre-forking server
forks before any), so no connection crosses a fork.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import DEFAULT_DB_ALIAS, transaction
from django.utils.module_loading import import_string

from orderfsm.callables import require_plain
from orderfsm.contrib.django.store import DjangoStore, own_store
from orderfsm.errors import OrderFsmError
from orderfsm.journal import DAY, JournalSettings
from transports.journal import Store, SyncJournal, store_for
from transports.webhook import Notification, SyncWebhookReceiver
from transports.webhook.receiver import DEFAULT_MAX_BODY

KNOWN = frozenset(
    {
        "SECRET", "HANDLER", "TRANSACTIONAL", "DATABASE", "STORE", "LEASE", "WAIT",
        "RETENTION_DAYS", "MAX_BODY_SIZE", "ALLOWED_NETWORKS",
    }
)  # fmt: skip


class WebhookConfigError(OrderFsmError, ImproperlyConfigured):  # type: ignore[misc]
    """``settings.ORDERFSM_WEBHOOK`` is missing or wrong."""


class GrantRolledBack(OrderFsmError, RuntimeError):
    """The transactional handler returned, but Django had marked its block for rollback
    (it caught a database error outside an ``atomic`` of its own, or called
    ``set_rollback(True)``): its writes are undone, so the delivery is not handled.
    Answered 500, never stored: Xsolla delivers it again."""


def in_django_transaction(
    handler: Callable[[Notification], None], alias: str
) -> Callable[[Notification, Any], None]:
    """The transactional handler the receiver runs: the application's, in a savepoint of
    the claim's transaction (so a refusal or an error rolls back its writes alone, with
    Django's bookkeeping right).

    Leaving the savepoint of a block marked for rollback rolls back quietly, so a
    handler that swallowed an ``IntegrityError`` would have its grant undone and the
    delivery answered 204 all the same: that is raised instead (a 500)."""

    def transactional(notification: Notification, connection: Any) -> None:
        with transaction.atomic(using=alias):
            handler(notification)
            if transaction.get_rollback(using=alias):
                raise GrantRolledBack(
                    "the handler returned, but its transaction was marked for rollback (a "
                    "database error caught outside a transaction.atomic() of its own?): "
                    "its writes are rolled back"
                )

    return transactional


def _callable(config: dict[str, Any], name: str) -> Callable[[Notification], None] | None:
    """The function named, which must be a plain one: Django calls it, never awaits it."""
    value = config.get(name)
    if value is None:
        return None
    found = value
    if isinstance(value, str):
        try:
            found = import_string(value)
        except ImportError as exc:
            raise WebhookConfigError(f"ORDERFSM_WEBHOOK[{name!r}]: {exc}") from None
    if not callable(found):
        raise WebhookConfigError(f"ORDERFSM_WEBHOOK[{name!r}] is not a function nor a dotted path")
    try:
        require_plain(found, f"ORDERFSM_WEBHOOK[{name!r}]")
    except TypeError as exc:
        raise WebhookConfigError(str(exc)) from None
    return found  # type: ignore[no-any-return]


def build_receiver() -> SyncWebhookReceiver:
    """A receiver from the settings as they are now."""
    config = getattr(settings, "ORDERFSM_WEBHOOK", None)
    if not isinstance(config, dict):
        raise WebhookConfigError("settings.ORDERFSM_WEBHOOK is missing (a dict with a SECRET)")
    unknown = set(config) - KNOWN
    if unknown:
        raise WebhookConfigError(f"ORDERFSM_WEBHOOK: unknown keys {sorted(unknown)}")
    secret = config.get("SECRET")
    if not secret or not isinstance(secret, (str, bytes)):
        raise WebhookConfigError("ORDERFSM_WEBHOOK['SECRET'] is missing or empty")
    handler = _callable(config, "HANDLER")
    transactional = _callable(config, "TRANSACTIONAL")
    if handler is not None and transactional is not None:
        raise WebhookConfigError("ORDERFSM_WEBHOOK: give HANDLER or TRANSACTIONAL, not both")
    alias = str(config.get("DATABASE", DEFAULT_DB_ALIAS))
    if alias not in settings.DATABASES:
        raise WebhookConfigError(f"ORDERFSM_WEBHOOK['DATABASE']: no database {alias!r}")
    journal_settings = JournalSettings(
        lease=float(config.get("LEASE", 60.0)),
        wait=float(config.get("WAIT", 2.0)),
        retention=float(config.get("RETENTION_DAYS", 14)) * DAY,
    )
    url = config.get("STORE")
    store: Store
    if transactional is not None:
        if url is not None:
            raise WebhookConfigError(
                "ORDERFSM_WEBHOOK: TRANSACTIONAL writes in the claim's transaction, so the "
                "journal lives in DATABASE; leave STORE out"
            )
        store = DjangoStore(alias, own_store(alias, journal_settings), journal_settings)
    elif url is not None:
        store = store_for(url, journal_settings)
    else:
        store = own_store(alias, journal_settings)
    networks: Iterable[str] | None = config.get("ALLOWED_NETWORKS")
    in_transaction = None if transactional is None else in_django_transaction(transactional, alias)
    return SyncWebhookReceiver(
        secret,
        handler,
        transactional=in_transaction,
        store=SyncJournal(store, journal_settings),
        max_body_size=int(config.get("MAX_BODY_SIZE", DEFAULT_MAX_BODY)),
        allowed_networks=networks,
    )


_lock = threading.Lock()
_receiver: tuple[int, SyncWebhookReceiver] | None = None


def receiver() -> SyncWebhookReceiver:
    """This process's receiver, built on first use."""
    global _receiver
    current = _receiver
    if current is not None and current[0] == os.getpid():
        return current[1]
    with _lock:
        if _receiver is None or _receiver[0] != os.getpid():
            # A receiver from before a fork is dropped, not closed: its connections
            # belong to the parent.
            _receiver = (os.getpid(), build_receiver())
        return _receiver[1]


def _after_fork_in_child() -> None:
    """A lock is copied into a child as it was at the fork: held by a thread of the
    parent then (a first request building the receiver), it stays held in the child
    by a thread that does not exist there, and the child's first delivery waits for
    it forever.  So the child gets a new one, at the fork."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _reset(setting: str, **kwargs: Any) -> None:
    global _receiver
    if setting in ("ORDERFSM_WEBHOOK", "DATABASES"):
        with _lock:
            old, _receiver = _receiver, None
        if old is not None and old[0] == os.getpid():
            old[1].journal.close()


setting_changed.connect(_reset)
