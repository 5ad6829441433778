"""Deliveries arriving together share the journal's transactions (PostgreSQL, SQLite), and
nothing about exactly-once changes: each key taken once, every duplicate answered
the first answer, a key locked by a long transaction held up alone."""

from __future__ import annotations

from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support_journal import (
    connect,
    is_postgres,
    on_answer,
    on_databases,
    on_update,
    refuse_answers,
    url_for,
)
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


@pytest.mark.anyio
async def test_a_caller_queued_behind_a_stuck_batch_gives_up_after_its_patience() -> None:
    """A batch stuck at the database must not hold the callers queued behind it past
    their deadline (their deliveries are answered 5xx and retried); a caller already
    in the stuck batch waits for its result, which still comes."""
    release = anyio.Event()

    async def run(items: list[int]) -> list[int]:
        if 1 in items:
            await release.wait()
        return items

    batcher: Batcher[int, int] = Batcher(run, lanes=1, patience=0.2)
    outcome: dict[int, object] = {}

    async def caller(item: int) -> None:
        started = anyio.current_time()
        try:
            outcome[item] = await batcher.submit(item)
        except JournalUnavailable:
            outcome[item] = round(anyio.current_time() - started, 1)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(caller, 1)
        await anyio.lowlevel.checkpoint()
        tasks.start_soon(caller, 2)
        tasks.start_soon(caller, 3)
        await anyio.sleep(0.5)
        assert outcome == {2: 0.2, 3: 0.2}  # gave up; the stuck batch goes on
        release.set()
    assert outcome == {1: 1, 2: 0.2, 3: 0.2}
    assert await batcher.submit(4) == 4  # the lane was handed back


# --- on PostgreSQL, through the receiver ----------------------------------------------------


@pytest.mark.anyio
@on_databases
async def test_concurrent_deliveries_share_transactions_and_each_is_handled_once(
    backend: str, tmp_path: Path
) -> None:
    url = url_for(backend, tmp_path)
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
        batchers = journal._batched()
        claims, settles = batchers.claims, batchers.settles
        stored = await journal.claims([f"order_paid:{i}" for i in orders])
    assert sorted(handled) == orders
    assert answers == [204] * len(sends)
    assert claims.items == len(sends) and claims.batches < len(sends) / 2
    assert settles.items == len(orders) and settles.batches < len(orders) / 2
    assert all(stored[f"order_paid:{i}"].answer is not None for i in orders)
    db = connect(url)
    try:
        statuses = db.execute("SELECT order_id, status FROM orderfsm_orders").fetchall()
        handled_rows = db.execute(
            "SELECT count(*) FROM orderfsm_deliveries WHERE outcome = 'handled'"
        ).fetchone()
    finally:
        db.close()
    assert sorted(statuses) == [(i, "paid") for i in orders]
    assert tuple(handled_rows) == (len(orders),)


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


@pytest.mark.anyio
@on_databases
async def test_an_answer_that_cannot_be_written_fails_alone_not_its_whole_batch(
    backend: str, tmp_path: Path
) -> None:
    """Handlers that finish together have their answers written in one transaction.
    One of them cannot be written (a trigger refuses order 3's) and one handler's
    error quotes a NUL from the payload, which PostgreSQL's text refuses: the others'
    answers must still be recorded, or Xsolla's retries would run their handlers again."""
    url = url_for(backend, tmp_path)
    orders = list(range(1, 9))
    handled: list[int] = []
    started = anyio.Event()

    async def handler(notification: object) -> None:
        order_id = getattr(notification, "order_id")  # noqa: B009
        handled.append(order_id)
        if len(handled) == len(orders):
            started.set()
        await started.wait()  # all finish together: their answers queue into one batch
        if order_id == 1:
            raise ValueError("player name 'bad\x00name'")

    async with open_journal(url, JournalSettings(wait=1.0)) as journal:
        refuse_answers(url, "order_paid:3")
        try:
            receiver = WebhookReceiver(SECRET, handler, store=journal)
            answers: dict[int, int] = {}

            async def send(order_id: int) -> None:
                payload = order_paid(order_id)
                answers[order_id] = (await receiver.handle(signed(payload), payload)).status

            async with anyio.create_task_group() as tasks:
                for order_id in orders:
                    tasks.start_soon(send, order_id)
            settles = journal._batched().settles
            stored = await journal.claims([f"order_paid:{i}" for i in orders])
            errors = [d.error for d in await journal.deliveries() if d.order_id == 1]
        finally:
            db = connect(url)
            try:
                on_claims = " ON orderfsm_claims" if is_postgres(url) else ""
                db.execute(f"DROP TRIGGER refuse_answer{on_claims}")
            finally:
                db.close()
    assert 0 < settles.batches < settles.items  # some answers did share a transaction
    assert answers == {i: 500 if i in (1, 3) else 204 for i in orders}
    assert sorted(handled) == orders
    recorded = {i for i in orders if stored[f"order_paid:{i}"].answer is not None}
    assert recorded == set(orders) - {1, 3}  # a failure releases its claim (1); 3 unwritten
    assert errors and "bad\\x00name" in (errors[0] or "")


