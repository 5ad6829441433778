"""The durable ``on_settled`` handler's promise, provoked where it broke (review of issue 15).

Once per order and event across the fleet, in order (the delivery's call
before the refund's), until it returns; also for calls whose claims were
pruned, for an app restarted days later, behind orders whose handler keeps
failing, and with a handler slower than the claim's lease.  Every test runs on
SQLite and PostgreSQL and on both event loops; trackers are in-process
instances on their own journal connections (as ``tests/test_fleet.py``), the
journal's tables read and set with plain SQL where a dead instance is staged.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from support_journal import (
    begin_writing,
    connect,
    dialect_of,
    history,
    mark,
    on_databases,
    url_for,
)
from support_webhook import SECRET, order_paid, signed

from orderfsm import Observation, Status
from orderfsm.interface import ObservationSink
from orderfsm.journal import SCHEMA_VERSION, Answer, ClaimState, JournalSettings, NewDelivery
from orderfsm.journal.orders import settled_key, settled_name
from orderfsm.supervisor.custom import OrderContext
from orderfsm.supervisor.fleet import FleetLink, Settled
from orderfsm.supervisor.tracker import Tracker
from orderfsm.testing import eventually
from transports.journal import Journal, open_journal
from transports.journal import orders as orders_sql
from transports.journal.order_log import OrderLog
from transports.journal.orders import Note
from transports.journal.settled_log import SettledLog
from transports.journal.sql_schema import migrations
from transports.webhook import SyncWebhookReceiver

pytestmark = pytest.mark.anyio

P, D, N, E, C = Status.PAID, Status.DONE, Status.NEW, Status.EXPIRED, Status.CANCELED


def journal_only(journal: str | Journal, calls: list[Settled], **kw: Any) -> Tracker:
    """An instance with ``on_settled`` that follows the journal alone (no Xsolla)."""

    async def on_settled(event: Settled) -> None:
        calls.append(event)

    options: dict[str, Any] = {
        "until": "paid", "on_settled": on_settled, "lease": 0.5, "transports": ("journal",)
    }  # fmt: skip
    options.update(kw)
    return Tracker(project_id=1, journal=journal, fetch_details=False, **options)


def xsolla_says(
    status: Status, heard: anyio.Event, before: Callable[[], None] = lambda: None
) -> dict[str, Any]:
    """Options of an instance that hears ``status`` from Xsolla once ``heard`` is set, right
    after ``before()`` (in the same step of the loop: nothing of the instance runs in
    between)."""

    async def xsolla(order: OrderContext, sink: ObservationSink) -> None:
        await heard.wait()
        before()
        sink.observe(Observation(order.order_id, status, "events", anyio.current_time()))
        await anyio.sleep_forever()

    return {"transports": ("webhook",), "extra": [xsolla]}


def fleet(t: Tracker) -> FleetLink:
    assert t.fleet is not None
    return t.fleet


async def sweeps_after(t: Tracker, count: int = 2) -> None:
    """Until the tracker's sweep has judged the journal ``count`` more times."""
    start = fleet(t).sweeps
    await eventually(lambda: fleet(t).sweeps >= start + count, timeout=30)


async def record(url: str, *notes: tuple[int, Status]) -> None:
    """What a webhook receiver writes: the orders' statuses."""
    async with open_journal(url) as receivers:
        await OrderLog(receivers).record([Note(o, s, "webhook", time.time()) for o, s in notes])


def claim_row(url: str, key: str, state: str, lease_until: float, attempt: int = 1) -> None:
    """A claim as an instance left it (``running``: it died mid-call)."""
    m = mark(url)
    db = connect(url)
    try:
        db.execute(
            "INSERT INTO orderfsm_claims (key, attempt, state, owner, lease_until, claimed_at)"
            f" VALUES ({m}, {m}, {m}, 'gone', {m}, {m})",
            (key, attempt, state, lease_until, time.time() - 1),
        )
    finally:
        db.close()


def claim_exists(url: str, key: str) -> bool:
    db = connect(url)
    try:
        return bool(db.execute(f"SELECT 1 FROM orderfsm_claims WHERE key = '{key}'").fetchall())
    finally:
        db.close()


async def answered(journal: Journal, key: str) -> bool:
    """The call's claim is answered: recorded."""
    claim = (await journal.claims([key])).get(key)
    return claim is not None and claim.state is ClaimState.ANSWERED


def told(url: str, order_id: int) -> tuple[int, int]:
    """(settled_told, version) of the order's row."""
    db = connect(url)
    try:
        row = db.execute(
            f"SELECT settled_told, version FROM orderfsm_orders WHERE order_id = {order_id}"
        ).fetchone()
        return int(row[0]), int(row[1])
    finally:
        db.close()


def tracked(url: str, order_id: int, until: Status = P) -> bool:
    """The order's row is written by the instance that tracks it (with its goal): news
    recorded before would create it with the default goal, ``done``."""
    db = connect(url)
    try:
        return bool(
            db.execute(
                f"SELECT 1 FROM orderfsm_orders WHERE order_id = {order_id}"
                f" AND until = '{until.value}'"
            ).fetchall()
        )
    finally:
        db.close()


def calls_of(events: list[Settled]) -> list[tuple[int, str, bool, bool]]:
    return [(e.order_id, e.status.value, e.succeeded, e.later) for e in events]


