"""Deliveries arriving together share the journal's transactions (PostgreSQL, SQLite), and
nothing about exactly-once changes: each key taken once, every duplicate answered
the first answer, a key locked by a long transaction held up alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support_journal import (
    accept_answers,
    connect,
    on_answer,
    on_databases,
    on_update,
    refuse_answers,
    track_orders,
    url_for,
)
from support_postgres import postgres_server
from support_webhook import SECRET, order_paid, signed

from orderfsm.core import Status
from orderfsm.errors import JournalRefused, JournalUnavailable
from orderfsm.journal import Answer, ClaimState, JournalSettings, NewDelivery, Outcome
from transports.journal import SyncJournal, Taken, open_journal, store_for
from transports.journal.base import ClaimRequest, SettleRequest
from transports.journal.batching import Batcher, BatchOverdue, Done
from transports.journal.hop import BatchThread
from transports.journal.orders import Note
from transports.webhook import WebhookReceiver

OK = Answer(204)
BUSY = Answer(500, b"busy")

# --- the batcher alone --------------------------------------------------------------------


class _Batches:
    """Batches started and finished by the test: ``finish`` ends the oldest pending one."""

    def __init__(self, results: Callable[[list[int]], Sequence[int]] = list) -> None:
        self.results = results
        self.pending: list[tuple[list[int], Done[int]]] = []
        self.sizes: list[int] = []
        self.ran: list[int] = []

    def start(self, items: list[int], done: Done[int]) -> None:
        self.sizes.append(len(items))
        self.ran.extend(items)
        self.pending.append((items, done))

    def finish(self) -> None:
        items, done = self.pending.pop(0)
        try:
            outcome: Sequence[int] | BaseException = self.results(items)
        except Exception as exc:
            outcome = exc
        done(outcome)


def _threaded(run: Callable[[list[int]], list[int]]) -> Callable[[list[int], Done[int]], None]:
    """Batches run as the journal runs them: in a thread of their own."""
    thread = BatchThread("test-batches")

    def start(items: list[int], done: Done[int]) -> None:
        thread.send(lambda: run(items), done)

    return start


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
    """Callers arrive while batches run (each ends two checkpoints after it starts);
    some are cancelled while they wait.  Whoever is not cancelled gets the batch's
    result for its own item; no item runs twice; a batch never exceeds ``most`` nor
    do more than ``lanes`` run at once; a cancelled caller whose item had not yet
    been taken never runs."""
    batches = _Batches(lambda items: [item * 10 for item in items])
    batcher: Batcher[int, int] = Batcher(batches.start, most=most, lanes=lanes)
    got: dict[int, int] = {}
    cancelled: set[int] = set()
    most_running = 0

    async def caller(item: int, cancel: bool) -> None:
        with anyio.CancelScope() as scope:
            if cancel:
                scope.cancel()  # the first wait is cancelled: queued, then gone
            got[item] = await batcher.submit(item)
        if scope.cancelled_caught:
            cancelled.add(item)

    async def finisher() -> None:
        nonlocal most_running
        while True:
            most_running = max(most_running, len(batches.pending))
            started = len(batches.pending)
            await anyio.lowlevel.checkpoint()
            await anyio.lowlevel.checkpoint()
            for _ in range(started):
                batches.finish()

    async with anyio.create_task_group() as outer:
        outer.start_soon(finisher)
        async with anyio.create_task_group() as tasks:
            for item, (ticks, cancel) in enumerate(arrivals):
                for _ in range(ticks):
                    await anyio.lowlevel.checkpoint()
                tasks.start_soon(caller, item, cancel)
        outer.cancel_scope.cancel()

    assert len(batches.ran) == len(set(batches.ran))
    assert max(batches.sizes) <= most and most_running <= lanes
    assert all(got[item] == item * 10 for item in got)
    assert set(got) | cancelled == set(range(len(arrivals)))
    assert set(got) <= set(batches.ran)


@pytest.mark.anyio
async def test_a_failed_batch_is_every_items_error_and_the_next_batch_still_runs() -> None:
    calls: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        calls.append(items)
        time.sleep(0.01)
        if 2 in items:
            raise JournalUnavailable("down")
        return items

    batcher: Batcher[int, int] = Batcher(_threaded(run), lanes=1)
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
async def test_no_caller_waits_for_a_stuck_batch_past_its_patience() -> None:
    """A batch stuck at the database (its thread blocked in a read) must not hold its
    callers past their deadline: those queued behind it leave after ``patience``, and
    the ones in it, the one that started it included, after ``running`` (a batch
    merely slow still gives its results).  The stuck batch's result, when it comes,
    goes to nobody, and the lane is handed back then."""
    release = threading.Event()

    def run(items: list[int]) -> list[int]:
        if 1 in items:
            release.wait(10)
        elif 0 in items:
            time.sleep(0.3)  # slow, not stuck
        return items

    batcher: Batcher[int, int] = Batcher(_threaded(run), lanes=1, patience=0.2)
    outcome: dict[int, object] = {}

    async def caller(item: int) -> None:
        started = anyio.current_time()
        try:
            outcome[item] = await batcher.submit(item, running=0.4)
        except BatchOverdue:
            outcome[item] = round(anyio.current_time() - started, 1)

    await caller(0)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(caller, 1)
        await anyio.lowlevel.checkpoint()
        tasks.start_soon(caller, 2)
        tasks.start_soon(caller, 3)
    assert outcome == {0: 0, 1: 0.4, 2: 0.2, 3: 0.2}  # no fix: 1 waits for the stuck batch
    with pytest.raises(BatchOverdue):  # the lane is still the stuck batch's
        await batcher.submit(4, patience=0.05)
    release.set()
    with anyio.fail_after(2):
        assert await batcher.submit(5, patience=2) == 5  # the lane was handed back


@pytest.mark.anyio
async def test_a_caller_queued_behind_a_slow_batch_still_gives_its_own_batch_its_time() -> None:
    """Queued 0.4 s behind a slow batch (within its patience, 0.5 s), then in a batch
    that takes 0.8 s, under ``running`` (1 s) counted from that batch's start: the
    result, not an overdue (counted from the caller's arrival, its own batch had
    0.6 s; a batch given up on may still take its key, for nobody)."""
    durations = iter([0.4, 0.8])

    def run(items: list[int]) -> list[int]:
        time.sleep(next(durations))
        return items

    batcher: Batcher[int, int] = Batcher(_threaded(run), lanes=1, patience=0.5)
    outcome: dict[int, object] = {}

    async def caller(item: int) -> None:
        try:
            outcome[item] = await batcher.submit(item, running=1.0)
        except BatchOverdue as exc:
            outcome[item] = exc

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(caller, 1)
        await anyio.sleep(0.01)
        tasks.start_soon(caller, 2)
    assert outcome == {1: 1, 2: 2}


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
    tracked = orders[::2]  # the others' news stays in their deliveries (no tracker)
    async with open_journal(url) as journal:
        receiver = WebhookReceiver(SECRET, handler, store=journal)
        await anyio.to_thread.run_sync(track_orders, url, tracked, journal.store)

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
    assert sorted(statuses) == sorted([(i, "paid") for i in tracked])
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
            accept_answers(url)
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
    """asyncio's own cancellation (``asyncio.wait_for`` around ``handle``, a server
    dropping a request) ends the task that started an answers' batch while the batch
    runs in its thread.  The others in that batch must not answer 5xx for answers
    that are being written: the batch's results come to them all the same, and the
    cancelled one's answer is recorded too."""
    import asyncio

    import psycopg

    url = postgres_server().url()
    handled: list[int] = []

    claimed = anyio.Event()

    async def handler(notification: object) -> None:
        order_id = getattr(notification, "order_id")  # noqa: B009
        handled.append(order_id)
        if len(handled) == 4:
            claimed.set()
        if order_id == 10:
            # Every claim is in (claims and answers share the batches): order 10's
            # slow answer now holds the lane alone.
            await claimed.wait()
        else:
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


