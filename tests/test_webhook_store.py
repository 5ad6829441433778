"""Where the receiver remembers answers: the in-memory and the SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest
from support_webhook import SECRET, Recorder, order_paid, signed

from transports.webhook import (
    InvalidUser,
    MemoryStore,
    Notification,
    OrderPaid,
    SqliteStore,
    WebhookAnswer,
    WebhookReceiver,
)


@pytest.mark.anyio
async def test_the_sqlite_store_keeps_its_promise_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "seen.sqlite"
    handler = Recorder()
    paid, refused = order_paid(11), order_paid(12)

    async def refuse_12(notification: Notification) -> None:
        if isinstance(notification, OrderPaid) and notification.order_id == 12:
            raise InvalidUser("refused")
        await handler(notification)

    first = WebhookReceiver(SECRET, refuse_12, store=SqliteStore(path))
    assert (await first.handle(signed(paid), paid)).status == 204
    refusal = await first.handle(signed(refused), refused)
    await first.aclose()

    second = WebhookReceiver(SECRET, refuse_12, store=SqliteStore(path))
    try:
        assert (await second.handle(signed(paid), paid)).status == 204
        assert await second.handle(signed(refused), refused) == refusal
        other = order_paid(13)
        assert (await second.handle(signed(other), other)).status == 204
    finally:
        await second.aclose()
    assert [n.order_id for n in handler.handled if isinstance(n, OrderPaid)] == [11, 13]


@pytest.mark.anyio
async def test_a_failed_handler_is_not_recorded_in_the_sqlite_store(tmp_path: Path) -> None:
    path = tmp_path / "seen.sqlite"
    handler = Recorder(fail_times=1)
    body = order_paid(14)
    async with SqliteStore(path) as store:
        receiver = WebhookReceiver(SECRET, handler, store=store)
        assert (await receiver.handle(signed(body), body)).status == 500
    async with SqliteStore(path) as store:
        receiver = WebhookReceiver(SECRET, handler, store=store)
        assert (await receiver.handle(signed(body), body)).status == 204
    assert len(handler.handled) == 1


@pytest.mark.anyio
async def test_an_unreadable_store_answers_500_without_running_the_handler(
    tmp_path: Path,
) -> None:
    handler = Recorder()
    receiver = WebhookReceiver(SECRET, handler, store=SqliteStore(tmp_path / "no" / "such.db"))
    body = order_paid(15)
    answer = await receiver.handle(signed(body), body)
    assert answer.status == 500 and handler.calls == 0
    await receiver.aclose()


@pytest.mark.anyio
async def test_stores_keep_the_first_answer_and_memory_is_bounded() -> None:
    memory = MemoryStore(max_entries=2)
    await memory.put("a", WebhookAnswer(204))
    await memory.put("a", WebhookAnswer(400))
    assert await memory.get("a") == WebhookAnswer(204)
    await memory.put("b", WebhookAnswer(204))
    await memory.put("c", WebhookAnswer(204))
    assert len(memory) == 2 and await memory.get("a") is None


@pytest.mark.anyio
async def test_the_sqlite_store_round_trips_answers(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "s.db") as store:
        answer = WebhookAnswer(400, b'{"error": {}}', "application/json")
        assert await store.get("k") is None
        await store.put("k", answer)
        await store.put("k", WebhookAnswer(204))
        assert await store.get("k") == answer