@on_databases
async def test_a_refund_waits_for_the_delivery_call_a_dead_instance_left_unanswered(
    backend: str, tmp_path: Path
) -> None:
    """A claimed the delivery's call and died mid-call; B follows the order and hears
    the refund at once.  B must not tell the app "refunded" before "paid": it makes the
    delivery's call once A's claim runs out, then the refund's."""
    url = url_for(backend, tmp_path)
    calls: list[Settled] = []
    # B waits for a running claim 0.5 s (its journal's wait), less than A's claim lasts:
    # B finds it busy, not run out, so B's first tries must come back "not yet".
    async with (
        open_journal(url, JournalSettings(lease=2.0), owner="instance-a") as dead_a,
        open_journal(url, JournalSettings(wait=0.5)) as journal,
        journal_only(journal, calls) as b,
    ):
        b.track(7)
        body = json.dumps({"order_id": 7}).encode()
        new = NewDelivery("settled", settled_key(7, P), 7, body, (), None, time.time())
        await dead_a.begin(new, Answer(503))  # A's claim; A never answers
        await record(url, (7, P))
        await eventually(lambda: b.status(7) is P)
        await record(url, (7, C))
        await eventually(lambda: len(calls) >= 2, timeout=30)
        assert calls_of(calls) == [(7, "paid", True, False), (7, "canceled", False, True)]
        await sweeps_after(b)  # and nothing more
    assert len(calls) == 2
    assert told(url, 7) == (2, 2)


@on_databases
async def test_the_sweep_makes_a_delivery_call_lost_behind_its_answered_refund(
    backend: str, tmp_path: Path
) -> None:
    """Order 1: the delivery's call was claimed by an instance that died mid-call, the
    refund's was made.  The sweep finds the order by that earlier call, not by its
    current status's (answered); order 2 owes both calls, made in order."""
    url = url_for(backend, tmp_path)
    async with open_journal(url) as journal:
        await OrderLog(journal).track_many([(1, P, None), (2, P, None)])
    await record(url, (1, P), (2, P))
    await record(url, (1, C), (2, C))
    claim_row(url, "settled:1:paid", "running", time.time() - 1)
    claim_row(url, "settled:1:canceled", "answered", time.time() - 1)
    calls: list[Settled] = []
    async with journal_only(url, calls) as t:
        await eventually(lambda: len(calls) >= 3, timeout=30)  # with no fix: never
        await sweeps_after(t)
    assert sorted(calls_of(calls)) == [
        (1, "paid", True, False), (2, "canceled", False, True), (2, "paid", True, False)
    ]  # fmt: skip
    assert [e.status for e in calls if e.order_id == 2] == [P, C]
    assert told(url, 1) == told(url, 2) == (2, 2)


@on_databases
async def test_a_handler_slower_than_the_claim_lease_is_called_once(
    backend: str, tmp_path: Path
) -> None:
    """Two instances; the handler takes three claim leases.  Its claim is renewed while
    it runs, so the other instance (its retry, its sweep) does not start it again."""
    url = url_for(backend, tmp_path)
    settings = JournalSettings(lease=1.0)
    started: list[str] = []

    def slow(name: str) -> Any:
        async def grant(event: Settled) -> None:
            started.append(name)
            await anyio.sleep(3 * settings.lease)  # a slow grant API, not a wait for a test

        return grant

    async with (
        open_journal(url, settings) as ja,
        open_journal(url, settings) as jb,
        journal_only(ja, [], on_settled=slow("a")) as a,
        journal_only(jb, [], on_settled=slow("b")) as b,
    ):
        a.track(5)
        b.track(5)
        await record(url, (5, P))
        await eventually(lambda: answered(ja, settled_key(5, P)), timeout=30)
        await sweeps_after(a)
        await sweeps_after(b)
    assert len(started) == 1


@on_databases
async def test_paid_and_done_settle_a_paid_goal_once_whichever_is_heard_first(
    backend: str, tmp_path: Path
) -> None:
    """Goal ``paid``: a webhook receiver records the payment in the journal, and A hears
    ``done`` from Xsolla before it reads that payment (applied after it, then dropped
    as stale).  The journal holds ``paid`` then ``done``; A called the app for ``done``.
    Paid and done settle the order alike for this goal: one settlement, one call,
    not one by A and another for the payment (by B, following the journal, or by a
    sweep), nor by an instance tracking the order again; a refund later is one more.
    (With a call named by the status heard, the payment's was made a second time.)"""
    url = url_for(backend, tmp_path)
    order_id = 12
    calls: list[Settled] = []
    heard = anyio.Event()

    def webhook() -> None:
        # Blocking, on the loop: the payment is committed and nothing of A's runs
        # (its reads of the journal included) until A has applied ``done``.
        body = order_paid(order_id)
        assert receiver.handle(signed(body), body).status == 204

    with SyncWebhookReceiver(SECRET, store=url) as receiver:
        async with (
            journal_only(url, calls, **xsolla_says(D, heard, webhook)) as a,
            journal_only(url, calls) as b,
        ):
            a.track(order_id)
            b.track(order_id)
            await eventually(lambda: tracked(url, order_id), timeout=30)
            heard.set()
            await eventually(lambda: a.status(order_id) is D and b.status(order_id) in (P, D))
            await eventually(lambda: calls, timeout=30)
            await sweeps_after(a)
            await sweeps_after(b)
            assert history(url, order_id) == ["paid", "done"]
        async with journal_only(url, calls) as again:  # tracked again: a restart
            again.track(order_id)
            await eventually(lambda: again.status(order_id) is D, timeout=30)
            await sweeps_after(again)
            await record(url, (order_id, C))  # a refund, later
            await eventually(lambda: len(calls) >= 2, timeout=30)
            await sweeps_after(again)
    assert [(e.status in (P, D), e.succeeded, e.later) for e in calls] == [
        (True, True, False), (False, False, True)
    ]  # fmt: skip
    assert told(url, order_id) == (3, 3)  # nothing left owed


