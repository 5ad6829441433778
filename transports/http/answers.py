"""What an error answer from one of Xsolla's HTTP services means.

Get order and the Event API speak the same error dialect: the same body
shape, the same ``Retry-After``, the same split between statuses worth
asking again and statuses that will not change.  Reading it in one place
keeps the two transports agreeing on every status code.  Only the wording of
the resulting errors differs, so each transport passes in a :class:`Service`
that names itself.  Pure: a response in, a verdict out.
"""

from __future__ import annotations

import email.utils
import json
import math

import attrs

from orderfsm.errors import OrderFsmError, TokenRejected
from transports.http.base import HttpResponse
from transports.http.errors import NotXsolla, ServerError, UnexpectedAnswer

RETRYABLE = frozenset({408, 409, 422, 425, 429})
"""4xx answers that describe a passing state (422 is Xsolla's "Exception with
PayStation service"); every 5xx is retryable too."""


@attrs.frozen
class XsollaError:
    """The Store API error body ``{"statusCode", "errorCode", "errorMessage"}``."""

    error_code: int | None
    message: str
    shaped: bool = True
    """The body had the Store API's error shape: Xsolla's service answered."""


STORE_ERROR_KEYS = frozenset({"statusCode", "errorCode", "errorMessage"})


def read_error(response: HttpResponse) -> XsollaError:
    """Best effort: a proxy's HTML page or an empty body still gives a message (and
    ``shaped=False``: something other than the Store API answered)."""
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
            not STORE_ERROR_KEYS.isdisjoint(data),
        )
    text = " ".join(response.body[:200].decode("utf-8", "replace").split())
    return XsollaError(None, text or f"HTTP {response.status}", False)


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
        if when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - wall_now)
    except (TypeError, ValueError, OverflowError):  # year 99999999999 overflows
        return None


@attrs.frozen
class Service:
    """How a service is named in its errors, which users read in logs and health reasons."""

    name: str
    """Says what answered: "order 7: {name} answered 503: ..."."""
    rejected: str
    """Says the token was turned away: "order 7: {rejected} with 401: ..."."""


@attrs.frozen
class Rejected:
    """401/403: the token is invalid or expired."""

    status: int
    error: XsollaError
    service: Service

    def exception(self, order_id: int) -> OrderFsmError:
        return TokenRejected(
            f"order {order_id}: {self.service.rejected} with {self.status}: {self.error.message}"
        )


@attrs.frozen
class Misdirected:
    """A 404 that is not the Store API's (an HTML page, another JSON shape): the
    configured URL does not lead to Xsolla's service (an API URL without ``/api``)."""

    status: int
    error: XsollaError
    service: Service

    def exception(self, order_id: int) -> OrderFsmError:
        return NotXsolla(
            f"order {order_id}: {self.service.name} answered {self.status} with something "
            f"that is not Xsolla's Store API ({self.error.message[:80]!r}): the API URL is "
            "probably wrong (Xsolla's is https://store.xsolla.com/api)",
            self.status,
            self.error.error_code,
        )


@attrs.frozen
class Busy:
    """A passing failure: ask again later, no sooner than ``retry_after`` if given."""

    status: int
    error: XsollaError
    retry_after: float | None
    service: Service

    def exception(self, order_id: int) -> OrderFsmError:
        return ServerError(
            f"order {order_id}: {self.service.name} answered {self.status}: {self.error.message}",
            self.status,
            self.error.error_code,
            self.retry_after,
        )


@attrs.frozen
class Unexpected:
    """A status with no rule: asking again would get the same answer."""

    status: int
    error: XsollaError
    service: Service

    def exception(self, order_id: int) -> OrderFsmError:
        return UnexpectedAnswer(
            f"order {order_id}: {self.service.name} answered {self.status}: {self.error.message}",
            self.status,
            self.error.error_code,
        )


def classify_failure(
    response: HttpResponse, service: Service, wall_now: float | None = None
) -> Rejected | Busy | Unexpected:
    """The verdict on any answer a transport has no rule of its own for.

    Each transport reads its 200 (and Get order its 404) first; every other
    status means the same from either service.
    """
    status = response.status
    if status in (401, 403):
        return Rejected(status, read_error(response), service)
    if status in RETRYABLE or 500 <= status <= 599:
        retry_after = parse_retry_after(response.headers.get("retry-after"), wall_now)
        return Busy(status, read_error(response), retry_after, service)
    return Unexpected(status, read_error(response), service)


__all__ = [
    "RETRYABLE",
    "Busy",
    "Misdirected",
    "Rejected",
    "Service",
    "Unexpected",
    "XsollaError",
    "classify_failure",
    "parse_retry_after",
    "read_error",
]