@pytest.mark.anyio
async def test_an_answer_held_up_by_a_row_lock_is_a_journal_failure_not_a_crash() -> None:
    """Another connection locks order 2's claim row while the answers are written, and
    keeps it past the claim's lease: the batch gives up on the lock and order 2's
    answer, alone, tries again until the lease runs out.  That is our trouble: a 500
    the receiver counts (Xsolla retries), never an exception out of ``handle`` past
    the receiver's own bookkeeping."""
    import psycopg

    url = postgres_server().url()
    claimed = anyio.Event()
    claims = 0

    async def handler(notification: object) -> None:
        nonlocal claims
        claims += 1
        if claims == 3:
            claimed.set()
        await anyio.sleep(0.3)

    async with open_journal(url, JournalSettings(wait=1.0, lease=2.5)) as journal:
        receiver = WebhookReceiver(SECRET, handler, store=journal)
        holder = await anyio.to_thread.run_sync(lambda: psycopg.connect(url, autocommit=True))
        answers: dict[int, int] = {}

        async def send(order_id: int) -> None:
            payload = order_paid(order_id)
            answers[order_id] = (await receiver.handle(signed(payload), payload)).status

        async def hold() -> None:
            await claimed.wait()  # after the claims, before the answers
            await anyio.to_thread.run_sync(holder.execute, "BEGIN")
            await anyio.to_thread.run_sync(
                holder.execute,
                "SELECT 1 FROM orderfsm_claims WHERE key = 'order_paid:2' FOR UPDATE",
            )

        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(hold)
                for order_id in (1, 2, 3):
                    tasks.start_soon(send, order_id)
        finally:
            await anyio.to_thread.run_sync(holder.execute, "ROLLBACK")
            await anyio.to_thread.run_sync(holder.close)
        stats = receiver.stats()
    assert answers == {1: 204, 2: 500, 3: 204}
    assert stats.deliveries["journal_failed"] == 1 and stats.journal_failures == 1