@on_databases
async def test_done_heard_first_for_the_goal_paid_leaves_the_goal_done_its_own_call(
    backend: str, tmp_path: Path
) -> None:
    """A fleet mixing goals: A grants on payment and hears ``done`` straight away; B
    grants on delivery, following the journal.  Each goal's settlement is a call of its
    own: A's for ``paid`` and B's for ``done``.  (Named by the status heard, A's call
    took the name of B's, and whichever came second was never made: a grant lost.)"""
    url = url_for(backend, tmp_path)
    calls: list[Settled] = []
    heard = anyio.Event()
    async with (
        journal_only(url, calls, **xsolla_says(D, heard)) as a,
        journal_only(url, calls, until="done") as b,
    ):
        a.track(12)
        b.track(12)
        await eventually(lambda: tracked(url, 12, D), timeout=30)
        heard.set()
        await eventually(lambda: len(calls) >= 2, timeout=30)  # no fix: one
        await sweeps_after(a)
        await sweeps_after(b)
    assert sorted((e.until.value, e.status, e.succeeded, e.later) for e in calls) == [
        ("done", D, True, False), ("paid", D, True, False)
    ]  # fmt: skip


@on_databases
@pytest.mark.parametrize("refunded", ["after", "before"])
async def test_an_order_settled_for_paid_then_tracked_until_done_gets_the_done_call(
    backend: str, tmp_path: Path, refunded: str
) -> None:
    """A fleet mixing goals: A grants on payment and hears paid, then done, from the
    journal; A's call made, its order's mark passes the delivery (no call for ``paid``).
    Then B tracks the order until ``done``: the delivery's call is owed to B's goal, and
    made once, by B (a live call heard from the journal) or a sweep; A's calls are not
    made again, nor is the refund's, one call for both goals.  Refunded before B tracks,
    B's grant would come after the order's refund, never revoked: none is made.
    (With the mark judged for ``paid`` read for ``done``, B's grant was never made.)"""
    url = url_for(backend, tmp_path)
    calls: list[Settled] = []
    async with journal_only(url, calls) as a:
        a.track(12)
        await eventually(lambda: tracked(url, 12), timeout=30)
        await record(url, (12, P), (12, D), *([(12, C)] if refunded == "before" else []))
        await eventually(lambda: len(calls) >= (2 if refunded == "before" else 1), timeout=30)
        await sweeps_after(a)
        async with journal_only(url, calls, until="done") as b:
            b.track(12)
            await eventually(lambda: b.status(12) is (C if refunded == "before" else D))
            if refunded == "after":
                await eventually(lambda: len(calls) >= 2, timeout=30)  # no fix: never
                await record(url, (12, C))
                await eventually(lambda: len(calls) >= 3, timeout=30)
            await sweeps_after(a)
            await sweeps_after(b)
    # The refund's call: from whichever instance claims it first, for its goal.
    made = [(e.succeeded and e.until.value, e.status.value, e.later) for e in calls]
    paid, done, refund = ("paid", "paid", False), ("done", "done", False), (False, "canceled", True)
    assert made == ([paid, done, refund] if refunded == "after" else [paid, refund])
    assert told(url, 12) == (3, 3)


@on_databases
async def test_a_goal_raised_past_the_retention_repeats_no_refund(
    backend: str, tmp_path: Path
) -> None:
    """A (``until="paid"``) made an order's payment and refund calls; the retention then
    pruned their claims.  B tracks the order until ``done``: the track raises the
    row's goal and pulls its mark back to the ``done`` goal's first call owed, but a
    refund the old mark passed was made, claim or not (one call for both goals): B
    makes no call.  (Judged by the claims alone, the refund was called again, and the
    delivery granted on an order refunded long ago; a review found it.)"""
    url = url_for(backend, tmp_path)
    calls: list[Settled] = []
    async with journal_only(url, calls) as a:
        a.track(12)
        await eventually(lambda: tracked(url, 12), timeout=30)
        await record(url, (12, P), (12, D), (12, C))
        await eventually(lambda: len(calls) >= 2, timeout=30)
        await sweeps_after(a)
    db = connect(url)
    try:
        db.execute("DELETE FROM orderfsm_claims")  # as the retention does
    finally:
        db.close()
    made = len(calls)
    async with journal_only(url, calls, until="done") as b:
        b.track(12)
        await eventually(lambda: b.status(12) is C, timeout=30)
        await sweeps_after(b)
    assert [(e.status.value, e.later) for e in calls[:made]] == [
        ("paid", False),
        ("canceled", True),
    ]
    assert calls[made:] == []
    assert told(url, 12) == (3, 3)


