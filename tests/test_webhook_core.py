"""The framework-neutral webhook receiver: parsing, answers, idempotency.

These call :meth:`WebhookReceiver.handle` directly with headers and raw
bytes; ``test_webhook_http`` and ``test_webhook_emulator`` do the same over
real sockets.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from support_webhook import SECRET, VECTORS, Recorder, order_paid, signed

from orderfsm.testing import RecordingSink
from transports.webhook import (
    XSOLLA_NETWORKS,
    AllowList,
    InvalidPayload,
    InvalidUser,
    Notification,
    OrderCanceled,
    OrderPaid,
    Payment,
    Refund,
    SyncWebhookReceiver,
    UnknownNotification,
    UserValidation,
    WebhookAnswer,
    WebhookReceiver,
    authorization_header,
    idempotency_key,
    parse_notification,
)


def error_code(answer: WebhookAnswer) -> str:
    code: str = json.loads(answer.body)["error"]["code"]
    return code


# --- parsing ------------------------------------------------------------------------


def test_order_paid_is_parsed_leniently_into_records() -> None:
    note = parse_notification(order_paid(billing={"transaction": {"id": 77, "dry_run": 1}}))
    assert isinstance(note, OrderPaid)
    assert note.order_id == 689810880 and note.order.amount == "1.9900"
    assert note.order.mode == "sandbox" and note.order.invoice_id == "1234567890"
    assert note.items[0].sku == "com.xsolla.item_1" and note.items[0].is_free is False
    assert note.items[0].is_pre_order is False and note.items[0].quantity == 1
    assert note.user is not None and note.user.external_id == "user-1"
    assert note.billing is not None and note.billing.transaction.id == 77
    assert note.billing.transaction.dry_run is True


def test_order_canceled_payment_refund_and_user_validation_are_recognised() -> None:
    assert isinstance(parse_notification(order_paid(kind="order_canceled")), OrderCanceled)
    payment = parse_notification(
        json.dumps(
            {
                "notification_type": "payment",
                "transaction": {"id": "87654321", "external_id": "ext", "dry_run": 0},
                "purchase": {"total": {"currency": "USD", "amount": 9.99}},
                "settings": {"project_id": 12345},
                "user": {"id": "user-1"},
            }
        ).encode()
    )
    assert isinstance(payment, Payment)
    assert payment.transaction.id == 87654321 and payment.transaction.dry_run is False
    assert (payment.amount, payment.currency, payment.project_id) == ("9.99", "USD", 12345)
    refund = parse_notification(b'{"notification_type": "refund", "transaction": {"id": 5}}')
    assert isinstance(refund, Refund) and not refund.partial
    partial = parse_notification(b'{"notification_type":"partial_refund","transaction":{"id":5}}')
    assert isinstance(partial, Refund) and partial.partial
    validation = parse_notification(
        b'{"notification_type": "user_validation", "user": {"id": "u"}}'
    )
    assert isinstance(validation, UserValidation)
    assert validation.user is not None and validation.user.external_id == "u"
    unknown = parse_notification(b'{"notification_type": "afs_reject"}')
    assert isinstance(unknown, UnknownNotification) and unknown.notification_type == "afs_reject"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"order": {"id": 1}}',
        b'{"notification_type": 5}',
        b'{"notification_type": "order_paid"}',
        b'{"notification_type": "order_paid", "order": {"id": -3}}',
        b'{"notification_type": "order_paid", "order": {"id": true}}',
        b'{"notification_type": "payment", "transaction": {}}',
        b"\xff\xfe",
        b"[" * 100_000,  # deep enough to exhaust the JSON parser's recursion
    ],
)
def test_bodies_that_are_not_notifications_are_invalid_payloads(body: bytes) -> None:
    with pytest.raises(InvalidPayload):
        parse_notification(body)


def test_idempotency_keys() -> None:
    paid = order_paid(42)
    assert idempotency_key(parse_notification(paid), paid) == "order_paid:42"
    canceled = order_paid(42, kind="order_canceled")
    assert idempotency_key(parse_notification(canceled), canceled) == "order_canceled:42"
    pay = b'{"notification_type": "payment", "transaction": {"id": 9}}'
    assert idempotency_key(parse_notification(pay), pay) == "payment:9"
    one = b'{"notification_type":"partial_refund","transaction":{"id":9},"amount":"1"}'
    two = b'{"notification_type":"partial_refund","transaction":{"id":9},"amount":"2"}'
    assert idempotency_key(parse_notification(one), one) != idempotency_key(
        parse_notification(two), two
    )
    check = b'{"notification_type": "user_validation"}'
    assert idempotency_key(parse_notification(check), check) is None


# --- the receiver's answers ---------------------------------------------------------------


@pytest.mark.anyio
async def test_a_good_notification_is_handled_and_answered_204() -> None:
    handler = Recorder()
    sink = RecordingSink()
    receiver = WebhookReceiver(SECRET, handler, sink=sink)
    body = order_paid(1001)
    answer = await receiver.handle(signed(body), body, "185.30.20.5")
    assert answer == WebhookAnswer(204)
    (note,) = handler.handled
    assert isinstance(note, OrderPaid) and note.order_id == 1001
    (observation,) = sink.observations
    assert (observation.order_id, observation.status, observation.source) == (
        1001,
        "paid",
        "webhook",
    )
    assert observation.raw is note


@pytest.mark.anyio
async def test_the_header_name_is_case_insensitive_and_pairs_work() -> None:
    receiver = WebhookReceiver(SECRET, Recorder())
    body = order_paid(1)
    pairs = [("authorization", authorization_header(body, SECRET))]
    assert (await receiver.handle(pairs, body)).status == 204
    twice = pairs * 2  # two Authorization headers: which one would be meant?
    assert error_code(await receiver.handle(twice, body)) == "INVALID_SIGNATURE"


@pytest.mark.anyio
async def test_a_canceled_order_is_observed_as_canceled() -> None:
    sink = RecordingSink()
    receiver = WebhookReceiver(SECRET, sink=sink)
    body = order_paid(7, kind="order_canceled")
    assert (await receiver.handle(signed(body), body)).status == 204
    assert [o.status for o in sink.observations] == ["canceled"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Signature " + "0" * 40}, signed(order_paid(2), "other-secret")],
    ids=["missing", "wrong", "other-secret"],
)
async def test_a_bad_signature_is_400_invalid_signature_and_nothing_happens(
    headers: dict[str, str],
) -> None:
    handler = Recorder()
    sink = RecordingSink()
    receiver = WebhookReceiver(SECRET, handler, sink=sink)
    answer = await receiver.handle(headers, order_paid(2))
    assert answer.status == 400 and error_code(answer) == "INVALID_SIGNATURE"
    assert answer.content_type == "application/json"
    assert json.loads(answer.body)["error"]["message"]
    assert handler.calls == 0 and sink.observations == []


@pytest.mark.anyio
async def test_a_signed_body_that_is_not_a_notification_is_400_invalid_parameter() -> None:
    handler = Recorder()
    receiver = WebhookReceiver(SECRET, handler)
    for body in [b"not json", b'{"notification_type": "order_paid", "order": {}}']:
        answer = await receiver.handle(signed(body), body)
        assert answer.status == 400 and error_code(answer) == "INVALID_PARAMETER"
    assert handler.calls == 0


@pytest.mark.anyio
@pytest.mark.parametrize("vector", VECTORS[:4], ids=lambda v: v[0].decode())
async def test_the_reference_bodies_get_answers(vector: tuple[bytes, str]) -> None:
    body, digest = vector
    handler = Recorder()
    receiver = WebhookReceiver(SECRET, handler)
    answer = await receiver.handle({"Authorization": f"Signature {digest}"}, body)
    if b"order_" in body or b"payment" in body:
        # Verified, but without an order or transaction id it is not a usable notification.
        assert error_code(answer) == "INVALID_PARAMETER"
    else:
        assert answer.status == 204 and len(handler.handled) == 1


@pytest.mark.anyio
async def test_an_unknown_type_is_acknowledged_without_effect() -> None:
    handler = Recorder()
    sink = RecordingSink()
    receiver = WebhookReceiver(SECRET, handler, sink=sink)
    body = b'{"notification_type": "redeem_key", "order": {"id": 5}}'
    assert (await receiver.handle(signed(body), body)).status == 204
    assert handler.calls == 0 and sink.observations == []


@pytest.mark.anyio
async def test_a_repeat_is_answered_the_same_without_calling_the_handler_again() -> None:
    handler = Recorder()
    receiver = WebhookReceiver(SECRET, handler)
    body = order_paid(3)
    first = await receiver.handle(signed(body), body)
    again = await receiver.handle(signed(body), body)
    # Xsolla's retry may carry the same notification re-serialized: same key, same answer.
    reformatted = json.dumps(json.loads(body), indent=2).encode()
    third = await receiver.handle(signed(reformatted), reformatted)
    assert first == again == third == WebhookAnswer(204)
    assert handler.calls == 1


@pytest.mark.anyio
async def test_concurrent_deliveries_of_one_notification_run_the_handler_once() -> None:
    handler = Recorder(delay=0.1)
    receiver = WebhookReceiver(SECRET, handler)
    body = order_paid(4)
    answers: list[WebhookAnswer] = []

    async def deliver() -> None:
        answers.append(await receiver.handle(signed(body), body))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(deliver)
    assert answers == [WebhookAnswer(204)] * 5
    assert handler.calls == 1


@pytest.mark.anyio
async def test_different_notifications_do_not_wait_for_each_other() -> None:
    handler = Recorder(delay=0.2)
    receiver = WebhookReceiver(SECRET, handler)
    start = anyio.current_time()
    async with anyio.create_task_group() as tg:
        for order_id in range(10, 20):
            body = order_paid(order_id)
            tg.start_soon(receiver.handle, signed(body), body)
    assert anyio.current_time() - start < 1.0  # not 10 x 0.2 s
    assert handler.calls == 10


@pytest.mark.anyio
async def test_a_handler_failure_answers_500_and_the_retry_is_handled_once() -> None:
    handler = Recorder(fail_times=1)
    receiver = WebhookReceiver(SECRET, handler)
    body = order_paid(5)
    failed = await receiver.handle(signed(body), body)
    assert failed.status == 500 and b"database" not in failed.body  # no internals leak
    retried = await receiver.handle(signed(body), body)
    again = await receiver.handle(signed(body), body)
    assert retried == again == WebhookAnswer(204)
    assert handler.calls == 2 and len(handler.handled) == 1


@pytest.mark.anyio
async def test_a_deliberate_refusal_is_400_with_its_code_and_is_repeated() -> None:
    calls = 0

    async def reject(notification: Notification) -> None:
        nonlocal calls
        calls += 1
        raise InvalidUser("no such player")

    receiver = WebhookReceiver(SECRET, reject)
    body = order_paid(6)
    first = await receiver.handle(signed(body), body)
    assert first.status == 400 and error_code(first) == "INVALID_USER"
    assert json.loads(first.body)["error"]["message"] == "no such player"
    assert await receiver.handle(signed(body), body) == first
    assert calls == 1


@pytest.mark.anyio
async def test_user_validation_is_asked_every_time() -> None:
    handler = Recorder()
    receiver = WebhookReceiver(SECRET, handler)
    body = b'{"notification_type": "user_validation", "user": {"id": "u1"}}'
    for _ in range(2):
        assert (await receiver.handle(signed(body), body)).status == 204
    assert handler.calls == 2


@pytest.mark.anyio
async def test_a_body_over_the_limit_is_413_before_anything_else() -> None:
    handler = Recorder()
    receiver = WebhookReceiver(SECRET, handler, max_body_size=100)
    body = order_paid(8)
    assert len(body) > 100
    answer = await receiver.handle(signed(body), body)
    assert answer.status == 413 and handler.calls == 0
    assert receiver.precheck(101) == answer
    assert receiver.precheck(100) is None


@pytest.mark.anyio
async def test_the_allow_list_answers_signed_deliveries_from_other_peers_503_and_handles_nothing(
    tmp_path: Path,
) -> None:
    """A signed delivery from outside the list is Xsolla on a network the list lacks
    (or a leaked secret): a 4xx to ``order_paid`` would refund the player at once,
    so it is 503 (retried for hours while the list is mended), and nothing is
    handled, told to the sink, or remembered (the retry from a listed peer runs)."""
    handler = Recorder()
    sink = RecordingSink()
    receiver = WebhookReceiver(
        SECRET, handler, sink=sink, allowed_networks=XSOLLA_NETWORKS,
        store=str(tmp_path / "journal.sqlite3"),
    )  # fmt: skip
    body = order_paid(9)
    async with receiver:
        for peer in ["127.0.0.1", "185.30.24.1", None, "garbage"]:
            answer = await receiver.handle(signed(body), body, peer)
            assert answer.status == 503 and error_code(answer) == "INVALID_CLIENT_IP"
            forged = await receiver.handle(signed(body, "wrong secret"), body, peer)
            assert forged.status == 400 and error_code(forged) == "INVALID_SIGNATURE"
        assert handler.calls == 0 and sink.observations == []
        for peer in ["185.30.20.1", "185.30.23.254", "34.94.43.207", "::ffff:185.30.21.9"]:
            assert (await receiver.handle(signed(body), body, peer)).status == 204
    assert handler.calls == 1 and len(sink.observations) == 4
    assert receiver.stats().deliveries["forbidden"] == 4


def test_allow_lists() -> None:
    allow = AllowList(["10.0.0.0/8", "2001:db8::/32"])
    assert allow.allows("10.1.2.3") and allow.allows("2001:db8::1")
    assert not allow.allows("11.0.0.1") and not allow.allows("") and not allow.allows("::1")
    xsolla = AllowList(XSOLLA_NETWORKS)
    assert xsolla.allows("185.30.22.7") and not xsolla.allows("34.102.38.179")


@pytest.mark.anyio
async def test_a_failing_sink_does_not_change_the_answer() -> None:
    class BrokenSink(RecordingSink):
        def observe(self, observation: object, /) -> None:
            raise KeyError("not tracked")

    handler = Recorder()
    receiver = WebhookReceiver(SECRET, handler, sink=BrokenSink())
    body = order_paid(10)
    assert (await receiver.handle(signed(body), body)).status == 204
    assert handler.calls == 1


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        WebhookReceiver("")


@pytest.mark.anyio
async def test_a_handler_runs_once_whatever_kind_it_is_and_one_never_run_is_refused(
    tmp_path: Path,
) -> None:
    """Where the receiver awaits, a plain function (or a lambda around an ``async def``)
    runs once and answers 204: awaiting its ``None`` failed *after* the grant, a 500,
    and each of Xsolla's retries granted again.  An ``async def`` where the receiver
    only calls (sync receiver, transactional handler) would never run, its 204
    granting nothing: refused when the receiver is made."""
    granted: list[int] = []

    def plain(notification: Notification) -> None:
        granted.append(1)

    async def awaited(notification: Notification) -> None:
        granted.append(2)

    class Handler:
        async def __call__(self, notification: Notification) -> None:
            granted.append(3)

    handlers = [plain, lambda n: awaited(n), functools.partial(awaited), Handler()]
    for number, handler in enumerate(handlers):
        receiver = WebhookReceiver(SECRET, handler)
        body = order_paid(40 + number)
        answers = [(await receiver.handle(signed(body), body)).status for _ in range(2)]
        assert answers == [204, 204]
    assert granted == [1, 2, 2, 3]
    store = str(tmp_path / "journal.sqlite3")
    with pytest.raises(TypeError, match="must be a plain function"):
        SyncWebhookReceiver(SECRET, awaited)
    with pytest.raises(TypeError, match="must be a plain function"):
        WebhookReceiver(SECRET, transactional=awaited, store=store)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a plain function"):
        SyncWebhookReceiver(SECRET, transactional=awaited, store=store)  # type: ignore[arg-type]


granted_by_generators: list[int] = []


def yielding(notification: Notification, connection: object = None) -> Iterator[None]:
    granted_by_generators.append(1)  # never reached: calling it only makes a generator
    yield


async def async_yielding(
    notification: Notification, connection: object = None
) -> AsyncIterator[None]:
    granted_by_generators.append(2)
    yield


class YieldingMethod:
    async def __call__(self, notification: Notification) -> AsyncIterator[None]:
        granted_by_generators.append(3)
        yield


GENERATORS = [yielding, async_yielding, functools.partial(yielding), YieldingMethod()]


@pytest.mark.parametrize("handler", GENERATORS, ids=["def", "async_def", "partial", "call"])
@pytest.mark.parametrize("receiver", ["async", "sync", "async_transactional", "sync_transactional"])
def test_a_generator_function_handler_is_refused_when_the_receiver_is_made(
    handler: Any, receiver: str, tmp_path: Path
) -> None:
    """A handler with a ``yield`` (``def`` or ``async def``) is never run by calling it,
    nor by awaiting what it returns: each delivery was answered 204 and stored with
    nothing granted.  Every receiver refuses it, as it refuses an ``async def`` it would
    only call (Flask's blueprint serves a ``SyncWebhookReceiver``; Django's settings are
    ``test_frameworks_django``'s)."""
    store = str(tmp_path / "journal.sqlite3")
    make = {
        "async": lambda: WebhookReceiver(SECRET, handler),
        "sync": lambda: SyncWebhookReceiver(SECRET, handler),
        "async_transactional": lambda: WebhookReceiver(SECRET, transactional=handler, store=store),
        "sync_transactional": lambda: SyncWebhookReceiver(
            SECRET, transactional=handler, store=store
        ),
    }[receiver]
    with pytest.raises(TypeError, match="must not be a generator function"):
        make()
    assert granted_by_generators == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    "billing",
    [{}, {"transaction": None}, {"transaction": {"id": None}}, {"transaction": {"id": "tx-2"}}],
)
async def test_an_order_paid_with_a_billing_block_without_a_usable_id_is_accepted(
    billing: object,
) -> None:
    """Only ``order.id`` identifies an order notification.  A ``billing`` block whose
    transaction id is missing or not a number reads as no billing, not as a 400: a 4xx
    to a signed ``order_paid`` refunds the player at once."""
    handler = Recorder()
    receiver = WebhookReceiver(SECRET, handler)
    body = order_paid(21, billing=billing)
    answer = await receiver.handle(signed(body), body)
    assert answer.status == 204 and handler.calls == 1
    assert isinstance(handler.handled[0], OrderPaid) and handler.handled[0].billing is None


@pytest.mark.anyio
@pytest.mark.parametrize("order_id", ["9" * 5000, 2**70, 2**63])
async def test_an_id_no_database_holds_is_a_400_not_an_exception(
    order_id: object, tmp_path: Path
) -> None:
    """Signed, so it is a body of Xsolla's own making, and absurd: answered like any
    other invalid notification, never raised out of ``handle`` (``int()`` refuses 4,300
    digits; SQLite refuses integers over 2**63 - 1)."""
    receiver = WebhookReceiver(SECRET, Recorder(), store=str(tmp_path / "journal.sqlite3"))
    body = json.dumps({"notification_type": "order_paid", "order": {"id": order_id}}).encode()
    async with receiver:
        answer = await receiver.handle(signed(body), body)
    assert answer.status == 400 and b"INVALID_PARAMETER" in answer.body
