"""The HTTP answers the receiver gives, in the shapes Xsolla understands."""

from __future__ import annotations

import json

from orderfsm.journal import Answer

JSON = "application/json"

WebhookAnswer = Answer
"""Status, body and content type: everything an adapter needs to reply, and what
the journal stores to repeat to duplicates."""


ACCEPTED = WebhookAnswer(204)


def error_answer(status: int, code: str, message: str) -> WebhookAnswer:
    """``{"error": {"code": ..., "message": ...}}``, Xsolla's documented error body."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return WebhookAnswer(status, body, JSON)


HANDLER_FAILED = error_answer(500, "SERVER_ERROR", "temporary failure, please retry")
STORE_FAILED = error_answer(500, "SERVER_ERROR", "temporary failure, please retry")
"""The journal could not be used, or another delivery of the same notification is
still at work: never a 4xx, which Xsolla would not retry (and might refund)."""