PASTS = {  # the journal's history, the calls A made of it (goal paid, goal done)
    "paid": ([P], 1, 0),
    "delivered": ([P, D], 1, 1),
    "refunded": ([P, D, C], 2, 2),
    "paid-refunded": ([P, C], 2, 1),
    "untracked-refunded": ([P, C], 0, 0),  # webhooks only: A never tracked it
}


@on_databases
@pytest.mark.parametrize("goal", [P, D])
@pytest.mark.parametrize("past", list(PASTS))
async def test_an_order_tracked_again_past_the_retention_and_heard_from_xsolla_first(
    backend: str, tmp_path: Path, goal: Status, past: str
) -> None:
    """A made an order's calls; the retention then pruned their claims.  Months later B
    tracks the order again and hears ``done`` from Xsolla (a Get order, the socket)
    before it reads the order's past in the journal.  No call is made again: the
    order's row says each was.  The calls owed are made, once: the delivery's for the
    goal ``done`` of an order A saw only paid; for an order paid and refunded that
    nobody tracked, its refund, and for the goal ``paid`` the payment's call before it;
    for ``done`` no grant, which would follow a refund made or owed, never revoked.
    (Judged by the claims alone, as news not read from the journal was, the grant was
    made a second time; reviews found more: the goal ``paid`` delivered only now,
    ``done`` heard just before its refund; and a refund's ``later`` with no grant.)"""
    url = url_for(backend, tmp_path)
    calls: list[Settled] = []
    history, made_paid, made_done = PASTS[past]
    made = made_paid if goal is P else made_done
    if made:
        async with journal_only(url, calls, until=goal.value) as a:
            a.track(12)
            await eventually(lambda: tracked(url, 12, goal), timeout=30)
            await record(url, *[(12, s) for s in history])
            await eventually(lambda: len(calls) >= made, timeout=30)
            await sweeps_after(a)
        assert told(url, 12)[0] == told(url, 12)[1]  # every call recorded in the row
    else:
        await record(url, *[(12, s) for s in history])
    assert len(calls) == made
    db = connect(url)
    try:
        db.execute("DELETE FROM orderfsm_claims")  # as the retention does
    finally:
        db.close()
    heard = anyio.Event()
    heard.set()  # at once: before B's first read of the journal
    async with journal_only(url, calls, until=goal.value, **xsolla_says(D, heard)) as b:
        b.track(12)
        result = await b.wait(12)
        await sweeps_after(b)
    assert (result.status, result.source) == (D, "events")  # Xsolla's news first, as staged
    owed = {"paid": [(D, True, False)] if goal is D else []}.get(past, [])
    if past == "untracked-refunded":  # for paid, the payment's call (heard as either)
        owed = [(goal, True, False)] if goal is P else []
        owed.append((C, False, True))  # after B's own done: later (revoke what was granted)
    named = [(settled_name(e.status, goal), e.succeeded, e.later) for e in calls[made:]]
    assert named == owed


@on_databases
async def test_a_refund_heard_first_from_xsolla_after_a_grant_elsewhere_is_later(
    backend: str, tmp_path: Path
) -> None:
    """B granted the delivery; A then tracks the order and its first news, from Xsolla,
    is the refund, before it reads the order's past in the journal: the refund's call
    is ``later``, as the journal says (a settlement before it).  (A called it
    ``later=False``, as if nothing had been granted: a grant never revoked by a
    handler that revokes on ``later``; a review found it.)"""
    url = url_for(backend, tmp_path)
    calls: list[Settled] = []
    async with journal_only(url, calls, until="done") as b:
        b.track(31)
        await eventually(lambda: tracked(url, 31, D), timeout=30)
        await record(url, (31, P), (31, D))
        await eventually(lambda: calls, timeout=30)
        await sweeps_after(b)
    heard = anyio.Event()
    heard.set()
    async with journal_only(url, calls, until="done", **xsolla_says(C, heard)) as a:
        a.track(31)
        result = await a.wait(31)
        await eventually(lambda: len(calls) >= 2, timeout=30)
        await sweeps_after(a)
    assert (result.status, result.source) == (C, "events")
    assert [(e.status, e.succeeded, e.later) for e in calls] == [(D, True, False), (C, False, True)]


@on_databases
async def test_a_grant_then_a_refund_the_journal_holds_before_it_is_later(
    backend: str, tmp_path: Path
) -> None:
    """A fleet mixing goals: the row's goal is ``done`` (its tracker gone), A grants on
    payment.  The refund is recorded (a poll that missed the payment) just before A
    hears ``paid``: A's grant goes to its claim (the row's goal is not A's), and its
    refund after it, read from the journal as ``new -> canceled``, is ``later``: A
    granted.  (Judged by the journal alone it was ``later=False``, a grant never
    revoked; a review found it.)"""
    url = url_for(backend, tmp_path)
    async with open_journal(url) as journal:
        log = OrderLog(journal)
        await log.track_many([(22, D, None)])
        await log.record([Note(22, N, "polling", time.time())])

    def refund_now() -> None:
        db = connect(url)
        try:
            dialect = begin_writing(db, url)
            orders_sql.record(db, dialect, [Note(22, C, "polling", time.time())], time.time())
            db.execute("COMMIT")
        finally:
            db.close()

    calls: list[Settled] = []
    heard = anyio.Event()
    async with journal_only(url, calls, **xsolla_says(P, heard, refund_now)) as a:
        a.track(22)
        await sweeps_after(a)
        heard.set()
        await a.wait(22)
        await eventually(lambda: len(calls) >= 2, timeout=30)
        await sweeps_after(a)
    assert [(e.status, e.succeeded, e.later) for e in calls] == [(P, True, False), (C, False, True)]


