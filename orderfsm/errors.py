"""Every exception orderfsm raises on purpose, under one base class.

Applications catch :class:`OrderFsmError` to handle all of them, or a subclass
to handle one failure.  The layout follows httpcore's: one tree, and the leaf
names the phase that failed, so a handler never has to parse messages.

This module is pure (no I/O, no third-party imports) so that every layer,
including the core, can raise from it.
"""

from __future__ import annotations


class OrderFsmError(Exception):
    """Base class of every error raised by orderfsm."""


# --- the core -------------------------------------------------------------


class InvalidGraph(OrderFsmError):
    """The declared status graph breaks a rule; raised when the module loads."""


class ObservationError(OrderFsmError, ValueError):
    """An observation cannot be applied to an order."""


class UnknownStatus(ObservationError):
    """A status string that is not part of the status graph."""

    def __init__(self, status: object) -> None:
        super().__init__(f"unknown order status {status!r}")
        self.status = status


class MalformedObservation(ObservationError, TypeError):
    """An observation field has the wrong type or value."""


class OrderNotTracked(OrderFsmError, KeyError):
    """The order book has no entry for this order id."""

    def __init__(self, order_id: object) -> None:
        super().__init__(order_id)
        self.order_id = order_id

    def __str__(self) -> str:
        return f"order {self.order_id!r} is not tracked"


class OrderAlreadyTracked(OrderFsmError, ValueError):
    """The order book already has an entry for this order id."""

    def __init__(self, order_id: object) -> None:
        super().__init__(f"order {order_id!r} is already tracked")
        self.order_id = order_id


# --- talking to Xsolla (or the emulator) ----------------------------------


class TransportError(OrderFsmError):
    """A transport could not deliver observations; the tracker may fail over."""


class ProtocolError(TransportError):
    """The remote peer sent something the protocol does not allow."""


class WrongEndpoint(ProtocolError):
    """Something answered at the configured URL, but not the Xsolla service expected there
    (a 404 page that is not Xsolla's): the URL is wrong, and asking again cannot help."""


class ConnectionLost(TransportError):
    """The connection closed or stopped answering."""


class TokenRejected(TransportError):
    """The server refused the user token, even after asking for a fresh one."""


class OrderNotFound(TransportError):
    """Get order kept answering 404 past the grace period."""


class ServiceUnavailable(TransportError):
    """The service answered with errors (5xx, 429) or timed out."""


# --- webhooks ---------------------------------------------------------------


class WebhookError(OrderFsmError):
    """A webhook delivery was refused; ``code`` is Xsolla's error code."""

    code = "INVALID_PARAMETER"


class InvalidSignature(WebhookError):
    """The ``Authorization: Signature`` header is missing or wrong."""

    code = "INVALID_SIGNATURE"


class InvalidPayload(WebhookError):
    """The body is not the JSON Xsolla documents."""

    code = "INVALID_PARAMETER"


# --- tracking ---------------------------------------------------------------


class TrackingTimeout(OrderFsmError, TimeoutError):
    """No final status arrived before the tracking deadline."""


class TrackerClosed(OrderFsmError):
    """The tracker was closed, or the order untracked, before a final status."""


class NoSourceLeft(TransportError):
    """Every configured transport failed for good before a final status."""


# --- the journal ------------------------------------------------------------


class JournalError(OrderFsmError):
    """The journal (the durable record of claims and deliveries) failed."""


class JournalConfigError(JournalError, ValueError):
    """A journal setting is out of range; raised before anything is opened."""


class BadStoreUrl(JournalConfigError):
    """The store URL is neither a path, ``sqlite:///...`` nor ``postgresql://...``."""


class JournalUnavailable(JournalError):
    """The database cannot be reached, is locked, full or timed out: a passing trouble.

    A webhook delivery that meets it is answered 5xx, so Xsolla retries.
    """


class JournalRefused(JournalUnavailable):
    """The database refused a statement (a constraint, a trigger, a value it cannot
    store): the same statement again would be refused again, so it is not retried.
    Still our trouble, answered 5xx like any other."""


class JournalValueRefused(JournalRefused):
    """What was to be written is what the database refuses (a value it cannot store, a
    constraint): refused with that value at any time, unlike a statement refused for
    a missing table or permission, which a deploy may mend."""


def journal_trouble(value: bool, statement: bool) -> type[JournalUnavailable]:
    """The error for a database's failure: about a value written (``value``), about the
    statement itself (``statement``: a missing table, a syntax error), or passing."""
    if value:
        return JournalValueRefused
    return JournalRefused if statement else JournalUnavailable


class InstanceNameInUse(JournalError):
    """Another live tracker holds this ``instance=`` name (a name given twice, or a
    rolling deploy whose old instance still runs past the wait): both would follow
    the same orders and the newer would end the older's leases, so this one does
    not start.  A deployment mistake, not a passing trouble."""

    def __init__(self, instance: str, waited: float) -> None:
        super().__init__(
            f"instance name {instance!r} is held by another live tracker (waited {waited:g} s"
            " for it to be freed): give each live tracker a name of its own"
        )
        self.instance = instance


class JournalOpenFailed(JournalError):
    """The journal could not be opened at all (start-up): unreachable server, bad
    credentials, an unusable file or directory."""


class JournalCorrupt(JournalOpenFailed):
    """The SQLite file is not a database (or is damaged)."""


class SchemaTooNew(JournalOpenFailed):
    """The database was created by a newer orderfsm; this code refuses to touch it."""

    def __init__(self, found: int, supported: int) -> None:
        super().__init__(
            f"the journal's schema is version {found}, newer than this orderfsm "
            f"understands ({supported}); upgrade orderfsm"
        )
        self.found = found
        self.supported = supported


class JournalClosed(JournalError):
    """The journal was used after it was closed."""
