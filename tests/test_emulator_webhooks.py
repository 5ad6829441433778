"""The webhook sender: bodies, signatures, Xsolla's retry rule, and the record."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anyio
import pytest

from transports.emulator import Emulator, WebhookAttempt, sign

pytestmark = pytest.mark.anyio
SECRET = "PROJECT_SECRET_KEY"


class Receiver:
    """A stdlib HTTP server on its own thread: answers with scripted status codes."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[tuple[bytes, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((body, self.headers.get("Authorization", "")))
                status = receiver.statuses.pop(0) if receiver.statuses else 204
                self.send_response(status)
                payload = b"" if status == 204 else b'{"error":{"code":"X","message":"m"}}'
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,))

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receiver_factory() -> Iterator[Callable[[list[int]], Receiver]]:
    started: list[Receiver] = []

    def make(statuses: list[int]) -> Receiver:
        receiver = Receiver(statuses).__enter__()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.__exit__()


async def wait_attempts(emu: Emulator, n: int) -> list[WebhookAttempt]:
    with anyio.fail_after(5):
        while len(attempts := await emu.webhook_deliveries()) < n:  # noqa: ASYNC110 (remote)
            await anyio.sleep(0.02)
    return attempts


async def no_attempt_follows(emu: Emulator, count: int) -> None:
    """Still ``count`` attempts after ten retry intervals (0.01 s each here).

    The one wait in these tests that is not for a condition: it proves an
    absence (the emulator records attempts, not that a delivery is over).  A
    loaded machine can only make it miss an extra attempt, never fail a sender
    that stops when it should.
    """
    await anyio.sleep(0.1)
    assert len(await emu.webhook_deliveries()) == count


def test_signature_matches_the_documented_vectors() -> None:
    assert sign(b'{"notification_type": "order_paid"}', SECRET) == (
        "7a26ac37af1c6225a34c3657c4b56e7c16cfe651"
    )
    assert sign(b"", SECRET) == "78143a5ac4b892a68ce8b0b8b49e26667db0fa07"


async def test_order_paid_is_signed_over_the_raw_body(
    receiver_factory: Callable[[list[int]], Receiver],
) -> None:
    receiver = receiver_factory([])
    async with Emulator(ping_interval=0, secret="s3cret", webhook_url=receiver.url) as emu:
        user = await emu.create_user("alice")
        order = await emu.create_order(user, items=[{"sku": "gem", "quantity": 3, "amount": "3"}])
        await emu.set_status(order, "paid")
        [attempt] = await wait_attempts(emu, 1)
    [(body, auth)] = receiver.received
    assert auth == "Signature " + hashlib.sha1(body + b"s3cret").hexdigest()
    assert attempt.status == 204 and attempt.signature_valid and attempt.body == body.decode()
    payload = json.loads(body)
    assert payload["notification_type"] == "order_paid"
    assert payload["order"]["id"] == order and payload["order"]["status"] == "paid"
    assert payload["user"]["external_id"] == "alice"
    assert payload["items"][0]["sku"] == "gem" and payload["items"][0]["quantity"] == 3
    assert payload["order"]["invoice_id"] == str(payload["billing"]["transaction"]["id"])


async def test_canceled_sends_order_canceled_and_done_sends_nothing(
    receiver_factory: Callable[[list[int]], Receiver],
) -> None:
    receiver = receiver_factory([])
    async with Emulator(ping_interval=0, webhook_url=receiver.url) as emu:
        user = await emu.create_user("alice")
        done, canceled = await emu.create_order(user), await emu.create_order(user)
        await emu.set_status(done, "done")
        await emu.set_status(canceled, "canceled")
        [attempt] = await wait_attempts(emu, 1)
    assert attempt.notification_type == "order_canceled" and attempt.order_id == canceled
    assert json.loads(receiver.received[0][0])["notification_type"] == "order_canceled"


async def test_retries_until_2xx_with_the_same_bytes(
    receiver_factory: Callable[[list[int]], Receiver],
) -> None:
    receiver = receiver_factory([500, 503, 200])
    async with Emulator(
        ping_interval=0, webhook_url=receiver.url, webhook_retry_intervals=[0.01] * 5
    ) as emu:
        order = await emu.create_order(await emu.create_user("alice"))
        await emu.set_status(order, "paid")
        attempts = await wait_attempts(emu, 3)
        await no_attempt_follows(emu, 3)
    assert [a.status for a in attempts] == [500, 503, 200]
    assert [a.attempt for a in attempts] == [1, 2, 3]
    assert len({a.delivery_id for a in attempts}) == 1
    assert len({body for body, _ in receiver.received}) == 1
    assert '"code":"X"' in attempts[0].response_body


async def test_no_retry_after_a_4xx_xsolla_treats_as_final(
    receiver_factory: Callable[[list[int]], Receiver],
) -> None:
    receiver = receiver_factory([400])
    async with Emulator(
        ping_interval=0, webhook_url=receiver.url, webhook_retry_intervals=[0.01] * 3
    ) as emu:
        order = await emu.create_order(await emu.create_user("alice"))
        await emu.set_status(order, "paid")
        await wait_attempts(emu, 1)
        await no_attempt_follows(emu, 1)
        assert [a.status for a in await emu.webhook_deliveries()] == [400]


async def test_unreachable_receiver_is_retried_then_given_up() -> None:
    async with Emulator(ping_interval=0, webhook_retry_intervals=[0.01, 0.01]) as emu:
        with socket.socket() as sock:  # a port that nobody listens on once closed
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        await emu.configure_webhooks(f"http://127.0.0.1:{port}/webhook")
        order = await emu.create_order(await emu.create_user("alice"))
        await emu.set_status(order, "paid")
        attempts = await wait_attempts(emu, 3)
        await no_attempt_follows(emu, 3)
    assert all(a.status is None and a.error for a in attempts)


async def test_duplicate_and_badly_signed_webhooks(
    receiver_factory: Callable[[list[int]], Receiver],
) -> None:
    receiver = receiver_factory([])
    async with Emulator(ping_interval=0, webhook_url=receiver.url) as emu:
        order = await emu.create_order(await emu.create_user("alice"))
        await emu.set_status(order, "paid", webhook=False)
        ids = await emu.send_webhook(order, copies=2)
        assert len(ids) == 2
        [bad_id] = await emu.send_webhook(order, "order_paid", bad_signature=True)
        attempts = await wait_attempts(emu, 3)
    by_id = {a.delivery_id: a for a in attempts}
    assert by_id[ids[0]].body == by_id[ids[1]].body
    assert by_id[ids[0]].signature_valid and not by_id[bad_id].signature_valid
    for body, auth in receiver.received:
        valid = auth == "Signature " + sign(body, SECRET)
        assert valid == (auth != "Signature " + by_id[bad_id].signature)
        assert len(auth.removeprefix("Signature ")) == 40


async def test_send_webhook_needs_a_url() -> None:
    from transports.emulator import EmulatorError

    async with Emulator(ping_interval=0) as emu:
        order = await emu.create_order(await emu.create_user("alice"))
        with pytest.raises(EmulatorError):
            await emu.send_webhook(order, "order_paid")
