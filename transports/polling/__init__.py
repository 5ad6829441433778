"""Following an order by short-polling Xsolla's Get order API.

:func:`poll_order` runs until the order is final (or fails for good),
feeding observations and health reports to a sink; :func:`fetch_order` gets
the order's details once.  The decisions live in the sans-io
:class:`PollDecider`; the driver only sleeps and sends requests.
"""

from __future__ import annotations

from transports.polling.answers import XsollaError, parse_retry_after
from transports.polling.decider import (
    Fail,
    Finish,
    PollConfig,
    PollDecider,
    RefreshToken,
    Step,
    Wait,
)
from transports.polling.driver import DEFAULT_API, fetch_order, order_url, poll_order
from transports.polling.errors import (
    InvalidOrderAnswer,
    ServerError,
    TokenProviderFailed,
    UnexpectedAnswer,
)
from transports.polling.order import OrderDetails, OrderItem, Price, parse_bool, parse_order

__all__ = [
    "DEFAULT_API",
    "Fail",
    "Finish",
    "InvalidOrderAnswer",
    "OrderDetails",
    "OrderItem",
    "PollConfig",
    "PollDecider",
    "Price",
    "RefreshToken",
    "ServerError",
    "Step",
    "TokenProviderFailed",
    "UnexpectedAnswer",
    "Wait",
    "XsollaError",
    "fetch_order",
    "order_url",
    "parse_bool",
    "parse_order",
    "parse_retry_after",
    "poll_order",
]