@on_databases
async def test_in_a_fleet_mixing_goals_the_done_goals_first_call_is_not_later(
    backend: str, tmp_path: Path
) -> None:
    """The row's goal is ``done`` (its tracker gone); A grants on payment, then the order
    is delivered and A's sweep makes the ``done`` goal's call: that goal's first
    settlement, not ``later`` (A's own payment call is another goal's; a review found
    it called ``later``)."""
    url = url_for(backend, tmp_path)
    async with open_journal(url) as journal:
        await OrderLog(journal).track_many([(41, D, None)])
    calls: list[Settled] = []
    async with journal_only(url, calls) as a:
        a.track(41)
        await sweeps_after(a)
        await record(url, (41, P))
        await eventually(lambda: calls, timeout=30)
        await record(url, (41, D))
        await eventually(lambda: len(calls) >= 2, timeout=30)
        await sweeps_after(a)
    assert [(e.status, e.until, e.later) for e in calls] == [(P, P, False), (D, D, False)]


@on_databases
async def test_a_call_is_not_made_again_once_retention_pruned_its_claim(
    backend: str, tmp_path: Path
) -> None:
    """Retention shorter than a day (3 s here): order 9's answered claim is pruned; the
    sweep must not take order 9 for one whose call was never made."""
    url = url_for(backend, tmp_path)
    settings = JournalSettings(lease=1.0, retention=3.0, prune_every=0.5)
    calls: list[Settled] = []
    async with open_journal(url, settings) as journal, journal_only(journal, calls) as t:
        t.track(9)
        await record(url, (9, P))
        await eventually(lambda: calls)
        made = time.time()
        await eventually(lambda: time.time() > made + settings.retention + 0.5, timeout=30)
        # Each recorded call may start the prune (once every prune_every).
        t.track(10)
        await record(url, (10, P))
        await eventually(lambda: len(calls) >= 2, timeout=30)
        t.track(11)
        await record(url, (11, P))
        await eventually(lambda: len(calls) >= 3, timeout=30)
        await eventually(lambda: not claim_exists(url, settled_key(9, P)), timeout=30)
        await sweeps_after(t, 3)
    assert [e.order_id for e in calls] == [9, 10, 11]


@on_databases
async def test_an_app_restarted_days_later_gets_the_call_it_owed(
    backend: str, tmp_path: Path
) -> None:
    """A client app wrote its orders' settlements and died before its handler ran; it
    starts again 25 hours later (the row's time moved back): both calls are made."""
    url = url_for(backend, tmp_path)
    async with open_journal(url) as journal:  # the app's first run, which then died
        log = OrderLog(journal)
        await log.track_many([(1, D, "me"), (2, D, "me")])
        await log.record([Note(i, s, "polling", time.time()) for i in (1, 2) for s in (P, D)])
    db = connect(url)
    db.execute(f"UPDATE orderfsm_orders SET updated_at = updated_at - {25 * 3600}")
    db.close()
    calls: list[Settled] = []
    async with journal_only(url, calls, until="done") as t:
        await eventually(lambda: len(calls) >= 2, timeout=30)  # with no fix: only order 2
        await sweeps_after(t)
    assert sorted(calls_of(calls)) == [(1, "done", True, False), (2, "done", True, False)]


@on_databases
async def test_orders_whose_handler_keeps_failing_do_not_hide_the_others(
    backend: str, tmp_path: Path
) -> None:
    """30 settled orders whose handler keeps failing (released claims) before a newer one
    owed by a dead instance; pages of 10: the sweep reaches the newer one on its
    fourth page, then starts again from the first."""
    url = url_for(backend, tmp_path)
    async with open_journal(url) as journal:
        log, settled = OrderLog(journal), SettledLog(OrderLog(journal))
        failing = list(range(1, 31))
        await log.track_many([(i, P, None) for i in [*failing, 5000]])
        await log.record([Note(i, P, "webhook", time.time()) for i in [*failing, 5000]])
        for i in failing:
            claim_row(url, settled_key(i, P), "released", time.time() + 60)
        pages: list[list[int]] = []
        after: int | None = 0
        while after is not None:
            found, after = await settled.owed(after, limit=10)
            pages.append([order_id for order_id, *_ in found])
        again, _ = await settled.owed(0, limit=10)
    assert pages == [failing[0:10], failing[10:20], failing[20:30], [5000]]
    assert [order_id for order_id, *_ in again] == failing[0:10]


@on_databases
async def test_a_payment_after_the_expired_call_is_a_later_call_for_the_sweep_too(
    backend: str, tmp_path: Path
) -> None:
    """Order 3 expired and its instance made the expired call (its grace over), then it
    was paid: the sweep gives the payment ``later``, as that instance would.  Order 4
    was paid within its grace, the expired call never made: its payment is its first."""
    url = url_for(backend, tmp_path)
    async with open_journal(url) as journal:
        log = OrderLog(journal)
        await log.track_many([(3, P, None), (4, P, None)])
        for status in (N, E, P):
            await log.record([Note(3, status, "webhook", time.time())])
            await log.record([Note(4, status, "webhook", time.time())])
        claim_row(url, settled_key(3, E), "answered", 0)
        found, _ = await SettledLog(log).owed(0)
    assert found == [(3, P, P, True, True), (4, P, P, True, False)]


