"""Several receivers on one journal, as several instances behind a load balancer would be.

Every test runs on SQLite and PostgreSQL (real servers: ``support_postgres``)
and, where it applies, in memory, on asyncio and trio.  Two ``Journal``
objects on one URL are two instances: separate connections, no shared
memory; only the database joins them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from support_journal import (
    DatabaseHold,
    accept_answers,
    create_grants,
    grants,
    mark,
    on_databases,
    on_every_backend,
    refuse_answers,
    url_for,
)
from support_webhook import SECRET, Recorder, order_paid, signed

from orderfsm.journal import JournalSettings, Outcome
from transports.journal import Journal, open_journal
from transports.webhook import InvalidUser, Notification, OrderPaid, WebhookAnswer, WebhookReceiver

pytestmark = pytest.mark.anyio

FAST = JournalSettings(lease=5.0, wait=1.0)


@asynccontextmanager
async def instances(
    url: str, count: int = 2, settings: JournalSettings = FAST
) -> AsyncIterator[list[Journal]]:
    """``count`` journals on ``url`` (one shared journal when it is in memory)."""
    if url == "memory:":
        async with open_journal(url, settings) as journal:
            yield [journal] * count
        return
    journals = [open_journal(url, settings) for _ in range(count)]
    try:
        for journal in journals:
            await journal.open()
        yield journals
    finally:
        for journal in journals:
            await journal.aclose()


async def deliver(receiver: WebhookReceiver, body: bytes) -> WebhookAnswer:
    return await receiver.handle(signed(body), body, "185.30.20.1")


@on_every_backend
async def test_each_notification_runs_its_handler_once_however_many_deliveries_race(
    backend: str, tmp_path: Path
) -> None:
    any_url = url_for(backend, tmp_path)
    handler = Recorder(delay=0.02)
    async with instances(any_url, 3) as journals:
        receivers = [WebhookReceiver(SECRET, handler, store=j) for j in journals]
        answers: list[int] = []

        async def one(receiver: WebhookReceiver, body: bytes) -> None:
            answers.append((await deliver(receiver, body)).status)

        async with anyio.create_task_group() as tg:
            for order_id in range(1, 11):
                for copy in range(4):
                    tg.start_soon(one, receivers[copy % 3], order_paid(order_id))
        records = await journals[0].deliveries()
    assert answers == [204] * 40
    handled = sorted(n.order_id for n in handler.handled if isinstance(n, OrderPaid))
    assert handled == list(range(1, 11))
    outcomes = [r.outcome for r in records]
    assert outcomes.count(Outcome.HANDLED) == 10 and outcomes.count(Outcome.DUPLICATE) == 30


@on_every_backend
async def test_a_duplicate_gets_exactly_the_first_answer_on_any_instance(
    backend: str, tmp_path: Path
) -> None:
    any_url = url_for(backend, tmp_path)
    calls = 0

    async def refuse(notification: Notification) -> None:
        nonlocal calls
        calls += 1
        raise InvalidUser("no such player")

    async with instances(any_url) as (one, two):
        first = await deliver(WebhookReceiver(SECRET, refuse, store=one), order_paid(7))
        again = await deliver(WebhookReceiver(SECRET, refuse, store=two), order_paid(7))
    assert first.status == 400 and json.loads(first.body)["error"]["code"] == "INVALID_USER"
    assert again == first and calls == 1


@on_every_backend
async def test_a_concurrent_duplicate_waits_for_the_answer_and_never_runs_beside_it(
    backend: str, tmp_path: Path
) -> None:
    any_url = url_for(backend, tmp_path)
    running = 0
    overlap = False
    handler = Recorder()

    async def slow(notification: Notification) -> None:
        nonlocal running, overlap
        running += 1
        overlap |= running > 1
        await anyio.sleep(0.3)
        running -= 1
        await handler(notification)

    async with instances(any_url) as (one, two):
        a = WebhookReceiver(SECRET, slow, store=one)
        b = WebhookReceiver(SECRET, slow, store=two)
        answers: list[WebhookAnswer] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _append(answers, deliver(a, order_paid(8))))
            await anyio.sleep(0.05)
            tg.start_soon(lambda: _append(answers, deliver(b, order_paid(8))))
    assert [x.status for x in answers] == [204, 204]
    assert len(handler.handled) == 1 and not overlap


async def _append(answers: list[WebhookAnswer], answer: object) -> None:
    answers.append(await answer)  # type: ignore[misc]


@on_every_backend
async def test_a_duplicate_answers_5xx_rather_than_wait_past_its_deadline(
    backend: str, tmp_path: Path
) -> None:
    any_url = url_for(backend, tmp_path)
    handler = Recorder(delay=1.0)
    settings = JournalSettings(lease=5.0, wait=0.2)
    async with instances(any_url, settings=settings) as (one, two):
        a = WebhookReceiver(SECRET, handler, store=one)
        b = WebhookReceiver(SECRET, handler, store=two)
        answers: dict[str, WebhookAnswer] = {}
        async with anyio.create_task_group() as tg:

            async def owner() -> None:
                answers["owner"] = await deliver(a, order_paid(9))

            tg.start_soon(owner)
            await anyio.sleep(0.1)
            start = anyio.current_time()
            answers["duplicate"] = await deliver(b, order_paid(9))
            waited = anyio.current_time() - start
        later = await deliver(b, order_paid(9))
    assert answers["duplicate"].status == 500 and waited < 0.9
    assert answers["owner"].status == 204 and later.status == 204
    assert handler.calls == 1


SLOW = JournalSettings(lease=1.0, wait=0.3)


class FirstRunHeld:
    """A handler whose first run lasts until the test lets it go (a slow grant API,
    longer than the lease); any other run returns at once."""

    def __init__(self) -> None:
        self.started, self.release = anyio.Event(), anyio.Event()
        self.calls = 0

    async def __call__(self, notification: Notification) -> None:
        self.calls += 1
        if self.calls == 1:
            self.started.set()
            await self.release.wait()


@asynccontextmanager
async def slow_owner(
    url: str, order_id: int, answers: dict[str, WebhookAnswer], settings: JournalSettings = SLOW
) -> AsyncIterator[tuple[FirstRunHeld, WebhookReceiver, Journal]]:
    """Instance one's handler at work on ``order_id`` (answered into ``answers["owner"]``
    once the block ends); yields the handler, instance two's receiver and its journal.
    After the block, a last delivery to instance two: ``answers["later"]``."""
    handler = FirstRunHeld()
    async with instances(url, settings=settings) as (one, two):
        a = WebhookReceiver(SECRET, handler, store=one)
        b = WebhookReceiver(SECRET, handler, store=two)
        async with anyio.create_task_group() as tg:

            async def owner() -> None:
                answers["owner"] = await deliver(a, order_paid(order_id))

            tg.start_soon(owner)
            try:
                with anyio.fail_after(10):
                    await handler.started.wait()
                yield handler, b, two
            finally:
                handler.release.set()
        answers["later"] = await deliver(b, order_paid(order_id))


@on_every_backend
async def test_a_handler_slower_than_the_lease_runs_once_while_its_claim_is_renewed(
    backend: str, tmp_path: Path
) -> None:
    """Issue 14: a plain handler still at work two leases after its claim; a duplicate
    sent to the other instance meanwhile answers 5xx (its lease is renewed, not run
    out) and never runs the handler; the stored answer is the first's."""
    answers: dict[str, WebhookAnswer] = {}
    async with slow_owner(url_for(backend, tmp_path), 14, answers) as (handler, b, two):
        claim = (await two.claims(["order_paid:14"]))["order_paid:14"]
        # The condition is the clock itself: the first lease long over.
        await anyio.sleep(claim.claimed_at + 2.5 * SLOW.lease - time.time())
        answers["duplicate"] = await deliver(b, order_paid(14))
        held = (await two.claims(["order_paid:14"]))["order_paid:14"]
    assert answers["duplicate"].status == 500 and handler.calls == 1
    assert held.attempt == 1 and held.lease_until > claim.lease_until  # renewed, not taken
    assert answers["owner"].status == 204 and answers["later"] == answers["owner"]