# --- one batch, every kind of claim and answer -------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _journals(url: str, clock: _Clock) -> tuple[SyncJournal, SyncJournal]:
    config = JournalSettings(lease=10.0, wait=0.3)
    ours = SyncJournal(store_for(url, config), config, clock=clock)
    theirs = SyncJournal(store_for(url, config), config, clock=clock)
    ours.open()
    theirs.open()
    return ours, theirs


def _delivery(order_id: int | None, clock: _Clock) -> NewDelivery:
    key = None if order_id is None else f"order_paid:{order_id}"
    body = order_paid(order_id or 99)
    return NewDelivery("order_paid", key, order_id, body, (), "test", clock.now)


@on_databases
def test_a_batch_of_claims_gives_each_delivery_what_it_alone_would_get(
    backend: str, tmp_path: Path
) -> None:
    """One batch holds a fresh key, the same key again, a duplicate of a refused (400)
    delivery, a key another instance runs within its lease, one whose lease ran out,
    one whose handler failed (released), and a delivery without a key: each gets its
    own outcome, as it would alone, and the statuses of the orders the fleet tracks
    (all but order 4) are written with them."""
    url = url_for(backend, tmp_path)
    clock = _Clock()
    ours, theirs = _journals(url, clock)
    refused = Answer(400, b'{"code":"INVALID_USER"}', "application/json")
    try:
        ours.open()
        track_orders(url, [1, 2, 3, 5], ours.store)
        expired = theirs.begin(_delivery(3, clock), BUSY)
        clock.now += 11  # order 3's lease runs out
        running = theirs.begin(_delivery(2, clock), BUSY)
        answered = theirs.begin(_delivery(1, clock), BUSY)
        released = theirs.begin(_delivery(4, clock), BUSY)
        assert all(isinstance(t, Taken) for t in (expired, running, answered, released))
        assert isinstance(answered, Taken) and isinstance(released, Taken)
        assert theirs.settle(answered, refused, "refused", BUSY) == refused
        assert theirs.settle(released, Answer(500), "boom", BUSY) == Answer(500)

        orders = [5, 5, 1, 2, 3, 4, None]
        requests = [
            ClaimRequest(
                _delivery(o, clock), () if o is None else (Note(o, Status.PAID, "t", clock.now),)
            )
            for o in orders
        ]
        got = ours.claim_many(requests)
        assert all(c is not None for c in got)
        fresh, again, duplicate, busy, over, retried, keyless = got
        assert fresh is not None and fresh.attempt == 1
        assert again is not None and again.attempt is None and again.claim is not None
        assert again.claim.state is ClaimState.RUNNING and again.claim.owner == ours.owner
        assert duplicate is not None and duplicate.attempt is None
        assert duplicate.claim is not None and duplicate.claim.answer == refused
        assert busy is not None and busy.attempt is None and busy.claim is not None
        assert busy.claim.state is ClaimState.RUNNING and busy.claim.owner == theirs.owner
        assert over is not None and over.attempt == 2
        assert retried is not None and retried.attempt == 2
        assert keyless is not None and keyless.attempt == 0
        ids = [c.delivery_id for c in got if c is not None]
        assert len(set(ids)) == len(ids)  # every delivery recorded once

        records = {d.id: d for d in ours.deliveries()}
        assert records[duplicate.delivery_id].outcome is Outcome.DUPLICATE
        assert records[duplicate.delivery_id].status == 400
        assert records[over.delivery_id].attempt == 2
        assert records[fresh.delivery_id].outcome is None  # its handler has yet to run
        db = connect(url)
        try:
            statuses = db.execute("SELECT order_id, status, version FROM orderfsm_orders")
            assert sorted(statuses.fetchall()) == [(i, "paid", 1) for i in (1, 2, 3, 5)]
        finally:
            db.close()
    finally:
        ours.close()
        theirs.close()


