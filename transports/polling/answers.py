"""What one Get order answer means, independent of what happens next.

Both the poller's decider and the one-shot ``fetch_order`` start here, so
they agree on every status code.  Only the 200 and the 404 are Get order's
own; every other status is read as the Event API reads it (see
:mod:`transports.http.answers`).  Pure: a response in, a verdict out.
"""

from __future__ import annotations

import attrs

from orderfsm.errors import OrderFsmError, OrderNotFound
from transports.http.answers import (
    RETRYABLE,
    Busy,
    Misdirected,
    Rejected,
    Service,
    Unexpected,
    XsollaError,
    classify_failure,
    parse_retry_after,
    read_error,
)
from transports.http.base import HttpResponse
from transports.polling.errors import InvalidOrderAnswer
from transports.polling.order import OrderDetails, parse_order

GET_ORDER = Service("Get order", rejected="token rejected")


@attrs.frozen
class Got:
    details: OrderDetails


@attrs.frozen
class NotFound:
    error: XsollaError

    def exception(self, order_id: int) -> OrderFsmError:
        return OrderNotFound(f"order {order_id}: not found: {self.error.message}")


@attrs.frozen
class Malformed:
    """A 200 whose body is not an order, or not this order."""

    error: InvalidOrderAnswer

    def exception(self, order_id: int) -> OrderFsmError:
        del order_id
        return self.error


Verdict = Got | Rejected | NotFound | Busy | Malformed | Unexpected | Misdirected


def classify(response: HttpResponse, order_id: int, wall_now: float | None = None) -> Verdict:
    status = response.status
    if status == 200:
        try:
            details = parse_order(response.body)
        except InvalidOrderAnswer as exc:
            return Malformed(exc)
        if details.order_id != order_id:
            return Malformed(
                InvalidOrderAnswer(f"asked for order {order_id}, got order {details.order_id}")
            )
        return Got(details)
    if status == 404:
        error = read_error(response)
        # Xsolla's Get order answers 404 in the Store error shape (xsolla.md 3.3); a page
        # in any other shape is some other server's: waiting out the grace cannot help.
        return NotFound(error) if error.shaped else Misdirected(status, error, GET_ORDER)
    return classify_failure(response, GET_ORDER, wall_now)


__all__ = [
    "GET_ORDER",
    "RETRYABLE",
    "Busy",
    "Got",
    "Malformed",
    "Misdirected",
    "NotFound",
    "Rejected",
    "Unexpected",
    "Verdict",
    "XsollaError",
    "classify",
    "parse_retry_after",
    "read_error",
]
