"""What one Get order answer means, independent of what happens next.

Both the poller's decider and the one-shot ``fetch_order`` start here, so
they agree on every status code.  Pure: a response in, a verdict out.
"""

from __future__ import annotations

import email.utils
import json
import math

import attrs

from orderfsm.errors import OrderFsmError, OrderNotFound, TokenRejected
from transports.http.base import HttpResponse
from transports.polling.errors import (
    InvalidOrderAnswer,
    ServerError,
    UnexpectedAnswer,
)
from transports.polling.order import OrderDetails, parse_order

RETRYABLE = frozenset({408, 409, 422, 425, 429})
"""4xx answers that describe a passing state (422 is Xsolla's "Exception with
PayStation service"); every 5xx is retryable too."""


@attrs.frozen
class XsollaError:
    """The Store API error body ``{"statusCode", "errorCode", "errorMessage"}``."""

    error_code: int | None
    message: str


def read_error(response: HttpResponse) -> XsollaError:
    """Best effort: a proxy's HTML page or an empty body still gives a message."""
    try:
        data = json.loads(response.body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        data = None
    if isinstance(data, dict):
        code = data.get("errorCode")
        message = data.get("errorMessage")
        if message is None and isinstance(data.get("error"), dict):
            # The Login API's shape, in case a gateway answers for it.
            message = data["error"].get("description") or data["error"].get("code")
        return XsollaError(
            code if type(code) is int else None,
            str(message) if message is not None else f"HTTP {response.status}",
        )
    text = response.body[:200].decode("utf-8", "replace").strip()
    return XsollaError(None, text or f"HTTP {response.status}")


def parse_retry_after(value: str | None, wall_now: float | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header, or ``None`` if unusable.

    The HTTP-date form needs the wall clock, which the caller passes in.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    if wall_now is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - wall_now)


@attrs.frozen
class Got:
    details: OrderDetails


@attrs.frozen
class Rejected:
    """401/403: the token is invalid or expired."""

    status: int
    error: XsollaError

    def exception(self, order_id: int) -> OrderFsmError:
        return TokenRejected(
            f"order {order_id}: token rejected with {self.status}: {self.error.message}"
        )


@attrs.frozen
class NotFound:
    error: XsollaError

    def exception(self, order_id: int) -> OrderFsmError:
        return OrderNotFound(f"order {order_id}: not found: {self.error.message}")


@attrs.frozen
class Busy:
    """A passing failure: ask again later, no sooner than ``retry_after`` if given."""

    status: int
    error: XsollaError
    retry_after: float | None

    def exception(self, order_id: int) -> OrderFsmError:
        return ServerError(
            f"order {order_id}: Get order answered {self.status}: {self.error.message}",
            self.status,
            self.error.error_code,
        )


@attrs.frozen
class Malformed:
    """A 200 whose body is not an order, or not this order."""

    error: InvalidOrderAnswer

    def exception(self, order_id: int) -> OrderFsmError:
        del order_id
        return self.error


@attrs.frozen
class Unexpected:
    """A status with no rule: asking again would get the same answer."""

    status: int
    error: XsollaError

    def exception(self, order_id: int) -> OrderFsmError:
        return UnexpectedAnswer(
            f"order {order_id}: Get order answered {self.status}: {self.error.message}",
            self.status,
            self.error.error_code,
        )


Verdict = Got | Rejected | NotFound | Busy | Malformed | Unexpected


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
    if status in (401, 403):
        return Rejected(status, read_error(response))
    if status == 404:
        return NotFound(read_error(response))
    if status in RETRYABLE or 500 <= status <= 599:
        retry_after = parse_retry_after(response.headers.get("retry-after"), wall_now)
        return Busy(status, read_error(response), retry_after)
    return Unexpected(status, read_error(response))