@on_databases
async def test_with_goal_done_a_lapse_is_told_before_the_delivery_and_makes_it_later(
    backend: str, tmp_path: Path
) -> None:
    """Goal ``done``: the payment after an expired order settles nothing, the delivery
    does.  Order 3's expired call was made: its delivery is a later call.  Order 5's
    is owed (its instance died, or had no ``on_settled``): made first, then the
    delivery, later.  Order 6 is paid, not delivered: its owed expired call alone.
    Order 7's delivery call was made before its expired call: never made behind it."""
    url = url_for(backend, tmp_path)
    async with open_journal(url) as journal:
        log = OrderLog(journal)
        await log.track_many([(i, D, None) for i in (3, 5, 6, 7)])
        for status in (N, E, P, D):
            await log.record([Note(i, status, "webhook", time.time()) for i in (3, 5, 6, 7)
                              if (i, status) != (6, D)])  # fmt: skip
        claim_row(url, settled_key(3, E), "answered", 0)
        claim_row(url, settled_key(7, D), "answered", 0)
        await SettledLog(log).owe_lapses([5, 6, 7])
        found, _ = await SettledLog(log).owed(0)
    assert found == [
        (3, D, D, True, True),
        (5, E, D, False, False), (5, D, D, True, True),
        (6, E, D, False, False),
    ]  # fmt: skip


def _version_2_journal(url: str, rows: list[tuple[int, float]]) -> None:
    """A journal as schema version 2 left it: settled orders, tracked, no mark yet."""
    dialect = dialect_of(url)
    m = mark(url)
    db = connect(url)
    try:
        for step in (1, 2):
            for statement in migrations(dialect)[step]:
                db.execute(statement)
        db.execute("INSERT INTO orderfsm_schema (id, version) VALUES (1, 2)")
        for order_id, updated_at in rows:
            db.execute(
                "INSERT INTO orderfsm_orders (order_id, status, version, until, tracking,"
                f" tracked_at, lease_until, fence, updated_at) VALUES ({m}, 'paid', 1, 'paid',"
                f" {m}, {m}, 0, 1, {m})",
                (order_id, False, updated_at, updated_at),
            )
            db.execute(
                "INSERT INTO orderfsm_changes (order_id, version, status, previous, source, at)"
                f" VALUES ({m}, 1, 'paid', NULL, 'webhook', {m})",
                (order_id, updated_at),
            )
    finally:
        db.close()


@on_databases
async def test_a_version_2_journal_is_migrated_without_repeating_old_calls(
    backend: str, tmp_path: Path
) -> None:
    """Order 1 settled two days ago (the old sweep's day was over: its claim may be
    pruned), order 2 an hour ago with its call made, order 3 an hour ago with its call
    owed.  After the migration only order 3 is owed."""
    url = url_for(backend, tmp_path)
    now = time.time()
    _version_2_journal(url, [(1, now - 2 * 86400), (2, now - 3600), (3, now - 3600)])
    claim_row(url, settled_key(2, P), "answered", 0)
    async with open_journal(url) as journal:
        found, _ = await SettledLog(OrderLog(journal)).owed(0)
    db = connect(url)
    try:
        assert db.execute("SELECT version FROM orderfsm_schema").fetchall() == [(SCHEMA_VERSION,)]
    finally:
        db.close()
    assert [order_id for order_id, *_ in found] == [3]
    assert [told(url, i) for i in (1, 2, 3)] == [(1, 1), (1, 1), (0, 1)]


def lapses_flagged(url: str) -> list[int]:
    """The orders in the sweep's lapsed index: their expired call may be owed."""
    db = connect(url)
    try:
        rows = db.execute("SELECT order_id FROM orderfsm_orders WHERE lapse_owed = 1").fetchall()
        return sorted(int(r[0]) for r in rows)
    finally:
        db.close()


def answer_claim(url: str, key: str) -> None:
    db = connect(url)
    try:
        db.execute(f"UPDATE orderfsm_claims SET state = 'answered' WHERE key = '{key}'")
    finally:
        db.close()


@on_databases
async def test_the_lapsed_index_holds_only_the_expired_calls_owed(
    backend: str, tmp_path: Path
) -> None:
    """The sweep reads the lapsed index on every page: an expired order whose lapse
    nobody judged (dropped before its grace ended) is never in it; one judged is, until
    its call is recorded.  Order 1: untracked while expired; order 2: its call owed;
    order 3: its call made (its claim answered) before the sweep came by."""
    url = url_for(backend, tmp_path)
    async with open_journal(url) as journal:
        log = OrderLog(journal)
        await log.track_many([(i, P, None) for i in (1, 2, 3)])
        for status in (N, E):
            await log.record([Note(i, status, "webhook", time.time()) for i in (1, 2, 3)])
        await log.untrack([1])
        await SettledLog(log).owe_lapses([2, 3])
        assert lapses_flagged(url) == [2, 3]
        answer_claim(url, settled_key(3, E))
        found, _ = await SettledLog(log).owed(0)
        assert (found, lapses_flagged(url)) == ([(2, E, P, False, False)], [2])
        answer_claim(url, settled_key(2, E))
        assert await SettledLog(log).owed(0) == ([], None)
    assert lapses_flagged(url) == []
    assert [told(url, i) for i in (1, 2, 3)] == [(0, 2), (2, 2), (2, 2)]


