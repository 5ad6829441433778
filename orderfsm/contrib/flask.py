"""Xsolla webhooks in a Flask app: a blueprint around a synchronous receiver.

::

    receiver = SyncWebhookReceiver(SECRET, transactional=grant, store="postgresql://...")
    app.register_blueprint(webhook_blueprint(receiver), url_prefix="/xsolla")

``POST /xsolla/webhook`` then answers Xsolla.  The receiver's journal opens on
the first delivery, in each worker process (after a pre-forking server such
as gunicorn forks), and its transactional handler is given the journal's
connection, so the grant commits with the answer.  ``pip install
'orderfsm[flask]'``.
"""

from __future__ import annotations

from flask import Blueprint, Response, request

from transports.webhook import SyncWebhookReceiver, WebhookAnswer
from transports.webhook.asgi import METHOD_NOT_ALLOWED


def _response(answer: WebhookAnswer, *extra: tuple[str, str]) -> Response:
    response = Response(answer.body, status=answer.status)
    if answer.content_type is None:
        del response.headers["Content-Type"]
    for name, value in (*answer.headers, *extra):
        response.headers[name] = value
    return response


def webhook_blueprint(
    receiver: SyncWebhookReceiver, *, path: str = "/webhook", name: str = "orderfsm_webhook"
) -> Blueprint:
    """A blueprint serving ``receiver`` at ``path`` (``POST`` only)."""
    blueprint = Blueprint(name, __name__)

    def webhook() -> Response:
        if request.method != "POST":
            return _response(METHOD_NOT_ALLOWED, ("Allow", "POST"))
        peer = request.remote_addr
        refusal = receiver.precheck(request.content_length)
        if refusal is not None:
            return _response(refusal)
        body = receiver.read_body(request.stream.read)  # chunked: no length to check first
        if isinstance(body, WebhookAnswer):
            return _response(body)
        return _response(receiver.handle(list(request.headers.items()), body, peer))

    blueprint.add_url_rule(path, "webhook", webhook, methods=["POST", "GET"])
    return blueprint


__all__ = ["webhook_blueprint"]
