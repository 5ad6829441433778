"""Xsolla notifications as records, parsed leniently.

Which fields Xsolla sends depends on the project's webhook settings, so only
what identifies a notification is required (``notification_type``, the
order id, the transaction id); every other field becomes ``None`` when it is
missing or of an unexpected type.  Refusing an ``order_paid`` over a cosmetic
field would answer 400, which Xsolla may turn into a refund.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import attrs

from orderfsm.core.ids import order_id_of as read_id
from orderfsm.errors import InvalidPayload


def _str(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _int(value: object) -> int | None:
    if type(value) is int:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        return int(value)  # longer is no number of Xsolla's (and int() refuses 4,300 digits)
    return None


def _bool(value: object) -> bool | None:
    # Booleans arrive as JSON booleans, as "true"/"false" and (dry_run) as 0/1.
    if isinstance(value, bool):
        return value
    if type(value) is int and value in (0, 1):
        return value == 1
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    return None


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _id(value: object, where: str) -> int:
    """An order or transaction id, read as every other source's order id is read."""
    number = read_id(value)
    if number is None:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        raise InvalidPayload(f"{where}: expected a positive integer id, got {shown}")
    return number


@attrs.frozen
class WebhookUser:
    external_id: str | None
    """``user.external_id`` in order notifications, ``user.id`` in payment ones."""
    email: str | None = None
    country: str | None = None


@attrs.frozen
class WebhookOrder:
    id: int
    status: str | None = None
    mode: str | None = None
    currency_type: str | None = None
    currency: str | None = None
    amount: str | None = None
    invoice_id: str | None = None
    platform: str | None = None
    comment: str | None = None


@attrs.frozen
class WebhookItem:
    sku: str | None
    type: str | None = None
    quantity: int | None = None
    amount: str | None = None
    """The total for the quantity, as sent (may be ``"[null]"`` inside bundles)."""
    is_pre_order: bool | None = None
    is_free: bool | None = None
    is_bonus: bool | None = None
    is_bundle_content: bool | None = None


@attrs.frozen
class Transaction:
    id: int
    external_id: str | None = None
    dry_run: bool | None = None
    payment_date: str | None = None


@attrs.frozen
class Payment:
    """``payment``; also the ``billing`` part of a combined-mode order notification."""

    transaction: Transaction
    project_id: int | None = None
    user: WebhookUser | None = None
    amount: str | None = None
    currency: str | None = None
    raw: Any = attrs.field(default=None, eq=False, repr=False)
    notification_type = "payment"


@attrs.frozen
class Refund:
    """``refund`` or, with ``partial`` set, ``partial_refund``."""

    transaction: Transaction
    partial: bool = False
    user: WebhookUser | None = None
    raw: Any = attrs.field(default=None, eq=False, repr=False)

    @property
    def notification_type(self) -> str:
        return "partial_refund" if self.partial else "refund"


@attrs.frozen
class UserValidation:
    user: WebhookUser | None
    raw: Any = attrs.field(default=None, eq=False, repr=False)
    notification_type = "user_validation"


@attrs.frozen
class OrderNotification:
    """What ``order_paid`` and ``order_canceled`` share: the order, its items, its user."""

    order: WebhookOrder
    items: tuple[WebhookItem, ...] = ()
    user: WebhookUser | None = None
    billing: Payment | None = None
    custom_parameters: dict[str, Any] | None = attrs.field(default=None, eq=False)
    raw: Any = attrs.field(default=None, eq=False, repr=False)

    @property
    def order_id(self) -> int:
        return self.order.id


@attrs.frozen
class OrderPaid(OrderNotification):
    """The order is paid.  Not delivered: ``done`` comes later, through the other channels."""

    notification_type = "order_paid"


@attrs.frozen
class OrderCanceled(OrderNotification):
    notification_type = "order_canceled"


@attrs.frozen
class UnknownNotification:
    """A type this library does not handle; acknowledged and otherwise ignored."""

    notification_type: str
    raw: Any = attrs.field(default=None, eq=False, repr=False)


Notification = OrderPaid | OrderCanceled | Payment | Refund | UserValidation | UnknownNotification


def _user(value: object) -> WebhookUser | None:
    if not isinstance(value, dict):
        return None
    external_id = _str(value.get("external_id"))
    if external_id is None:
        external_id = _str(value.get("id"))
    return WebhookUser(external_id, _str(value.get("email")), _str(value.get("country")))