@on_databases
async def test_a_version_3_journal_flags_only_the_expired_calls_left_unanswered(
    backend: str, tmp_path: Path
) -> None:
    """Schema 4 on a version 3 journal: of its expired orders, only order 2, whose
    instance died in its expired call (its claim running), is owed; order 1 (no claim)
    and order 3 (its call made) stay out of the lapsed index."""
    url = url_for(backend, tmp_path)
    dialect = dialect_of(url)
    m = mark(url)
    db = connect(url)
    try:
        for step in (1, 2, 3):
            for statement in migrations(dialect)[step]:
                db.execute(statement)
        db.execute("INSERT INTO orderfsm_schema (id, version) VALUES (1, 3)")
        for order_id in (1, 2, 3):
            db.execute(
                "INSERT INTO orderfsm_orders (order_id, status, version, until, tracking,"
                f" tracked_at, lease_until, fence, updated_at) VALUES ({m}, 'expired', 2,"
                f" 'paid', {m}, 1.0, 0, 1, 1.0)",
                (order_id, False),
            )
            for version, status, previous in ((1, "new", None), (2, "expired", "new")):
                db.execute(
                    "INSERT INTO orderfsm_changes (order_id, version, status, previous,"
                    f" source, at) VALUES ({m}, {m}, {m}, {m}, 'webhook', 1.0)",
                    (order_id, version, status, previous),
                )
    finally:
        db.close()
    claim_row(url, settled_key(2, E), "running", 0)
    claim_row(url, settled_key(3, E), "answered", 0)
    async with open_journal(url) as journal:
        assert lapses_flagged(url) == [2]
        found, _ = await SettledLog(OrderLog(journal)).owed(0)
    assert found == [(2, E, P, False, False)]


async def _app(url: str, *args: str) -> tuple[Process, BufferedByteReceiveStream]:
    process = await anyio.open_process(
        [sys.executable, str(Path(__file__).parent / "settled_app.py"), url, *args]
    )
    assert process.stdout is not None
    return process, BufferedByteReceiveStream(process.stdout)


async def _line(reader: BufferedByteReceiveStream, prefix: str) -> str:
    with anyio.fail_after(60):
        while True:
            line = (await reader.receive_until(b"\n", 1 << 16)).decode()
            if line.startswith(prefix):
                return line


@on_databases
async def test_an_instance_killed_mid_call_holds_up_the_refund_call_not_the_delivery_call(
    backend: str, tmp_path: Path
) -> None:
    """Real processes: A is SIGKILLed inside its ``on_settled`` for the payment; B follows
    the order live and hears the refund while A's claim is still live.  B makes the
    payment's call once that claim's lease is over, then the refund's: never the refund
    first.  Then both are marked told (nothing more is owed)."""
    url = url_for(backend, tmp_path)
    dying, reader = await _app(url, "--hang", "--track", "8")
    try:
        await _line(reader, "READY")
        await eventually(lambda: tracked(url, 8), timeout=30)
        await record(url, (8, P))
        assert (await _line(reader, "CALLED")).split() == ["CALLED", "8", "paid", "False"]
        live, reader = await _app(url, "--track", "8")
        await _line(reader, "READY")
    finally:
        dying.kill()
        await dying.wait()
    try:
        await record(url, (8, C))
        calls = [(await _line(reader, "CALLED")).split()[1:] for _ in range(2)]
        assert calls == [["8", "paid", "False"], ["8", "canceled", "True"]]
        await eventually(lambda: told(url, 8) == (2, 2), timeout=30)
    finally:
        live.kill()
        await live.wait()


async def _killed(process: Process) -> None:
    process.kill()
    await process.wait()


def _called(line: str) -> list[str] | None:
    return line.split()[1:] if line.startswith("CALLED") else None


async def _calls_until_swept(
    reader: BufferedByteReceiveStream, since: float, pages: int = 3
) -> list[list[str]]:
    """Every call the app printed until it has read ``pages`` more sweep pages after
    ``since`` (the last ones begun after it: a call they found would be under way)."""
    calls: list[list[str]] = []
    seen = 0
    with anyio.fail_after(60):
        while seen < pages:
            line = (await reader.receive_until(b"\n", 1 << 16)).decode()
            if (call := _called(line)) is not None:
                calls.append(call)
            elif line.startswith("SWEPT") and float(line.split()[2]) > since:
                seen += 1
    return calls


async def _calls_to_end(reader: BufferedByteReceiveStream) -> list[list[str]]:
    """Every call the (killed) app printed that was not read yet."""
    calls: list[list[str]] = []
    with anyio.fail_after(60):
        while True:
            try:
                line = (await reader.receive_until(b"\n", 1 << 16)).decode()
            except (anyio.IncompleteRead, anyio.EndOfStream):
                return calls
            if (call := _called(line)) is not None:
                calls.append(call)


def claim_state(url: str, key: str) -> str | None:
    db = connect(url)
    try:
        row = db.execute(f"SELECT state FROM orderfsm_claims WHERE key = '{key}'").fetchone()
        return None if row is None else str(row[0])
    finally:
        db.close()