@on_databases
async def test_a_renewal_that_fails_longer_than_the_lease_still_keeps_the_claim(
    backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The database held (SQLite locked, the claim's row locked on PostgreSQL) for two
    leases while the handler runs: no renewal gets through, and no duplicate either.
    Once it is free the owner's renewal lands before anyone takes the key over (its
    lease ran out meanwhile, but nobody could take it), so the duplicate after it
    still answers 5xx and the handler runs once.  The outage is logged once, not at
    each retry, and its end once."""
    caplog.set_level(logging.WARNING, logger="orderfsm.journal")
    any_url = url_for(backend, tmp_path)
    answers: dict[str, WebhookAnswer] = {}
    async with slow_owner(any_url, 15, answers) as (handler, b, two):
        hold = DatabaseHold(any_url, "order_paid:15")
        try:
            await hold.blocking_someone()
            await anyio.sleep(2 * SLOW.lease)  # the outage: longer than the lease
            answers["during"] = await deliver(b, order_paid(15))
        finally:
            hold.release()
        freed = time.time()
        with anyio.fail_after(10):
            while True:  # the owner's renewal, retried, gets through
                claim = (await two.claims(["order_paid:15"]))["order_paid:15"]
                if claim.lease_until > freed + 0.5 * SLOW.lease:
                    break
                await anyio.sleep(0.02)
        answers["after"] = await deliver(b, order_paid(15))
    assert answers["during"].status == 500 and answers["after"].status == 500
    assert claim.attempt == 1 and handler.calls == 1
    assert answers["owner"].status == 204 and answers["later"] == answers["owner"]
    said = [r.getMessage() for r in caplog.records if r.name == "orderfsm.journal"]
    assert sum("are not renewed yet" in m for m in said) == 1, said
    assert said.count("running claims are renewed again") == 1, said


SLOW_ANSWER = JournalSettings(lease=5.0, wait=0.3)
"""A lease long enough that an answer failing from the handler's return on is still
retried (its tries a second apart at most, for a lease) well after the lease the
handler's run alone renewed has run out."""


@on_databases
async def test_a_duplicate_while_the_answer_is_not_yet_recorded_does_not_run_the_handler(
    backend: str, tmp_path: Path
) -> None:
    """Issue 14: the handler returns before its claim's first renewal is due, and the
    database fails its answer's write (passing trouble, so it is tried again) until
    past the lease.  The claim stays renewed until the answer is recorded, not only
    while the handler runs: a duplicate sent to the other instance once the claim's
    first lease is over answers 5xx and never runs the handler; the answer, recorded
    once the database lets it, is the one given."""
    any_url = url_for(backend, tmp_path)
    key, lease = "order_paid:16", SLOW_ANSWER.lease
    answers: dict[str, WebhookAnswer] = {}
    async with slow_owner(any_url, 16, answers, SLOW_ANSWER) as (handler, b, two):
        claim = (await two.claims([key]))[key]
        refuse_answers(any_url, key, passing=True)
        try:
            await anyio.sleep(claim.claimed_at + 0.3 * lease - time.time())
            handler.release.set()  # before a third of the lease: never renewed while it ran
            await anyio.sleep(claim.lease_until + 0.1 - time.time())
            answers["duplicate"] = await deliver(b, order_paid(16))
        finally:
            accept_answers(any_url)  # the answer's next try records it
    assert answers["duplicate"].status == 500 and handler.calls == 1
    assert answers["owner"].status == 204 and answers["later"] == answers["owner"]


@on_every_backend
async def test_a_failure_releases_the_key_and_its_record_keeps_the_error(
    backend: str, tmp_path: Path
) -> None:
    any_url = url_for(backend, tmp_path)
    handler = Recorder(fail_times=1)
    async with instances(any_url) as (one, two):
        failed = await deliver(WebhookReceiver(SECRET, handler, store=one), order_paid(10))
        retried = await deliver(WebhookReceiver(SECRET, handler, store=two), order_paid(10))
        records = await one.deliveries()
    assert failed.status == 500 and retried.status == 204 and len(handler.handled) == 1
    latest, first = records[0], records[1]
    assert (first.outcome, first.attempt, first.status) == (Outcome.FAILED, 1, 500)
    assert first.error is not None and "database is down" in first.error
    assert (latest.outcome, latest.attempt, latest.status) == (Outcome.HANDLED, 2, 204)
    assert latest.body == order_paid(10) and latest.peer == "185.30.20.1"
    assert dict(latest.headers)["Authorization"].startswith("Signature ")


@on_every_backend
async def test_user_validation_runs_every_time_and_is_kept(backend: str, tmp_path: Path) -> None:
    any_url = url_for(backend, tmp_path)
    handler = Recorder()
    body = b'{"notification_type": "user_validation", "user": {"id": "u1"}}'
    async with instances(any_url) as (one, two):
        for journal in (one, two):
            receiver = WebhookReceiver(SECRET, handler, store=journal)
            assert (await receiver.handle(signed(body), body)).status == 204
        records = await one.deliveries()
    assert handler.calls == 2
    assert [(r.kind, r.key, r.outcome) for r in records] == [
        ("user_validation", None, Outcome.HANDLED)
    ] * 2


# --- the transactional handler: the grant and the answer commit together ------------


def granting(url: str, refuse: set[int] | None = None, fail: set[int] | None = None):  # type: ignore[no-untyped-def]
    insert = f"INSERT INTO grants (order_id, sku) VALUES ({mark(url)}, {mark(url)})"

    def grant(notification: Notification, connection: object) -> None:
        assert isinstance(notification, OrderPaid)
        connection.execute(insert, (notification.order_id, notification.items[0].sku))  # type: ignore[attr-defined]
        if refuse and notification.order_id in refuse:
            raise InvalidUser("refused after writing")
        if fail and notification.order_id in fail:
            fail.discard(notification.order_id)
            raise RuntimeError("the grant service is down")

    return grant


@on_databases
async def test_the_transactional_handler_grants_once_with_the_answer(
    backend: str, tmp_path: Path
) -> None:
    db_url = url_for(backend, tmp_path)
    create_grants(db_url)
    fail = {12}
    async with instances(db_url, 3) as journals:
        receivers = [
            WebhookReceiver(SECRET, transactional=granting(db_url, {11}, fail), store=j)
            for j in journals
        ]
        answers: dict[int, list[int]] = {10: [], 11: [], 12: []}

        async def one(receiver: WebhookReceiver, order_id: int) -> None:
            answers[order_id].append((await deliver(receiver, order_paid(order_id))).status)

        async with anyio.create_task_group() as tg:
            for order_id in answers:
                for copy in range(3):
                    tg.start_soon(one, receivers[copy], order_id)
        retry = await deliver(receivers[0], order_paid(12))
        records = await journals[0].deliveries()
    assert answers[10] == [204] * 3
    assert answers[11] == [400] * 3  # the refusal is stored; its writes rolled back
    assert 500 in answers[12] and retry.status == 204  # failed, then granted on retry
    assert sorted(grants(db_url)) == [10, 12]
    failed = [r for r in records if r.outcome is Outcome.FAILED]
    assert len(failed) == 1 and "grant service is down" in (failed[0].error or "")


async def test_a_transactional_handler_needs_a_database() -> None:
    with pytest.raises(ValueError, match="needs a database"):
        WebhookReceiver(SECRET, transactional=lambda n, c: None)


# --- replay ------------------------------------------------------------------------


@on_every_backend
async def test_replay_reruns_a_failure_and_says_what_it_skipped(
    backend: str, tmp_path: Path
) -> None:
    any_url = url_for(backend, tmp_path)
    from transports.webhook.replay import replay

    handler = Recorder(fail_times=1)
    async with instances(any_url, 1) as (journal,):
        receiver = WebhookReceiver(SECRET, handler, store=journal)
        assert (await deliver(receiver, order_paid(20))).status == 500
        (failed,) = await journal.deliveries()
        first = await replay(receiver, failed)
        second = await replay(receiver, failed)
        forced = await replay(receiver, failed, force=True)
        records = await journal.deliveries()
    assert first.ran and first.answer == WebhookAnswer(204) and "failed" in first.reason
    assert not second.ran and "already handled" in second.describe() and "--force" in second.reason
    assert forced.ran and forced.answer == WebhookAnswer(204)
    assert handler.calls == 3 and len(handler.handled) == 2
    assert [(r.replay, r.outcome, r.attempt) for r in records] == [
        (True, Outcome.HANDLED, 3),
        (True, Outcome.HANDLED, 2),
        (False, Outcome.FAILED, 1),
    ]


@on_databases
async def test_a_replay_the_journal_could_not_start_is_a_failure_not_a_skip(
    backend: str, tmp_path: Path
) -> None:
    """The journal failing as a replay claims its key (the database held here) runs
    nothing: that is a failure to run again (the command exits 1), not "another
    delivery answered it", which let a script move on with nothing granted."""
    url = url_for(backend, tmp_path)
    from transports.webhook.replay import replay

    handler = Recorder(fail_times=1)
    async with instances(url, 1) as (journal,):
        receiver = WebhookReceiver(SECRET, handler, store=journal)
        assert (await deliver(receiver, order_paid(22))).status == 500
        (failed,) = await journal.deliveries()
        hold = DatabaseHold(url, "order_paid:22")
        try:
            report = await replay(receiver, failed)
        finally:
            hold.release()
    assert not report.ran and report.failed, report
    assert "not run: " in report.describe() and "run it again" in report.describe()
    assert handler.calls == 1


@on_every_backend
async def test_replay_verifies_the_stored_body_again(backend: str, tmp_path: Path) -> None:
    any_url = url_for(backend, tmp_path)
    from transports.webhook.replay import replay

    async with instances(any_url, 1) as (journal,):
        receiver = WebhookReceiver(SECRET, Recorder(fail_times=1), store=journal)
        await deliver(receiver, order_paid(21))
        (stored,) = await journal.deliveries()
        other = WebhookReceiver("another-secret", Recorder(), store=journal)
        report = await replay(other, stored)
    assert not report.ran and "signature" in report.reason