def test_one_journal_serves_event_loops_in_several_threads() -> None:
    """An application may run a loop per thread (``orderfsm.blocking`` does) and share
    one journal: each loop batches with its own objects.  Two asyncio loops and two
    trio loops deliver at once; all are answered, each notification handled once."""
    import threading

    url = postgres_server().url()
    handled: list[int] = []

    async def handler(notification: object) -> None:
        handled.append(getattr(notification, "order_id"))  # noqa: B009
        await anyio.sleep(0.01)

    journal = open_journal(url)
    journal.sync.open()
    receiver = WebhookReceiver(SECRET, handler, store=journal)
    answers: dict[int, object] = {}

    async def deliver(first: int) -> None:
        async def send(order_id: int) -> None:
            payload = order_paid(order_id)
            try:
                with anyio.fail_after(10):
                    answers[order_id] = (await receiver.handle(signed(payload), payload)).status
            except Exception as exc:  # a loop woken from another thread hangs: a timeout
                answers[order_id] = repr(exc)

        async with anyio.create_task_group() as tasks:
            for order_id in range(first, first + 20):
                tasks.start_soon(send, order_id)

    loops = [
        threading.Thread(target=anyio.run, args=(deliver, 100 * i), kwargs={"backend": backend})
        for i, backend in enumerate(("asyncio", "asyncio", "trio", "trio"), start=1)
    ]
    try:
        for loop in loops:
            loop.start()
        for loop in loops:
            loop.join(30)
    finally:
        journal.sync.close()
    orders = [100 * i + n for i in range(1, 5) for n in range(20)]
    assert answers == dict.fromkeys(orders, 204)
    assert sorted(handled) == orders


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_answers_in_a_batch_whose_leader_asyncio_cancelled_are_still_recorded() -> None:
    """asyncio only: its own cancellation (``asyncio.wait_for`` around ``handle``, a
    server dropping a request) passes anyio's shield, so the leader of an answers'
    batch leaves while the batch runs on in its thread.  The others in that batch
    must not answer 5xx for answers that are being written: they write theirs alone
    (fenced by the attempt, so nothing is written twice).  On trio a cancellation
    never passes a shield."""
    import asyncio

    import psycopg

    url = postgres_server().url()
    handled: list[int] = []

    async def handler(notification: object) -> None:
        order_id = getattr(notification, "order_id")  # noqa: B009
        handled.append(order_id)
        if order_id != 10:
            await anyio.sleep(0.05)  # queued behind order 10's answer

    with psycopg.connect(url, autocommit=True) as db:
        async with open_journal(url, JournalSettings(wait=2.0)) as journal:
            # Slow answers: order 10's holds the lane, order 11's batch is under way
            # when its leader is cancelled.
            on_answer(
                db,
                "slow_answer",
                "IF NEW.key IN ('order_paid:10', 'order_paid:11') THEN"
                " PERFORM pg_sleep(0.3); END IF;",
            )
            try:
                receiver = WebhookReceiver(SECRET, handler, store=journal)
                answers: dict[int, object] = {}

                async def send(order_id: int, within: float) -> None:
                    payload = order_paid(order_id)
                    try:
                        answer = await asyncio.wait_for(
                            receiver.handle(signed(payload), payload), within
                        )
                        answers[order_id] = answer.status
                    except TimeoutError:
                        answers[order_id] = "cancelled"

                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(send, 10, 5.0)
                    await anyio.sleep(0.01)
                    tasks.start_soon(send, 11, 0.45)  # leads the second batch, cancelled in it
                    await anyio.sleep(0.01)
                    for order_id in (12, 13):
                        tasks.start_soon(send, order_id, 5.0)
                await anyio.sleep(0.5)  # the abandoned batch's thread finishes
                stored = await journal.claims([f"order_paid:{i}" for i in (10, 11, 12, 13)])
            finally:
                db.execute("DROP TRIGGER slow_answer ON orderfsm_claims")
    assert answers == {10: 204, 11: "cancelled", 12: 204, 13: 204}
    assert sorted(handled) == [10, 11, 12, 13]
    assert all(claim.answer is not None for claim in stored.values())


@pytest.mark.anyio
async def test_a_duplicate_gets_the_stored_answer_even_when_its_record_cannot_be_written() -> None:
    """A duplicate that waited for the first delivery repeats its answer; writing down
    that it came is bookkeeping, and its failure must not turn the answer into a 5xx
    (Xsolla would deliver again a notification already handled)."""
    import psycopg

    url = postgres_server().url()
    handled: list[int] = []
    release = anyio.Event()

    async def handler(notification: object) -> None:
        handled.append(getattr(notification, "order_id"))  # noqa: B009
        await release.wait()

    payload = order_paid(4)
    answers: list[int] = []
    with psycopg.connect(url, autocommit=True) as db:
        async with open_journal(url, JournalSettings(wait=2.0)) as journal:
            receiver = WebhookReceiver(SECRET, handler, store=journal)

            async def send() -> None:
                answers.append((await receiver.handle(signed(payload), payload)).status)

            on_update(
                db,
                "refuse_record",
                "orderfsm_deliveries",
                "IF NEW.outcome = 'duplicate' THEN RAISE EXCEPTION 'no'; END IF;",
            )
            try:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(send)
                    await anyio.sleep(0.2)  # the first is in its handler
                    tasks.start_soon(send)  # the duplicate waits for its answer
                    await anyio.sleep(0.2)
                    release.set()
            finally:
                db.execute("DROP TRIGGER refuse_record ON orderfsm_deliveries")
    assert answers == [204, 204]
    assert handled == [4]