@on_databases
def test_a_batch_of_answers_records_each_its_own_way_and_a_refused_one_goes_alone(
    backend: str, tmp_path: Path
) -> None:
    """One batch of answers: a 2xx, a 4xx refusal (stored, repeated), a 5xx (the key
    released), one from an owner whose lease ran out and was taken over (fenced: the
    newer attempt keeps the key), and one without a key.  Then a batch holding an
    answer the database refuses: nothing of that batch is half-written, and each
    answer alone is recorded but the refused one."""
    url = url_for(backend, tmp_path)
    clock = _Clock()
    ours, theirs = _journals(url, clock)
    refused = Answer(400, b"no", "text/plain")
    try:
        stale = ours.begin(_delivery(4, clock), BUSY)
        clock.now += 11
        newer = theirs.begin(_delivery(4, clock), BUSY)
        taken = [ours.begin(_delivery(o, clock), BUSY) for o in (1, 2, 3, None)]
        assert all(isinstance(t, Taken) for t in (stale, newer, *taken))
        ok, refusal, failure, keyless = (t for t in taken if isinstance(t, Taken))
        assert isinstance(stale, Taken) and isinstance(newer, Taken) and newer.attempt == 2

        def request(t: Taken, answer: Answer) -> SettleRequest:
            return SettleRequest(t.key, t.attempt, answer, t.delivery_id, None)

        got = ours.settle_many(
            [
                request(ok, OK),
                request(refusal, refused),
                request(failure, Answer(503)),
                request(stale, OK),
                request(keyless, OK),
            ]
        )
        assert got == [True, True, True, False, True]
        claims = ours.claims([f"order_paid:{i}" for i in (1, 2, 3, 4)])
        assert claims["order_paid:1"].answer == OK
        assert claims["order_paid:2"].answer == refused
        assert claims["order_paid:3"].state is ClaimState.RELEASED
        assert claims["order_paid:4"].state is ClaimState.RUNNING
        assert claims["order_paid:4"].attempt == 2 and claims["order_paid:4"].answer is None
        outcomes = {d.id: d.outcome for d in ours.deliveries()}
        assert outcomes[ok.delivery_id] is Outcome.HANDLED
        assert outcomes[refusal.delivery_id] is Outcome.REFUSED
        assert outcomes[failure.delivery_id] is Outcome.FAILED
        assert outcomes[stale.delivery_id] is Outcome.FENCED
        assert outcomes[keyless.delivery_id] is Outcome.HANDLED

        more = [ours.begin(_delivery(o, clock), BUSY) for o in (6, 7, 8)]
        first, blocked, last = (t for t in more if isinstance(t, Taken))
        refuse_answers(url, "order_paid:7")
        try:
            requests = [request(t, OK) for t in (first, blocked, last)]
            assert ours.settle_many(requests) == [None, None, None]
            assert ours.claims(["order_paid:6"])["order_paid:6"].answer is None  # rolled back
            assert ours.settle(first, OK, None, BUSY) == OK
            with pytest.raises(JournalRefused):
                ours.settle(blocked, OK, None, BUSY)
            assert ours.settle(last, OK, None, BUSY) == OK
        finally:
            accept_answers(url)
        claims = ours.claims(["order_paid:6", "order_paid:7", "order_paid:8"])
        assert claims["order_paid:6"].answer == OK and claims["order_paid:8"].answer == OK
        assert claims["order_paid:7"].state is ClaimState.RUNNING
    finally:
        ours.close()
        theirs.close()