def _order(value: object) -> WebhookOrder:
    if not isinstance(value, dict):
        raise InvalidPayload(f"order: expected an object, got {value!r}")
    return WebhookOrder(
        id=_id(value.get("id"), "order.id"),
        status=_str(value.get("status")),
        mode=_str(value.get("mode")),
        currency_type=_str(value.get("currency_type")),
        currency=_str(value.get("currency")),
        amount=_str(value.get("amount")),
        invoice_id=_str(value.get("invoice_id")),
        platform=_str(value.get("platform")),
        comment=_str(value.get("comment")),
    )


def _item(value: object) -> WebhookItem:
    fields = _obj(value)
    return WebhookItem(
        sku=_str(fields.get("sku")),
        type=_str(fields.get("type")),
        quantity=_int(fields.get("quantity")),
        amount=_str(fields.get("amount")),
        is_pre_order=_bool(fields.get("is_pre_order")),
        is_free=_bool(fields.get("is_free")),
        is_bonus=_bool(fields.get("is_bonus")),
        is_bundle_content=_bool(fields.get("is_bundle_content")),
    )


def _transaction(value: object) -> Transaction:
    fields = _obj(value)
    return Transaction(
        id=_id(fields.get("id"), "transaction.id"),
        external_id=_str(fields.get("external_id")),
        dry_run=_bool(fields.get("dry_run")),
        payment_date=_str(fields.get("payment_date")),
    )


def _payment(fields: dict[str, Any]) -> Payment:
    total = _obj(_obj(fields.get("purchase")).get("total"))
    return Payment(
        transaction=_transaction(fields.get("transaction")),
        project_id=_int(_obj(fields.get("settings")).get("project_id")),
        user=_user(fields.get("user")),
        amount=_str(total.get("amount")),
        currency=_str(total.get("currency")),
        raw=fields,
    )


def _billing(value: object) -> Payment | None:
    """The payment block of a combined-mode order notification, or ``None`` when it
    has no usable transaction id: the notification is keyed on ``order.id``, and a
    400 to a signed ``order_paid`` refunds the player at once."""
    if not isinstance(value, dict):
        return None
    try:
        return _payment(value)
    except InvalidPayload:
        return None


def _order_fields(fields: dict[str, Any]) -> dict[str, Any]:
    items = fields.get("items")
    billing = fields.get("billing")
    custom = fields.get("custom_parameters")
    return {
        "order": _order(fields.get("order")),
        "items": tuple(_item(i) for i in items) if isinstance(items, list) else (),
        "user": _user(fields.get("user")),
        "billing": _billing(billing),
        "custom_parameters": custom if isinstance(custom, dict) else None,
        "raw": fields,
    }


def parse_notification(body: bytes) -> Notification:
    """Read a verified body; raise :class:`InvalidPayload` if it is not a notification."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidPayload(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidPayload("body is not a JSON object")
    kind = data.get("notification_type")
    if not isinstance(kind, str) or not kind:
        raise InvalidPayload("notification_type is missing")
    if kind == "order_paid":
        return OrderPaid(**_order_fields(data))
    if kind == "order_canceled":
        return OrderCanceled(**_order_fields(data))
    if kind == "payment":
        return _payment(data)
    if kind in ("refund", "partial_refund"):
        return Refund(
            _transaction(data.get("transaction")),
            partial=kind == "partial_refund",
            user=_user(data.get("user")),
            raw=data,
        )
    if kind == "user_validation":
        return UserValidation(_user(data.get("user")), raw=data)
    return UnknownNotification(kind, raw=data)


def idempotency_key(notification: Notification, body: bytes) -> str | None:
    """What makes two deliveries "the same notification"; ``None``: never deduplicated.

    Order notifications are keyed on order id and type, payments and refunds
    on the transaction id (Xsolla's advice).  A transaction may be refunded in
    parts, so partial refunds also key on the body.  ``user_validation`` asks
    about the user's current state and is not retried, so each delivery runs.
    """
    if isinstance(notification, (OrderPaid, OrderCanceled)):
        return f"{notification.notification_type}:{notification.order.id}"
    if isinstance(notification, Payment):
        return f"payment:{notification.transaction.id}"
    if isinstance(notification, Refund):
        if notification.partial:
            digest = hashlib.sha256(body).hexdigest()[:32]
            return f"partial_refund:{notification.transaction.id}:{digest}"
        return f"refund:{notification.transaction.id}"
    return None


def order_id_of(notification: Notification) -> int | None:
    """The order a notification is about, when it names one."""
    if isinstance(notification, (OrderPaid, OrderCanceled)):
        return notification.order.id
    return None
