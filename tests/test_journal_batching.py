"""Deliveries arriving together share the journal's transactions (PostgreSQL), and
nothing about exactly-once changes: each key taken once, every duplicate answered
the first answer, a key locked by a long transaction held up alone."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support_postgres import postgres_server
from support_webhook import SECRET, order_paid, signed

from orderfsm.errors import JournalUnavailable
from orderfsm.journal import JournalSettings
from transports.journal import open_journal
from transports.journal.batching import Batcher
from transports.webhook import WebhookReceiver

# --- the batcher alone --------------------------------------------------------------------


@pytest.mark.anyio
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    arrivals=st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=25),
    most=st.integers(1, 6),
    lanes=st.integers(1, 3),
)
async def test_every_caller_gets_its_own_result_and_no_item_runs_twice(
    arrivals: list[tuple[int, bool]], most: int, lanes: int
) -> None:
    """Callers arrive while batches run (``ticks`` checkpoints apart); some are cancelled
    while they wait.  Whoever is not cancelled gets ``run``'s result for its own item;
    no item runs twice; a batch never exceeds ``most`` nor do more than ``lanes`` run
    at once; a cancelled caller whose item had not yet been taken never runs."""
    ran: list[int] = []
    sizes: list[int] = []
    running = [0, 0]  # now, most ever

    async def run(items: list[int]) -> list[int]:
        sizes.append(len(items))
        ran.extend(items)
        running[0] += 1
        running[1] = max(running)
        await anyio.lowlevel.checkpoint()
        await anyio.lowlevel.checkpoint()
        running[0] -= 1
        return [item * 10 for item in items]

    batcher: Batcher[int, int] = Batcher(run, most=most, lanes=lanes)
    got: dict[int, int] = {}
    cancelled: set[int] = set()

    async def caller(item: int, cancel: bool) -> None:
        with anyio.CancelScope() as scope:
            if cancel:
                scope.cancel()  # the first wait is cancelled: queued, then gone
            got[item] = await batcher.submit(item)
        if scope.cancelled_caught:
            cancelled.add(item)

    async with anyio.create_task_group() as tasks:
        for item, (ticks, cancel) in enumerate(arrivals):
            for _ in range(ticks):
                await anyio.lowlevel.checkpoint()
            tasks.start_soon(caller, item, cancel)

    assert len(ran) == len(set(ran))
    assert max(sizes) <= most and running[1] <= lanes
    assert all(got[item] == item * 10 for item in got)
    assert set(got) | cancelled == set(range(len(arrivals)))
    assert set(got) <= set(ran)


@pytest.mark.anyio
async def test_a_failed_batch_is_every_items_error_and_the_next_batch_still_runs() -> None:
    calls: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        calls.append(items)
        await anyio.sleep(0.01)
        if 2 in items:
            raise JournalUnavailable("down")
        return items

    batcher: Batcher[int, int] = Batcher(run, lanes=1)
    outcome: dict[int, object] = {}

    async def caller(item: int) -> None:
        try:
            outcome[item] = await batcher.submit(item)
        except JournalUnavailable as exc:
            outcome[item] = exc

    async with anyio.create_task_group() as tasks:
        for item in (1, 2, 3):
            tasks.start_soon(caller, item)
            await anyio.lowlevel.checkpoint()
        await anyio.sleep(0.05)
        tasks.start_soon(caller, 4)
    assert calls == [[1], [2, 3], [4]]
    assert outcome[1] == 1 and outcome[4] == 4
    assert isinstance(outcome[2], JournalUnavailable) and outcome[2] is outcome[3]


# --- on PostgreSQL, through the receiver ----------------------------------------------------


@pytest.mark.anyio
async def test_concurrent_deliveries_share_transactions_and_each_is_handled_once() -> None:
    url = postgres_server().url()
    handled: list[int] = []

    async def handler(notification: object) -> None:
        handled.append(getattr(notification, "order_id"))  # noqa: B009
        await anyio.sleep(0.005)

    orders = list(range(1, 41))
    sends = orders + orders[::4]  # ten duplicates, some arriving beside their first
    answers: list[int] = []
    async with open_journal(url) as journal:
        receiver = WebhookReceiver(SECRET, handler, store=journal)

        async def send(order_id: int) -> None:
            answer = await receiver.handle(signed(order_paid(order_id)), order_paid(order_id))
            answers.append(answer.status)

        async with anyio.create_task_group() as tasks:
            for order_id in sends:
                tasks.start_soon(send, order_id)
        batchers = next(iter(journal._batchers.values()))
        claims, settles = batchers.claims, batchers.settles
        stored = await journal.claims([f"order_paid:{i}" for i in orders])
    assert sorted(handled) == orders
    assert answers == [204] * len(sends)
    assert claims.items == len(sends) and claims.batches < len(sends) / 2
    assert settles.items == len(orders) and settles.batches < len(orders) / 2
    assert all(stored[f"order_paid:{i}"].answer is not None for i in orders)
    import psycopg

    with psycopg.connect(url) as db:
        statuses = db.execute("SELECT order_id, status FROM orderfsm_orders").fetchall()
    assert sorted(statuses) == [(i, "paid") for i in orders]


@pytest.mark.anyio
async def test_a_key_locked_by_a_long_transaction_holds_up_its_own_delivery_only() -> None:
    """A transactional handler elsewhere holds order 7's claim row: the batch it lands
    in gives up on the lock quickly and its deliveries go alone, so the others are
    answered at once and order 7's gets a 5xx after the wait (Xsolla retries it)."""
    import psycopg

    url = postgres_server().url()
    handled: list[int] = []

    async def handler(notification: object) -> None:
        handled.append(getattr(notification, "order_id"))  # noqa: B009

    async with open_journal(url, JournalSettings(wait=1.0)) as journal:
        receiver = WebhookReceiver(SECRET, handler, store=journal)
        assert (await receiver.handle(signed(order_paid(99)), order_paid(99))).status == 204
        holder: psycopg.Connection[tuple[object, ...]] = await anyio.to_thread.run_sync(
            lambda: psycopg.connect(url)
        )
        try:
            await anyio.to_thread.run_sync(holder.execute, "BEGIN")
            await anyio.to_thread.run_sync(
                holder.execute,
                "INSERT INTO orderfsm_claims (key, attempt, state, owner, lease_until, claimed_at)"
                " VALUES ('order_paid:7', 1, 'running', 'elsewhere', 1e12, 0)",
            )
            done: dict[int, tuple[int, float]] = {}
            start = anyio.current_time()

            async def send(order_id: int) -> None:
                answer = await receiver.handle(signed(order_paid(order_id)), order_paid(order_id))
                done[order_id] = (answer.status, anyio.current_time() - start)

            async with anyio.create_task_group() as tasks:
                for order_id in (5, 6, 7, 8, 9):
                    tasks.start_soon(send, order_id)
        finally:
            await anyio.to_thread.run_sync(holder.rollback)
            await anyio.to_thread.run_sync(holder.close)
    assert {i: done[i][0] for i in done} == {5: 204, 6: 204, 7: 500, 8: 204, 9: 204}
    assert max(done[i][1] for i in (5, 6, 8, 9)) < 0.9
    assert sorted(handled) == [5, 6, 8, 9, 99]
