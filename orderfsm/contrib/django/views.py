"""The webhook view: Django's request in, the receiver's answer out.

Not in the request's transaction (``ATOMIC_REQUESTS``) on any database: the
receiver opens its own, outermost, so the claim, the handler's ORM writes and the answer are
committed before Xsolla gets a 2xx.  CSRF-exempt: the signature is the check.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from orderfsm.contrib.django.conf import receiver
from transports.webhook import SyncWebhookReceiver, WebhookAnswer
from transports.webhook.asgi import METHOD_NOT_ALLOWED


def _response(answer: WebhookAnswer, *extra: tuple[str, str]) -> HttpResponse:
    response = HttpResponse(answer.body, status=answer.status)
    if answer.content_type is None:
        del response["Content-Type"]
    for name, value in (*answer.headers, *extra):
        response[name] = value
    return response


def _content_length(request: HttpRequest) -> int | None:
    value = str(request.META.get("CONTENT_LENGTH") or "")
    return int(value) if value.strip().isdigit() else None


def _webhook(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return _response(METHOD_NOT_ALLOWED, ("Allow", "POST"))
    current = receiver()
    peer = request.META.get("REMOTE_ADDR")
    refusal = current.precheck(_content_length(request))
    if refusal is not None:
        return _response(refusal)
    try:
        body = _body(request, current)
    except RequestDataTooBig:  # over Django's own DATA_UPLOAD_MAX_MEMORY_SIZE
        return _response(current.too_large())
    if isinstance(body, WebhookAnswer):
        return _response(body)
    return _response(current.handle(request.headers.items(), body, peer))


def _body(request: HttpRequest, current: SyncWebhookReceiver) -> bytes | WebhookAnswer:
    """The raw body, chunked ones too.  Django reads ``CONTENT_LENGTH`` bytes, and
    none when a chunked request has no length: its signature then fails, a 400 that
    refunds an ``order_paid`` at once.  A WSGI server that says its input ends by
    itself (``wsgi.input_terminated``: gunicorn, uWSGI, mod_wsgi) is read to its end,
    or to the receiver's limit (the 413)."""
    if _content_length(request) is None and request.META.get("wsgi.input_terminated"):
        stream = request.META.get("wsgi.input")
        if stream is not None:
            return current.read_body(stream.read)
    whole: bytes = request.body
    return whole


class _EveryDatabase(set[str]):
    """Where the view is out of ``ATOMIC_REQUESTS``: every database, not only ``"default"``
    (what ``non_atomic_requests`` gives): the journal's ``DATABASE`` may be another, and
    a request's transaction there would hold the claim's durable block (refused: every
    delivery 500) or a plain handler's writes (committed after the 204 was stored)."""

    def __contains__(self, alias: object) -> bool:
        return True


_webhook._non_atomic_requests = _EveryDatabase()  # type: ignore[attr-defined]  # Django's mark
webhook: Any = csrf_exempt(_webhook)
"""``POST`` Xsolla's notifications here; ``orderfsm.contrib.django.urls`` routes it."""
