"""orderfsm.contrib.django in this process, through Django's test client: the view's answers
and the settings it refuses.  (The real server, the kills and PostgreSQL are in
``test_frameworks_wsgi``.)  Django is configured once per process: here, for this module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support_webhook import SECRET, order_paid, signed

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402
from django.test import Client, override_settings  # noqa: E402

from transports.webhook import InvalidUser, Notification, OrderPaid  # noqa: E402

handled: list[int] = []


def plain(notification: Notification) -> None:
    assert isinstance(notification, OrderPaid)
    if notification.order_id == 13:
        raise InvalidUser("no such player")
    handled.append(notification.order_id)


async def awaited(notification: Notification) -> None:
    """The wrong kind for Django, which calls its handler and never awaits it."""
    handled.append(notification.order_id)


def yielding(notification: Notification) -> Iterator[None]:
    """Never runs either: calling it only makes a generator."""
    handled.append(notification.order_id)
    yield


urlpatterns: list[Any] = []


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    if not settings.configured:
        db = tmp_path_factory.mktemp("django") / "game.sqlite3"
        settings.configure(
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(db)}},
            ROOT_URLCONF=__name__,
            ALLOWED_HOSTS=["testserver"],
            MIDDLEWARE=["django.middleware.csrf.CsrfViewMiddleware"],
            ORDERFSM_WEBHOOK={"SECRET": SECRET, "HANDLER": f"{__name__}.plain"},
        )
        django.setup()
        from django.urls import include, path

        urlpatterns.append(path("xsolla/", include("orderfsm.contrib.django.urls")))
    yield Client(enforce_csrf_checks=True)


def post(client: Client, body: bytes, **headers: str) -> Any:
    return client.post(
        "/xsolla/webhook", body, content_type="application/json", headers=signed(body) | headers
    )


def test_the_view_answers_like_the_receiver(client: Client) -> None:
    answers = [post(client, order_paid(12)).status_code for _ in range(2)]
    refused = [post(client, order_paid(13)) for _ in range(2)]
    forged = post(client, order_paid(14), Authorization="Signature " + "0" * 40)
    assert answers == [204, 204] and handled == [12]  # CSRF-exempt; handled once
    assert [r.status_code for r in refused] == [400, 400]
    assert refused[0].content == refused[1].content and b"INVALID_USER" in refused[0].content
    assert refused[0]["Content-Type"] == "application/json"
    assert forged.status_code == 400
    wrong_verb = client.get("/xsolla/webhook")
    assert (wrong_verb.status_code, wrong_verb["Allow"]) == (405, "POST")
    with override_settings(ORDERFSM_WEBHOOK={"SECRET": SECRET, "MAX_BODY_SIZE": 100}):
        assert post(client, order_paid(15)).status_code == 413


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, "missing"),
        ({"HANDLER": f"{__name__}.plain"}, "SECRET"),
        ({"SECRET": SECRET, "HANDLER": "no.such.module"}, "HANDLER"),
        ({"SECRET": SECRET, "HANDLER": plain, "TRANSACTIONAL": plain}, "not both"),
        ({"SECRET": SECRET, "TRANSACTIONAL": plain, "STORE": "x.sqlite3"}, "leave STORE out"),
        ({"SECRET": SECRET, "HANDLER": awaited}, "plain function"),  # never awaited
        ({"SECRET": SECRET, "TRANSACTIONAL": f"{__name__}.awaited"}, "plain function"),
        ({"SECRET": SECRET, "HANDLER": yielding}, "generator function"),
        ({"SECRET": SECRET, "TRANSACTIONAL": f"{__name__}.yielding"}, "generator function"),
        ({"SECRET": SECRET, "DATABASE": "other"}, "no database"),
        ({"SECRET": SECRET, "SECERT": "typo"}, "unknown keys"),
    ],
)
def test_wrong_settings_raise_a_typed_error(
    client: Client, config: dict[str, Any] | None, message: str, tmp_path: Path
) -> None:
    from orderfsm.contrib.django.conf import WebhookConfigError, build_receiver
    from orderfsm.errors import OrderFsmError

    with override_settings(ORDERFSM_WEBHOOK=config), pytest.raises(WebhookConfigError) as caught:
        build_receiver()
    assert message in str(caught.value)
    assert isinstance(caught.value, OrderFsmError)


def test_a_chunked_body_from_a_wsgi_server_is_read_whole(client: Client) -> None:
    """gunicorn hands Django a chunked request (a proxy streaming the body, say) with no
    ``CONTENT_LENGTH`` and ``wsgi.input_terminated`` set: Django's own ``request.body``
    is empty then, and the signature check answered 400 INVALID_SIGNATURE."""
    import io

    from django.core.handlers.wsgi import WSGIRequest

    from orderfsm.contrib.django.views import webhook

    def chunked(body: bytes) -> WSGIRequest:
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/xsolla/webhook",
            "SERVER_NAME": "testserver",
            "SERVER_PORT": "80",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_AUTHORIZATION": signed(body)["Authorization"],
            "HTTP_TRANSFER_ENCODING": "chunked",
            "CONTENT_TYPE": "application/json",
            "wsgi.input": io.BytesIO(body),
            "wsgi.input_terminated": True,
            "wsgi.url_scheme": "http",
        }
        return WSGIRequest(environ)

    answer = webhook(chunked(order_paid(16)))
    assert answer.status_code == 204 and 16 in handled
    with override_settings(ORDERFSM_WEBHOOK={"SECRET": SECRET, "MAX_BODY_SIZE": 100}):
        assert webhook(chunked(order_paid(17))).status_code == 413


def test_a_worker_forked_while_a_thread_builds_the_receiver_builds_its_own(client: Client) -> None:
    """The lock that guards building this process's receiver: a thread of the master holding
    it at the fork (a first request building the receiver) left it held in the worker,
    by a thread that does not exist there, and the worker's first delivery waited for it
    forever.  The worker gets a free lock at the fork, and builds its own receiver."""
    import threading

    from support_fork import exit_code, fork

    from orderfsm.contrib.django import conf

    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with conf._lock:
            holding.set()
            done.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait()
    try:
        pid = fork(lambda: 0 if conf.receiver() is conf.receiver() else 1)
    finally:
        done.set()
        holder.join()
    assert exit_code(pid, within=10.0) == 0
