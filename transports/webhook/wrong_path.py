"""A POST to a path the receiver does not serve: 503, never 404.

Xsolla neither retries a 400, 401, 402, 403, 404, 409, 415 or 422 nor waits
with it: with automatic refunds on, an ``order_paid`` answered so is refunded
at once.  A typo in the webhook URL in Publisher Account (``/webhook/``,
``/Webhook``, ``/``) or a proxy rewriting the path is our misconfiguration,
and a 404 for it would lose or refund every order paid until someone noticed.
A 503 is retried for about 12 hours while the URL is mended.  ``GET`` and
``HEAD`` on an unknown path stay 404: browsers and scanners, never Xsolla.

A body signed with the receiver's secret is Xsolla (or someone with the
secret) at the wrong URL: logged as an error, the alert to act on.  Any other
is most likely a scanner: logged at info, so the alert stays quiet.
"""

from __future__ import annotations

import logging

from transports.webhook.answers import WebhookAnswer, error_answer
from transports.webhook.checks import Headers, signed
from transports.webhook.receiver_base import ReceiverBase

logger = logging.getLogger("orderfsm.webhook")


def wrong_path(
    receiver: ReceiverBase,
    headers: Headers,
    body: bytes | None,
    path: str,
    expected: str,
    peer: str | None,
) -> WebhookAnswer:
    """The answer to a ``POST path`` where the receiver listens on ``POST expected``;
    ``body`` is ``None`` when it was not read whole (past the receiver's limit)."""
    is_signed = body is not None and signed(receiver.secret, headers, body)
    level = logging.ERROR if is_signed else logging.INFO
    if logger.isEnabledFor(level):
        # %r: the decoded path may hold a newline, which must not start a log line.
        logger.log(
            level,
            "%s came to %r, not to %r where the receiver listens: answered 503 so "
            "Xsolla retries; correct the webhook URL (in Publisher Account, or the proxy's "
            "path)",
            "a correctly signed POST" if is_signed else "a POST not signed with our secret",
            path,
            expected,
            extra={"event": "webhook.wrong_path", "path": path, "peer": peer, "signed": is_signed},
        )
    message = f"no webhook here: this receiver listens on POST {expected}"
    return error_answer(503, "WRONG_PATH", message)
