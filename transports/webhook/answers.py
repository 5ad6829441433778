"""The HTTP answers the receiver gives, in the shapes Xsolla understands."""

from __future__ import annotations

import json

import attrs

JSON = "application/json"


@attrs.frozen
class WebhookAnswer:
    """Status, body and content type: everything an adapter needs to reply."""

    status: int
    body: bytes = b""
    content_type: str | None = None

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        if self.content_type is None:
            return ()
        return (("Content-Type", self.content_type),)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


ACCEPTED = WebhookAnswer(204)


def error_answer(status: int, code: str, message: str) -> WebhookAnswer:
    """``{"error": {"code": ..., "message": ...}}``, Xsolla's documented error body."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return WebhookAnswer(status, body, JSON)


HANDLER_FAILED = error_answer(500, "SERVER_ERROR", "temporary failure, please retry")
STORE_FAILED = error_answer(500, "SERVER_ERROR", "temporary failure, please retry")
