"""The Get order answer as records, parsed leniently where Xsolla is inconsistent.

Amounts stay strings, exactly as sent ("30", "1.9900"): a float would lose
the decimal, and ``decimal.Decimal(price.amount)`` is one call away.  The
status stays the raw string too, so that an answer with a status the graph
does not know is still a valid answer (``known_status`` is ``None`` then).
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from orderfsm.core import Status, order_id_of, parse_status
from orderfsm.errors import UnknownStatus
from transports.polling.errors import InvalidOrderAnswer


@attrs.frozen
class Price:
    amount: str
    amount_without_discount: str | None
    currency: str


@attrs.frozen
class OrderItem:
    sku: str
    quantity: int
    is_free: bool
    price: Price | None
    virtual_price: Price | None = None


@attrs.frozen
class OrderDetails:
    """Everything Get order says about an order; what the app gets once it is final."""

    order_id: int
    status: str
    price: Price | None
    virtual_price: Price | None
    is_free: bool
    items: tuple[OrderItem, ...]
    raw: Any = attrs.field(default=None, eq=False, repr=False)
    content_error: str | None = None
    """Why ``content`` (price, items) could not be read; they are empty then.  The
    status is read apart from it: an odd detail must not hide a payment."""

    @property
    def known_status(self) -> Status | None:
        try:
            return parse_status(self.status)
        except UnknownStatus:
            return None


def parse_bool(value: object, where: str) -> bool:
    """``true``/``false`` as JSON booleans or strings: Xsolla's examples use both."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise InvalidOrderAnswer(f"{where}: expected a boolean, got {value!r}")


def _amount(value: object, where: str) -> str:
    # The type of a virtual price's amount is unconfirmed, so numbers are accepted.
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise InvalidOrderAnswer(f"{where}: expected an amount, got {value!r}")


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidOrderAnswer(f"{where}: expected an object, got {value!r}")
    return value


def _price(value: object, where: str) -> Price | None:
    if value is None:
        return None
    fields = _object(value, where)
    currency = fields.get("currency")
    if not isinstance(currency, str):
        raise InvalidOrderAnswer(f"{where}.currency: expected a string, got {currency!r}")
    undiscounted = fields.get("amount_without_discount")
    return Price(
        amount=_amount(fields.get("amount"), f"{where}.amount"),
        amount_without_discount=None
        if undiscounted is None
        else _amount(undiscounted, f"{where}.amount_without_discount"),
        currency=currency,
    )


def _item(value: object, where: str) -> OrderItem:
    fields = _object(value, where)
    sku = fields.get("sku")
    if not isinstance(sku, str):
        raise InvalidOrderAnswer(f"{where}.sku: expected a string, got {sku!r}")
    quantity = fields.get("quantity", 1)
    if type(quantity) is not int:
        raise InvalidOrderAnswer(f"{where}.quantity: expected an int, got {quantity!r}")
    return OrderItem(
        sku=sku,
        quantity=quantity,
        is_free=parse_bool(fields.get("is_free", False), f"{where}.is_free"),
        price=_price(fields.get("price"), f"{where}.price"),
        virtual_price=_price(fields.get("virtual_price"), f"{where}.virtual_price"),
    )


def parse_order(body: bytes | str | dict[str, Any]) -> OrderDetails:
    """Read a Get order 200 body; anything off-spec raises :class:`InvalidOrderAnswer`."""
    if isinstance(body, dict):
        data: object = body
    else:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise InvalidOrderAnswer(f"order answer is not JSON: {exc}") from None
    fields = _object(data, "order")
    order_id = order_id_of(fields.get("order_id"))
    if order_id is None:
        given = fields.get("order_id")
        raise InvalidOrderAnswer(f"order.order_id: expected a positive int, got {given!r}")
    status = fields.get("status")
    if not isinstance(status, str) or not status:
        raise InvalidOrderAnswer(f"order.status: expected a string, got {status!r}")
    try:
        content = _content(fields.get("content") or {})
    except InvalidOrderAnswer as exc:
        return OrderDetails(order_id, status, None, None, False, (), data, str(exc))
    return OrderDetails(order_id, status, *content, raw=data)


def _content(value: object) -> tuple[Price | None, Price | None, bool, tuple[OrderItem, ...]]:
    content = _object(value, "order.content")
    items = content.get("items") or []
    if not isinstance(items, list):
        raise InvalidOrderAnswer(f"order.content.items: expected a list, got {items!r}")
    return (
        _price(content.get("price"), "order.content.price"),
        _price(content.get("virtual_price"), "order.content.virtual_price"),
        parse_bool(content.get("is_free", False), "order.content.is_free"),
        tuple(_item(item, f"order.content.items[{i}]") for i, item in enumerate(items)),
    )