@on_databases
async def test_a_payment_after_an_expired_call_its_instance_died_in_is_told_after_that_call(
    backend: str, tmp_path: Path
) -> None:
    """Real processes: A follows order 3, which expires; A's grace (0.3 s) ends and A is
    SIGKILLed inside the expired call.  The order is then paid.  B, which does not
    follow the order, finds both calls with its sweep: the expired call first (A's claim
    never answered), then the payment as a later call, each once (B's every call is
    read, up to sweeps begun after both were recorded)."""
    url = url_for(backend, tmp_path)
    dying, reader = await _app(url, "--hang", "--track", "3", "--grace", "0.3")
    try:
        await _line(reader, "READY")
        await eventually(lambda: tracked(url, 3), timeout=30)
        await record(url, (3, N))
        await record(url, (3, E))
        assert (await _line(reader, "CALLED")).split() == ["CALLED", "3", "expired", "False"]
    finally:
        await _killed(dying)
    await record(url, (3, P))
    live, reader = await _app(url)
    try:
        await eventually(
            lambda: told(url, 3) == (3, 3) and not lapses_flagged(url)
            and claim_state(url, settled_key(3, E)) == "answered",
            timeout=30,
        )  # fmt: skip
        calls = await _calls_until_swept(reader, time.time())
    finally:
        await _killed(live)
    calls += await _calls_to_end(reader)
    assert calls == [["3", "expired", "False"], ["3", "paid", "True"]]  # no fix: paid False
    async with open_journal(url) as journal:
        assert await answered(journal, settled_key(3, E))
        assert await answered(journal, settled_key(3, P))


@on_databases
async def test_an_expired_call_owed_by_an_instance_without_on_settled_is_made_by_one_with_it(
    backend: str, tmp_path: Path
) -> None:
    """A mixed fleet: A has no ``on_settled`` and follows order 4 live (it is running
    before the order's news), which expires and stays expired through A's grace; B has
    the handler and does not follow the order.  B makes the expired call, once."""
    url = url_for(backend, tmp_path)
    plain, plain_reader = await _app(url, "--no-handler", "--track", "4", "--grace", "0.3")
    live, reader = await _app(url)
    try:
        await _line(plain_reader, "READY")
        await eventually(lambda: tracked(url, 4), timeout=30)
        await record(url, (4, N))
        await record(url, (4, E))
        await eventually(
            lambda: claim_state(url, settled_key(4, E)) == "answered"
            and told(url, 4) == (2, 2) and not lapses_flagged(url),
            timeout=30,
        )  # fmt: skip
        calls = await _calls_until_swept(reader, time.time())
    finally:
        await _killed(plain)
        await _killed(live)
    calls += await _calls_to_end(reader)
    assert calls == [["4", "expired", "False"]]  # no fix: none


@on_databases
async def test_an_order_settled_at_once_is_still_owed_when_its_instance_dies_in_the_call(
    backend: str, anyio_backend_name: str, tmp_path: Path
) -> None:
    """Real processes: A's order 9 is paid before A's track of it is written (a webhook
    observed in process beat the app's call), so its track, its payment and its untrack
    are queued at once; A is SIGKILLed inside the call.  The journal still holds what
    the sweep needs (the row tracked, with A's goal ``paid``): B, started afterwards
    and not following the order, makes the call, once."""
    url = url_for(backend, tmp_path)
    loop = ("--backend", anyio_backend_name)
    dying, reader = await _app(url, "--hang", "--track", "9", "--observe", "paid", *loop)
    try:
        assert (await _line(reader, "CALLED")).split() == ["CALLED", "9", "paid", "False"]
    finally:
        await _killed(dying)
    live, reader = await _app(url, *loop)
    try:
        await eventually(
            lambda: claim_state(url, settled_key(9, P)) == "answered" and told(url, 9) == (1, 1),
            timeout=30,
        )  # no fix: the row untracked, its goal done, and the call never made
        calls = await _calls_until_swept(reader, time.time())
    finally:
        await _killed(live)
    calls += await _calls_to_end(reader)
    assert calls == [["9", "paid", "False"]]
    assert tracked(url, 9)


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_call_waits_until_its_order_is_written(
    backend: str, anyio_backend_name: str, tmp_path: Path
) -> None:
    """Real processes: A's order 10 settles at once while the row its track writes is
    locked (a receiver's transaction on it, held here).  A does not call ``on_settled``
    while its track and the payment wait: dead in that call, it would leave nothing for
    a sweep to find.  It calls once they are written.  PostgreSQL only: there a row
    lock holds up the track and not the call's claim."""
    url = url_for(backend, tmp_path)
    await record(url, (10, N))
    holder, waiting = connect(url), connect(url)
    holder.execute("BEGIN")
    holder.execute("SELECT 1 FROM orderfsm_orders WHERE order_id = 10 FOR UPDATE")
    blocked = "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
    app, reader = await _app(
        url, "--hang", "--track", "10", "--observe", "paid", "--backend", anyio_backend_name
    )
    try:
        try:
            pid = holder.info.backend_pid
            await eventually(lambda: waiting.execute(blocked, (pid,)).fetchone()[0] > 0, timeout=30)
            calls = await _calls_until_swept(reader, time.time())
            assert calls == []  # no fix: called at once
            assert claim_state(url, settled_key(10, P)) is None
        finally:
            waiting.close()
            holder.close()  # rolled back: the track goes on
        assert (await _line(reader, "CALLED")).split() == ["CALLED", "10", "paid", "False"]
        assert tracked(url, 10)
    finally:
        await _killed(app)
