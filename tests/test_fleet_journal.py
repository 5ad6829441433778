"""The journal's orders (the fleet tracker's tables) against real SQLite and PostgreSQL.

The two traps issue 15 names are provoked here: a catch-up cursor over a
global sequence skips a change whose transaction commits late (the per-order
version does not), and NOTIFY costs a cluster-wide lock through commit (so
there is one per transaction, and none when nothing changed).
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support_journal import (
    PausedBefore,
    begin_writing,
    connect,
    dialect_of,
    is_postgres,
    on_databases,
    url_for,
)
from support_postgres import postgres_server
from support_webhook import SECRET, order_paid, serve_receiver, signed

from orderfsm import Status
from orderfsm.core import GOALS, Verdict, verdict
from orderfsm.errors import JournalUnavailable, WebhookError
from orderfsm.journal.orders import (
    LET_GO,
    ChangeRow,
    Lapse,
    OrderRow,
    RowMark,
    adoptable,
    advance,
    leased,
    let_go,
    mark_for_goal,
    may_lease,
    settled_call,
    settled_key,
    settled_name,
)
from orderfsm.supervisor.tracker import Tracker
from orderfsm.testing import eventually
from transports.http import open_http_client
from transports.journal import JournalSettings, open_journal, settled_sql
from transports.journal import order_leases as leases
from transports.journal import order_reads as reads
from transports.journal import orders as sql
from transports.journal.order_log import OrderLog
from transports.journal.orders import Note
from transports.journal.settled_log import SettledLog
from transports.webhook import WebhookReceiver

pytestmark = pytest.mark.anyio

P, D, N, E, C = Status.PAID, Status.DONE, Status.NEW, Status.EXPIRED, Status.CANCELED


def told_and_goal(mark: RowMark | None) -> tuple[int, Status] | None:
    """The row's ``settled_told`` and the goal it was judged for (``None``: no row)."""
    return None if mark is None else (mark.told, mark.goal)


def note(order_id: int, status: Status, source: str = "test") -> Note:
    return Note(order_id, status, source, time.time())


@on_databases
async def test_a_change_is_written_once_and_only_when_it_advances(
    backend: str, tmp_path: Path
) -> None:
    async with open_journal(url_for(backend, tmp_path)) as journal:
        log = OrderLog(journal)
        await log.track(7, D, "player-7")
        written = [await log.record([note(7, s)]) for s in (N, P, P, N, E, D, C, D)]
        changes = await log.changes({7: 0}, everything=True)
        (row,) = (await log.orders([7])).values()
    assert [len(w) for w in written] == [1, 1, 0, 0, 0, 1, 1, 0]  # repeats and stale news: none
    assert [(c.version, c.status, c.previous) for c in changes] == [
        (1, N, None), (2, P, N), (3, D, P), (4, C, D)
    ]  # fmt: skip
    assert (row.status, row.version, row.user_id, row.tracking) == (C, 4, "player-7", False)


@on_databases
async def test_the_sweep_finds_a_settlement_behind_many_orders_still_waiting(
    backend: str, tmp_path: Path
) -> None:
    """The sweep reads a bounded page of unhandled settlements: orders still waiting
    (older, and many more) must not fill it, or a settlement whose instance died
    before its ``on_settled`` ran is never found."""
    async with open_journal(url_for(backend, tmp_path)) as journal:
        log = OrderLog(journal)
        await log.track_many([(i, D, "waiting") for i in range(100, 120)])
        await log.record([note(i, N) for i in range(100, 120)])
        await log.track(5, D, "player-5")
        await log.record([note(5, P), note(5, D)])
        found, after = await SettledLog(log).owed(0, limit=10)
    assert (found, after) == ([(5, D, D, True, False)], None)


@on_databases
async def test_the_sweep_finds_every_call_owed_not_only_the_current_status(
    backend: str, tmp_path: Path
) -> None:
    """Order 1 was delivered (its call lost with its instance), then refunded: both calls
    are owed, in order.  Order 2 was refunded before delivery: its refund is its
    settlement.  Order 3's delivery call was made: only its refund is owed.  Order 4
    waits for payment: its call was made, and its delivery (the same answer) owes none."""
    url = url_for(backend, tmp_path)
    async with open_journal(url) as journal:
        log = OrderLog(journal)
        await log.track_many([(i, D, None) for i in (1, 2, 3)])
        await log.record([note(1, P), note(1, D), note(1, C), note(2, P), note(2, C)])
        await log.record([note(3, P), note(3, D), note(3, C)])
        await log.track(4, P, None)
        await log.record([note(4, P), note(4, D)])
        for key in ("settled:3:done", "settled:4:paid"):
            record_answered(url, key)
        first, _ = await SettledLog(log).owed(0)
        assert first == [(1, D, D, True, False), (2, C, D, False, False), (3, C, D, False, True)]
        record_answered(url, "settled:1:done")  # the next one only once it is made
        second, _ = await SettledLog(log).owed(0)
    assert second == [(1, C, D, False, True), (2, C, D, False, False), (3, C, D, False, True)]
    assert [(succeeded, later) for *_, succeeded, later in first + second] == [
        (True, False), (False, False), (False, True), (False, True), (False, False), (False, True)
    ]  # fmt: skip


@on_databases
async def test_the_sql_names_each_call_as_the_pure_decision_does(
    backend: str, tmp_path: Path
) -> None:
    """Every change that calls, for each goal, its order's earlier calls recorded and its
    own under the name :func:`settled_name` gives it (a ``done`` straight from ``new``
    for the goal ``paid`` is the payment's call): the mark passes it, so the sweep
    does not find it owed for ever.  Unrecorded, the mark stays before it."""
    url = url_for(backend, tmp_path)
    cases = [
        (goal, previous, status)
        for goal in GOALS
        for previous in (None, *Status)
        for status in Status
        if advance(previous, status) is not None and settled_call(previous, status, goal)
    ]
    async with open_journal(url) as journal:
        log = OrderLog(journal)
        for order_id, (goal, previous, status) in enumerate(cases * 2, start=1):
            await log.track(order_id, goal, None)
            heard = [status] if previous is None else [previous, status]
            await log.record([note(order_id, s) for s in heard])
            if order_id <= len(cases):  # the first round's calls recorded, the second's not
                for name, _ in calls_heard(heard, goal):
                    record_answered(url, settled_key(order_id, name))
        ids = list(range(1, 2 * len(cases) + 1))
        rows = await log.orders(ids)
        for order_id in ids:
            await SettledLog(log).tell(order_id)
        marks = {i: await SettledLog(log).mark(i) for i in ids}
    recorded = [told_and_goal(marks[i]) == (rows[i].version, rows[i].until) for i in ids]
    assert recorded == [True] * len(cases) + [False] * len(cases)


@on_databases
@pytest.mark.parametrize(
    ("goal", "before", "news"),
    [(D, [P, D], C), (P, [N, E], P), (D, [P], D)],
    ids=["refund", "paid-after-lapse", "delivery"],
)
async def test_the_mark_never_passes_a_change_recorded_while_it_moves(
    backend: str, tmp_path: Path, goal: Status, before: list[Status], news: Status
) -> None:
    """The order's calls so far are recorded, and its mark moves (``tell``) while another
    transaction records its next change, holding the row's lock: the new change's call
    is owed, and the mark stays before it.  (On PostgreSQL the waiting update read the
    row as the change left it, its version, with subqueries from before the change:
    the mark passed a refund, a payment after a lapse or a delivery, unmade, and
    neither the sweep nor an instance reading the change made its call; a review found
    it.)"""
    url = url_for(backend, tmp_path)
    async with open_journal(url) as journal:
        log = OrderLog(journal)
        await log.track(12, goal, None)
        await log.record([note(12, s) for s in before])
        for name, _ in calls_heard(before, goal):
            record_answered(url, settled_key(12, name))
        told_before = (await log.orders([12]))[12].version
        writer = connect(url)
        try:
            dialect = begin_writing(writer, url)
            sql.record(writer, dialect, [note(12, news)], time.time())
            async with anyio.create_task_group() as tg:
                tg.start_soon(SettledLog(log).tell, 12)  # waits for the writer's lock
                await anyio.sleep(0.5)
                writer.execute("COMMIT")
        finally:
            writer.close()
        mark = await SettledLog(log).mark(12)
    assert mark is not None
    assert (mark.told, mark.status) == (told_before, news)  # the news's call still owed


@on_databases
async def test_the_sweep_reads_a_change_recorded_while_it_tells_without_failing(
    backend: str, tmp_path: Path
) -> None:
    """Goal ``paid``: the payment's call made, its mark not moved yet; the sweep takes the
    order, and its ``tell`` waits for the row while the delivery is recorded (for
    ``paid`` it calls nothing).  The sweep owes nothing and goes on.  (On PostgreSQL
    the mark stopped before the delivery, which the sweep's next read saw: an
    assertion that the mark stops only before a calling change ended the tracker; a
    review found it.)"""
    url = url_for(backend, tmp_path)
    async with open_journal(url) as journal:
        log = OrderLog(journal)
        await log.track(12, P, None)
        await log.record([note(12, P)])
        record_answered(url, settled_key(12, P))
        writer = connect(url)
        try:
            dialect = begin_writing(writer, url)
            sql.record(writer, dialect, [note(12, D)], time.time())
            found: list[Any] = []

            async def sweep() -> None:
                found.append(await SettledLog(log).owed(0))

            async with anyio.create_task_group() as tg:
                tg.start_soon(sweep)  # its tell waits for the writer's lock
                await anyio.sleep(0.5)
                writer.execute("COMMIT")
        finally:
            writer.close()
        await SettledLog(log).tell(12)
        mark = await SettledLog(log).mark(12)
    assert found == [([], None)]
    assert mark is not None and (mark.told, mark.status) == (2, D)  # passed by the next tell


@on_databases
async def test_a_goal_raised_while_a_change_is_recorded_and_told_still_owes_its_call(
    backend: str, tmp_path: Path
) -> None:
    """Goal ``paid``, its call made.  An instance's track raises the goal to ``done``; its
    update starts just before a delivery is recorded and the mark moved past it (for
    ``paid`` it calls nothing), and waits for the row.  The delivery's ``done`` call
    is owed: the mark before it.  (On PostgreSQL the waiting update read the mark as
    moved, past the delivery, and judged it from changes read before the delivery:
    the mark stayed, and the grant was never owed, to the sweep or to anyone; a review
    found it.)  SQLite's writers take turns: there the track comes after."""
    url = url_for(backend, tmp_path)
    postgres = is_postgres(url)
    dialect = dialect_of(url)
    async with open_journal(url) as journal:
        log = OrderLog(journal)
        await log.track(12, P, None)
        await log.record([note(12, P)])
        record_answered(url, settled_key(12, P))
        await SettledLog(log).tell(12)
        raiser = PausedBefore(connect(url), "UPDATE orderfsm_orders SET until")

        def raise_goal() -> None:
            begin_writing(raiser, url)
            sql.track(raiser, dialect, 12, D, None, time.time(), channel=log.channel)
            raiser.execute("COMMIT")

        writer = connect(url)
        try:
            async with anyio.create_task_group() as tg:
                if postgres:
                    tg.start_soon(anyio.to_thread.run_sync, raise_goal)
                    await anyio.to_thread.run_sync(raiser.reached.wait, 10)
                begin_writing(writer, url)
                sql.record(writer, dialect, [note(12, D)], time.time())
                settled_sql.tell(writer, dialect, [12])
                raiser.go.set()  # its update starts, and waits for the writer's lock
                await anyio.sleep(0.5)
                writer.execute("COMMIT")
            if not postgres:
                raise_goal()
        finally:
            writer.close()
            raiser.db.close()
        mark = await SettledLog(log).mark(12)
    assert mark is not None
    assert (mark.told, mark.goal, mark.status) == (1, D, D)  # the delivery's call owed


def histories(length: int) -> list[list[Status]]:
    """Every sequence of up to ``length`` statuses the journal may hold for one order."""
    found, ends = [], [[]]
    for _ in range(length):
        ends = [[*h, s] for h in ends for s in Status if advance(h[-1] if h else None, s)]
        found += ends
    return found


@on_databases
async def test_a_goal_raised_moves_the_mark_as_the_pure_decision_does(
    backend: str, tmp_path: Path
) -> None:
    """Any history an order may have, each of its calls' claims absent, answered, being
    made or released, its mark judged for ``paid``, its claims then pruned by the
    retention or not; a track raises its goal
    to ``done``: the SQL's mark is the one :func:`mark_for_goal` gives (back before
    the ``done`` goal's first call owed with none made after it, a refund the old mark
    passed counting as made without its claim), and where it was for a track keeping
    the goal."""
    url = url_for(backend, tmp_path)
    names = [P, D, C]
    states = (None, "answered", "running", "released")  # of each call's claim
    cases = [
        (heard, {n: st for n, st in zip(names, claims, strict=True) if st}, pruned)
        for heard in histories(4)
        for claims in itertools.product(states, repeat=len(names))
        for pruned in (False, True)
    ]
    ids = range(1, len(cases) + 1)
    async with open_journal(url) as journal:
        log = OrderLog(journal)
        await log.track_many([(i, P, None) for i in ids])
        await log.record([note(i, s) for i, (heard, _, _) in enumerate(cases, 1) for s in heard])
        db = connect(url)
        try:
            for i, (_, claims, _) in enumerate(cases, 1):
                for name, state in claims.items():
                    db.execute(
                        "INSERT INTO orderfsm_claims (key, attempt, state, owner, lease_until,"
                        f" claimed_at) VALUES ('{settled_key(i, name)}', 1, '{state}', 'x', 0, 0)"
                    )
        finally:
            db.close()
        settled = SettledLog(log)
        for i in ids:
            await settled.tell(i)
        before = {i: await settled.mark(i) for i in ids}
        db = connect(url)
        try:
            for i, (_, _, pruned) in enumerate(cases, 1):
                if pruned:  # as the retention does, after the calls were told
                    db.execute(f"DELETE FROM orderfsm_claims WHERE key LIKE 'settled:{i}:%'")
        finally:
            db.close()
        await log.track_many([(i, P, None) for i in ids])
        kept = {i: await settled.mark(i) for i in ids}
        await log.track_many([(i, D, None) for i in ids])
        raised = {i: told_and_goal(await settled.mark(i)) for i in ids}
    assert kept == before
    expected = {}
    for i, (heard, claims, pruned) in enumerate(cases, 1):
        told, goal = told_and_goal(before[i]) or (0, P)
        assert goal is P
        changes = [
            ChangeRow(i, v, s, heard[v - 2] if v > 1 else None, "test", 0.0)
            for v, s in enumerate(heard, start=1)
        ]
        made = set() if pruned else {n for n, st in claims.items() if st != "released"}
        expected[i] = (mark_for_goal(told, changes, D, made, P), D)
    assert raised == expected


@on_databases
async def test_a_track_after_the_news_takes_its_own_goal_not_the_placeholder(
    backend: str, tmp_path: Path
) -> None:
    """A webhook's news can make an order's row before any instance tracks it (its
    goal then a placeholder, ``done``).  The first track's goal is the row's: a
    fleet granting on ``paid`` is owed its call at ``paid``, where no webhook ever
    says ``done``, even when the instance's "still wanted" mark comes before its
    track.  Once a goal was asked, the stricter one still wins."""
    async with open_journal(url_for(backend, tmp_path)) as journal:
        log = OrderLog(journal)
        await log.record([note(8, P), note(9, N)])
        await log.want([8])  # a journal-only instance's "still wanted", before its track lands
        await log.track(8, P, "player-8")
        await log.track(9, P, "player-9")
        await log.track(9, D, "player-9")
        await log.track(9, P, "player-9")
        rows = await log.orders([8, 9])
        owed, _ = await SettledLog(log).owed(0)
    assert [(rows[i].until, rows[i].tracking) for i in (8, 9)] == [(P, False), (D, True)]
    assert owed == [(8, P, P, True, False)]


def record_answered(url: str, key: str) -> None:
    """A call made and recorded (its claim answered), as an instance leaves it."""
    db = connect(url)
    try:
        db.execute(
            "INSERT INTO orderfsm_claims (key, attempt, state, owner, lease_until,"
            f" claimed_at) VALUES ('{key}', 1, 'answered', 'x', 0, 0)"
        )
    finally:
        db.close()


@given(
    statuses=st.lists(st.sampled_from(list(Status)), max_size=12),
    until=st.sampled_from(GOALS),
)
def test_each_change_alone_names_the_calls_an_instance_seeing_all_of_them_makes(
    statuses: list[Status], until: Status
) -> None:
    """The sweep judges each change by the status before it; an instance that follows
    the order judges it by all it told before (``FleetLink.advanced``).  Over any news
    the core lets through, both name the same calls with the same flags."""
    current: Status | None = None
    told: Verdict | None = None
    settled = False
    seen, judged = [], []
    for status in statuses:
        if advance(current, status) is None:
            continue
        answer = verdict(status, until)
        settles = not settled and answer.settled
        settled = settled or settles
        if settles or (answer.settled and answer is not told):
            seen.append((status, answer is Verdict.SUCCEEDED, not settles))
            told = answer
        call = settled_call(current, status, until)
        if call is not None:
            judged.append((status, *call))
        current = status
    assert judged == seen


def calls_heard(statuses: list[Status], until: Status) -> list[tuple[Status, bool]]:
    """The calls an instance makes hearing ``statuses`` in this order, as
    ``FleetLink.advanced`` judges them: (name, succeeded)."""
    current: Status | None = None
    told: Verdict | None = None
    calls = []
    for status in statuses:
        if advance(current, status) is None:
            continue  # stale or repeated: the core drops it
        answer = verdict(status, until)
        if answer.settled and answer is not told:
            calls.append((settled_name(status, until), answer is Verdict.SUCCEEDED))
            told = answer
        current = status
    return calls


def test_paid_and_done_name_one_settlement_for_the_goal_paid() -> None:
    assert [settled_name(s, P) for s in (P, D, C, E)] == [P, P, C, E]
    assert [settled_name(s, D) for s in (P, D, C, E)] == [P, D, C, E]


@given(
    statuses=st.lists(st.sampled_from(list(Status)), max_size=8),
    until=st.sampled_from(GOALS),
    data=st.data(),
)
def test_an_order_settles_under_one_name_whatever_order_its_news_is_heard_in(
    statuses: list[Status], until: Status, data: st.DataObject
) -> None:
    """Instances hear one order's news in their own orders (the journal holds one of
    them; a sweep judges that one change by change), and each makes the calls it
    judges.  Their successes share one name, their failures one: a call is claimed
    once per name, so the app hears of one settlement once, of one refund once."""
    heard = [statuses, *(data.draw(st.permutations(statuses)) for _ in range(2))]
    names: dict[bool, set[Status]] = {True: set(), False: set()}
    for order in heard:
        for name, succeeded in calls_heard(order, until):
            names[succeeded].add(name)
    assert len(names[True]) <= 1 and len(names[False]) <= 1


def test_the_strictest_goal_is_derived_and_a_third_goal_fails_loudly() -> None:
    """``track`` keeps the row's goal or the one given with a two-way ``CASE``: right
    for ``paid`` and ``done`` only; a third goal must stop the import, not lose a goal."""
    assert sql.strictest() is D
    assert sql.strictest((D, P)) is D
    with pytest.raises(RuntimeError, match="two nested goals"):
        sql.strictest((P, D, C))


@on_databases
async def test_concurrent_writers_leave_one_legal_sequence(backend: str, tmp_path: Path) -> None:
    """Three instances writing what they saw, in any order: each change once, in order."""
    url = url_for(backend, tmp_path)
    seen = [N, E, P, D, C]
    async with open_journal(url) as j1, open_journal(url) as j2, open_journal(url) as j3:
        logs = [OrderLog(j) for j in (j1, j2, j3)]
        async with anyio.create_task_group() as tg:
            for i, log in enumerate(logs):
                for order_id in range(1, 6):
                    statuses = seen[i:] + seen[:i]  # each instance sees them in its own order
                    tg.start_soon(_write_all, log, order_id, statuses)
        changes = await logs[0].changes({i: 0 for i in range(1, 6)}, everything=True)
    for order_id in range(1, 6):
        mine = [c for c in changes if c.order_id == order_id]
        assert [c.version for c in mine] == list(range(1, len(mine) + 1))
        order = [c.status for c in mine]
        assert order == sorted(set(order), key=seen.index) and order[-1] is C
        assert [c.previous for c in mine[1:]] == order[:-1]


async def _write_all(log: OrderLog, order_id: int, statuses: list[Status]) -> None:
    for status in statuses:
        await log.record([note(order_id, status)])


async def test_a_late_commit_is_missed_by_a_sequence_cursor_not_by_per_order_versions() -> None:
    """The trap: T1 writes order 1's change first but commits last.  A reader that
    remembers the highest sequence number it saw skips it for good; the listener,
    woken by T1's commit and reading order 1 past its version, does not."""
    url = postgres_server().url()
    async with open_journal(url) as journal:
        log = OrderLog(journal)
        for order_id in (1, 2):
            await log.track(order_id, D, None)
        assert (await log.wait_for_news(0.01)).everything  # LISTENing from here on
        first, second = connect(url), connect(url)
        try:
            first.autocommit = second.autocommit = False
            sql.record(first, "postgresql", [note(1, P)], time.time(), log.channel)
            sql.record(second, "postgresql", [note(2, P)], time.time(), log.channel)
            second.commit()
            naive = second.execute("SELECT max(seq) FROM orderfsm_changes").fetchone()[0]
            first.commit()
            missed = second.execute(
                "SELECT order_id FROM orderfsm_changes WHERE seq > %s", (naive,)
            ).fetchall()
            second.commit()
        finally:
            first.close()
            second.close()
        heard: set[int] = set()
        with anyio.fail_after(5):
            while heard != {1, 2}:
                news = await log.wait_for_news(1.0)
                heard.update(news.order_ids or ())
        changes = await log.changes({1: 0, 2: 0}, everything=False)
    assert missed == []  # the sequence cursor lost order 1's change
    assert {(c.order_id, c.status) for c in changes} == {(1, P), (2, P)}


@pytest.mark.parametrize("write", ["record", "track_many"])
async def test_rows_are_locked_in_order_id_order_whatever_order_the_news_comes_in(
    write: str,
) -> None:
    """Two writers over the same orders, in opposite orders, would each hold one row and
    wait for the other's (PostgreSQL then fails one with a deadlock: seen in the fleet
    soak).  Held: order 1.  A writer of [2, 1] must wait for 1 before it takes 2."""
    url = postgres_server().url()
    async with open_journal(url) as journal:
        log = OrderLog(journal)
        for order_id in (1, 2):
            await log.track(order_id, D, None)
        channel = log.channel
    holder, writer, prober = connect(url), connect(url), connect(url)
    try:
        holder.autocommit = writer.autocommit = prober.autocommit = False
        holder.execute("SELECT 1 FROM orderfsm_orders WHERE order_id = 1 FOR UPDATE")

        def write_two_then_one() -> None:
            if write == "record":
                sql.record(writer, "postgresql", [note(2, P), note(1, P)], time.time())
            else:
                sql.track_many(
                    writer, "postgresql", [(2, D, None), (1, D, None)], time.time(), channel=channel
                )
            writer.commit()

        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, write_two_then_one)
            with anyio.fail_after(5):
                waiting = "SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted"
                pid = (writer.info.backend_pid,)
                while not holder.execute(waiting, pid).fetchone()[0]:  # noqa: ASYNC110 (in the database)
                    await anyio.sleep(0.01)  # the writer waits for order 1 now
            free = prober.execute(
                "SELECT order_id FROM orderfsm_orders WHERE order_id = 2 FOR UPDATE SKIP LOCKED"
            ).fetchall()
            prober.rollback()
            holder.rollback()  # the writer goes on
    finally:
        for db in (holder, writer, prober):
            db.close()
    assert free == [(2,)], "the writer took order 2 before order 1"


async def test_one_notify_per_transaction_and_none_when_nothing_changed() -> None:
    url = postgres_server().url()
    async with open_journal(url) as journal:
        log = OrderLog(journal)
        for order_id in (1, 2, 3):
            await log.track(order_id, D, None)
        await log.record([note(1, D)])
        assert (await log.wait_for_news(0.01)).everything
        await log.record([note(1, P)])  # stale: no write, no NOTIFY
        assert (await log.wait_for_news(0.3)).quiet
        await log.record([note(2, P), note(3, P), note(2, D)])
        news = await log.wait_for_news(2.0)
        assert sorted(news.order_ids or ()) == [2, 3]
        assert (await log.wait_for_news(0.3)).quiet  # one notification, not three
        changes = await log.changes({2: 0, 3: 0}, everything=True)
        rows = await log.orders([2, 3])
    # two changes of one order in one transaction: both written, the row at the last
    assert [(c.order_id, c.version, c.status, c.previous) for c in changes] == [
        (2, 1, P, None), (2, 2, D, P), (3, 1, P, None)
    ]  # fmt: skip
    assert [(rows[i].status, rows[i].version, rows[i].tracking) for i in (2, 3)] == [
        (D, 2, False), (P, 1, True)
    ]  # fmt: skip


async def test_the_listener_reads_the_announced_orders_it_follows_past_their_cursors() -> None:
    """The read that follows a NOTIFY is made on the listening connection with the
    wake-up: the announced orders that are followed, each past its own cursor."""
    url = postgres_server().url()
    async with open_journal(url) as journal:
        log = OrderLog(journal)
        for order_id in (1, 2, 3):
            await log.track(order_id, D, None)
        await log.record([note(1, P)])
        assert (await log.wait_for_news(0.01, {1: 0})).everything
        await log.record([note(1, D), note(2, P), note(3, P)])
        news = await log.wait_for_news(2.0, {1: 1, 2: 0})  # 3 is not followed here
        await log.record([note(3, D)])
        unfollowed = await log.wait_for_news(2.0, {1: 2})
        quiet = await log.wait_for_news(0.05, {1: 2, 2: 1, 3: 2})
    assert news.order_ids == (1, 2, 3)
    assert [(c.order_id, c.version, c.status, c.previous) for c in news.changes or ()] == [
        (1, 2, D, P), (2, 1, P, None)
    ]  # fmt: skip
    assert unfollowed.order_ids == (3,) and unfollowed.changes == []
    assert quiet.quiet and quiet.changes is None


async def listening(journal: Any) -> OrderLog:
    """A log following order 1, its listening connection made (a first wait reads all)."""
    log = OrderLog(journal)
    await log.track(1, D, None)
    assert (await log.wait_for_news(0.01, {1: 0})).everything
    return log


@pytest.mark.parametrize(("query", "idle"), [("", 5), ("keepalives_idle=7", 7)])
async def test_the_listening_connection_has_keepalives_ours_or_the_urls_own(
    query: str, idle: int
) -> None:
    """An idle LISTEN sends nothing: without keepalives a connection that died silently
    never fails (the kernel's default waits 2 hours).  Read from the kernel: ours, or
    the value the URL sets for itself."""
    url = postgres_server().url()
    if query:
        url += ("&" if "?" in url else "?") + query
    async with open_journal(url) as journal:
        listener = journal.store.listener()  # type: ignore[attr-defined]
        try:
            await listener.wait(0.01, None)  # the first wait connects
            with socket.socket(fileno=os.dup(listener.fileno())) as sock:
                got = [sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)] + [
                    sock.getsockopt(socket.IPPROTO_TCP, option)
                    for option in (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT)
                ]
        finally:
            listener.close()
    assert got == [1, idle, 2, 3]  # no fix: [1, 7200, 75, 9] (Linux's defaults)


async def test_a_listener_whose_connection_dies_says_so_then_catches_up() -> None:
    """The server ends the listening session (a restart, an administrator): the wait
    raises a typed error, and the next one reconnects and asks for a full read."""
    url = postgres_server().url()
    async with open_journal(url) as journal:
        log = await listening(journal)
        admin = connect(url)
        try:
            ended = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE query LIKE 'PREPARE orderfsm_changes_of%%' AND pid <> pg_backend_pid()"
            ).fetchall()
        finally:
            admin.close()
        assert ended == [(True,)]
        with pytest.raises(JournalUnavailable), anyio.fail_after(5):
            await log.wait_for_news(5.0, {1: 0})
        assert (await log.wait_for_news(0.01, {1: 0})).everything
        await log.record([note(1, P)])
        news = await log.wait_for_news(2.0, {1: 0})
    assert [c.status for c in news.changes or ()] == [P]


async def test_a_listener_read_stuck_behind_a_lock_gives_up_then_catches_up() -> None:
    """The read that follows a wake-up waits on the loop at most the journal's wait:
    then a typed error, and the next wait starts over on a new connection (its
    state after an abandoned read is unknown) asking for a full read."""
    url = postgres_server().url()
    async with open_journal(url, JournalSettings(wait=0.3)) as journal:
        log = await listening(journal)
        await log.record([note(1, P)])
        blocker = connect(url)
        try:
            blocker.autocommit = False
            blocker.execute("LOCK TABLE orderfsm_changes IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(JournalUnavailable), anyio.fail_after(5):
                await log.wait_for_news(2.0, {1: 0})
            waited = time.monotonic() - started
        finally:
            blocker.rollback()
            blocker.close()
        assert (await log.wait_for_news(0.01, {1: 0})).everything
        await log.record([note(1, D)])
        news = await log.wait_for_news(2.0, {1: 1})
    assert 0.3 <= waited < 2.0
    assert [c.status for c in news.changes or ()] == [D]


async def test_sqlite_wakes_another_process_on_commit(tmp_path: Path) -> None:
    url = url_for("sqlite", tmp_path)
    async with open_journal(url) as mine, open_journal(url) as theirs:
        watcher, writer = OrderLog(mine), OrderLog(theirs)
        await writer.track(5, D, None)
        assert (await watcher.wait_for_news(0.01)).everything
        assert (await watcher.wait_for_news(0.05)).quiet
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.record, [note(5, P)])
            news = await watcher.wait_for_news(5.0)
        assert not news.quiet and time.monotonic() - started < 1.0
        assert [c.status for c in await watcher.changes({5: 0}, everything=False)] == [P]


async def test_sqlite_reads_the_news_in_the_watching_thread(tmp_path: Path) -> None:
    """With cursors, the commit's changes come with the wake-up (read by the thread
    that saw ``data_version`` move), only those of the orders followed here."""
    url = url_for("sqlite", tmp_path)
    async with open_journal(url) as mine, open_journal(url) as theirs:
        watcher, writer = OrderLog(mine), OrderLog(theirs)
        for order_id in (5, 6):
            await writer.track(order_id, D, None)
        assert (await watcher.wait_for_news(0.01, {5: 0})).everything
        assert await watcher.changes({5: 0}, everything=True) == []  # the mark set
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.record, [note(5, P), note(6, P)])
            news = await watcher.wait_for_news(5.0, {5: 0})
        quiet = await watcher.wait_for_news(0.05, {5: 1})
    assert [(c.order_id, c.status) for c in news.changes or ()] == [(5, P)]
    assert quiet.quiet and quiet.changes is None


@on_databases
async def test_leases_one_owner_a_new_fence_on_takeover(backend: str, tmp_path: Path) -> None:
    url = url_for(backend, tmp_path)
    async with open_journal(url, owner="a") as ja, open_journal(url, owner="b") as jb:
        a, b = OrderLog(ja), OrderLog(jb)
        await a.track(1, D, None)
        await a.track(2, D, None)
        first = await a.lease([1, 2], 0.5)
        assert sorted(first) == [1, 2] and await b.lease([1, 2], 0.5) == {}
        assert await a.lease([1, 2], 0.5) == first  # a renewal keeps the fence
        await a.record([note(2, D)])  # settled: nobody needs to own it
        await anyio.sleep(0.6)
        taken = await b.lease([1, 2], 5.0)
        assert list(taken) == [1] and taken[1] == first[1] + 1
        assert await a.lease([1], 5.0) == {}
        await b.untrack([1])  # b gave up (its waiter left); a still follows the order
        again = await a.lease([1], 5.0)
        assert again == {1: taken[1] + 1}
        assert (await a.orders([1]))[1].tracking  # resumed after a restart, then


@on_databases
async def test_only_orders_whose_owner_is_gone_are_adopted(backend: str, tmp_path: Path) -> None:
    """A dies holding orders 1 and 2 (2 then settles by a webhook); 3 is A's too but was
    untracked; 4 was just tracked, its tracker's first lease on its way.  B, which
    follows none of them, adopts 1 alone, once its lease ran out, with a new fence;
    C, looking next, finds nothing."""
    url = url_for(backend, tmp_path)
    async with (
        open_journal(url, owner="a") as ja,
        open_journal(url, owner="b") as jb,
        open_journal(url, owner="c") as jc,
    ):
        a, b, c = OrderLog(ja), OrderLog(jb), OrderLog(jc)
        await a.track_many([(1, D, "p1"), (2, D, "p2"), (3, D, "p3")])
        held = await a.lease([1, 2, 3], 0.5)
        await a.untrack([3])
        assert await b.adopt(5.0, 10) == []  # A's leases are live
        await a.record([note(2, D)])
        await anyio.sleep(0.6)  # A's leases run out: it died
        await c.track(4, D, "p4")
        (adopted,) = await b.adopt(5.0, 10)
        assert (adopted.order_id, adopted.owner, adopted.fence) == (1, "b", held[1] + 1)
        assert (adopted.user_id, adopted.until, adopted.tracking) == ("p1", D, True)
        assert await c.adopt(5.0, 10) == []
        assert await a.lease([1], 5.0) == {}  # back from a hang: B owns it now


@on_databases
async def test_an_expired_orders_verdict_stands_as_its_owners_look_and_lease_say(
    backend: str, tmp_path: Path
) -> None:
    """What an instance that does not look reads at an expired order's grace's end
    (:func:`reads.lapse_verdicts`): judged once the lapse's claim is there (an instance
    settled it expired) or a change past ``expired`` (a look found the payment); its
    own while it holds a live lease itself (it took the order over); looking while
    another's lease is live; unowned once nobody's is (it ran out, was let go, or
    never was), its own let go included.  With the row's version."""
    url = url_for(backend, tmp_path)
    async with open_journal(url, owner="a") as ja, open_journal(url, owner="b") as jb:
        a, b = OrderLog(ja), OrderLog(jb)
        await a.track_many([(i, D, None) for i in (1, 2, 3, 4, 5)])
        await a.record([note(i, E) for i in (1, 2, 3, 4, 5)])
        await a.lease([2], 0.3)
        await a.lease([1, 3, 4], 30.0)
        await a.let_go([4])
        J, M, L, U = Lapse.JUDGED, Lapse.MINE, Lapse.LOOKING, Lapse.UNOWNED
        assert await b.lapse_verdicts([1, 3, 4, 5]) == {1: (L, 1), 3: (L, 1), 4: (U, 1), 5: (U, 1)}
        assert await a.lapse_verdicts([1, 4]) == {1: (M, 1), 4: (U, 1)}
        await SettledLog(a).owe_lapses([1])  # a judged 1's grace over
        await a.record([note(3, P)])  # a's look found 3 paid
        assert await b.lapse_verdicts([1, 3]) == {1: (J, 1), 3: (J, 2)}
        await anyio.sleep(0.4)  # a died holding 2
        assert await b.lapse_verdicts([2, 6]) == {2: (U, 1), 6: (J, 0)}  # 6: no row at all


@on_databases
async def test_adoption_takes_a_bounded_page_oldest_lease_first(
    backend: str, tmp_path: Path
) -> None:
    url = url_for(backend, tmp_path)
    async with open_journal(url, owner="a") as ja, open_journal(url, owner="b") as jb:
        a, b = OrderLog(ja), OrderLog(jb)
        await a.track_many([(i, D, None) for i in range(1, 8)])
        for order_id in (5, 3, 7, 1, 2, 4, 6):  # the leases run out in this order
            await a.lease([order_id], 0.2)
        await anyio.sleep(0.3)
        pages = [sorted(r.order_id for r in await b.adopt(5.0, 3)) for _ in range(4)]
    assert pages == [[3, 5, 7], [1, 2, 4], [6], []]


NOW = 1000.0
"""The clock of the row-by-row tests."""

order_rows = st.builds(
    lambda owner, status, tracking, lease_left, tracked_ago: OrderRow(
        9,
        status,
        1,
        D,
        "p",
        tracking,
        owner,
        LET_GO if lease_left is None else NOW + lease_left,  # None: a lease let go
        3,
        None if tracked_ago is None else NOW - tracked_ago,
    ),
    st.sampled_from([None, "a", "b"]),
    st.sampled_from([None, *Status]),
    st.booleans(),
    st.one_of(st.none(), st.floats(-10, 10)),
    st.one_of(st.none(), st.floats(0, 60)),
)
"""Order 9's row, as any instance may have left it."""


@given(
    row=order_rows,
    asker=st.sampled_from(["a", "b"]),
    passed=st.lists(st.sampled_from([1, 9, 19, 90, 99]), max_size=3),
)
@settings(max_examples=200)
def test_the_sql_adoption_is_the_pure_decision(
    row: OrderRow, asker: str, passed: list[int]
) -> None:
    """Row by row, the adopting UPDATE takes exactly the orders ``adoptable`` allows,
    and leaves each as ``leased`` says (owner, fence, lease); ids that contain 9's
    digits but are not 9 do not pass it by."""
    db = _orders_table()
    lease = 30.0
    _insert(db, row)
    taken = leases.adopt(db, "sqlite", asker, NOW, lease, 10, passed)
    if adoptable(row, NOW, lease, asker, passed):
        assert taken == [leased(row, asker, NOW, lease)]
    else:
        assert taken == []
        assert reads.orders(db, "sqlite", [9]) == {9: row}


@given(row=order_rows, asker=st.sampled_from(["a", "b"]))
@settings(max_examples=200)
def test_the_sql_let_go_is_the_pure_decision(row: OrderRow, asker: str) -> None:
    """Row by row, the UPDATE of an instance handing orders over leaves each as
    ``let_go`` says."""
    db = _orders_table()
    _insert(db, row)
    leases.let_go(db, "sqlite", [9], asker, NOW)
    assert reads.orders(db, "sqlite", [9]) == {9: let_go(row, asker, NOW)}


def test_an_order_let_go_is_for_any_instance_to_take_but_not_its_owners_adopter() -> None:
    """A lease let go is over at once: another instance takes it by its renewal or its
    adopter, with a new fence; the owner's own adopter passes it by (it cannot follow
    the order: taking it back each time kept it from one that can), though the owner
    may lease it again (it can follow it again: a new socket).  An order another
    instance's give-up unmarked is marked tracked, so adopters still find it."""
    now, lease = 1000.0, 30.0
    held = leased(OrderRow(9, N, 1, D, "p", True, None, 0.0, 3, now - 60), "a", now, lease)
    gone = let_go(held, "a", now)
    assert (gone.owner, gone.lease_until, gone.fence, gone.tracking) == ("a", LET_GO, 4, True)
    assert adoptable(gone, now, lease, "b") and may_lease(gone, "b", now)
    assert leased(gone, "b", now, lease).fence == 5
    assert not adoptable(gone, now, lease, "a")
    assert may_lease(gone, "a", now)
    unmarked = attrs.evolve(held, owner=None, lease_until=0.0, tracking=False)
    assert let_go(unmarked, "a", now + 1) == attrs.evolve(
        unmarked, tracking=True, tracked_at=now + 1
    )
    assert not adoptable(let_go(unmarked, "a", now + 1), now + 1, lease, "b")  # a lease later
    assert adoptable(let_go(unmarked, "a", now + 1), now + 1 + lease, lease, "b")
    settled = attrs.evolve(unmarked, status=D)
    assert let_go(settled, "a", now) == settled


@on_databases
async def test_an_order_let_go_is_adopted_by_another_and_by_its_owner_after_a_restart(
    backend: str, tmp_path: Path
) -> None:
    """A lets go of order 1 (it cannot follow it any more): A's adopter passes it by, B's
    takes it at once, unless B passes it by too (it tracks it and cannot follow it).
    A lets go of order 2 and restarts: its new life takes it back (a new socket may
    follow it)."""
    url = url_for(backend, tmp_path)
    async with open_journal(url, owner="a") as ja, open_journal(url, owner="b") as jb:
        a, b = OrderLog(ja), OrderLog(jb)
        await a.track_many([(1, D, "p1"), (2, D, "p2")])
        held = await a.lease([1, 2], 30.0)
        await a.let_go([1])
        assert await a.adopt(30.0, 10) == []
        assert await b.adopt(30.0, 10, [1, 11]) == []  # one B tracks and cannot follow
        (taken,) = await b.adopt(30.0, 10, [11])
        assert (taken.order_id, taken.owner, taken.fence) == (1, "b", held[1] + 1)
        await a.let_go([2])
        assert await a.adopt(30.0, 10) == []
        await a.release()
        (back,) = await a.adopt(30.0, 10)
        assert (back.order_id, back.owner, back.fence) == (2, "a", held[2] + 1)


@on_databases
async def test_a_restart_frees_its_own_leases_at_once_and_no_others(
    backend: str, tmp_path: Path
) -> None:
    """A holds orders 1 and 2 and dies (its leases still live); B holds 3, alive.  A
    starting again under its name ends its previous life's leases, so 1 and 2 are
    adoptable at once, with a new fence; B's is not, nor A's before the restart."""
    url = url_for(backend, tmp_path)
    async with open_journal(url, owner="a") as ja, open_journal(url, owner="b") as jb:
        a, b = OrderLog(ja), OrderLog(jb)
        await a.track_many([(1, D, "p1"), (2, D, "p2")])
        await b.track(3, D, "p3")
        held = await a.lease([1, 2], 30.0)
        await b.lease([3], 30.0)
        assert await OrderLog(ja, owner="c").adopt(30.0, 10) == []
        await a.release()
        taken = await a.adopt(30.0, 10)
        assert sorted((r.order_id, r.owner, r.fence) for r in taken) == [
            (1, "a", held[1] + 1),
            (2, "a", held[2] + 1),
        ]
        assert await a.adopt(30.0, 10) == []  # taken back once; B's still B's
        assert (await b.orders([3]))[3].owner == "b"


@given(
    steps=st.lists(
        st.tuples(
            st.floats(0, 20),
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(["adopt", "renew", "untrack", "track"]),
        ),
        max_size=30,
    )
)
@settings(max_examples=200)
def test_an_order_is_adopted_once_per_lease_and_never_from_a_live_owner(
    steps: list[tuple[float, str, str]],
) -> None:
    """Instances adopt, renew, give up and track one order at random times: an adoption
    always finds the order's lease run out, so two adoptions are a lease apart at least,
    the order has one owner at a time, and another's give-up leaves a live owner's
    order marked tracked."""
    db = _orders_table()
    now, lease = 1000.0, 10.0
    sql.track(db, "sqlite", 9, D, "p", now, channel=sql.CHANNEL)
    adopted: list[float] = []
    for pause, who, action in steps:
        now += pause
        before = reads.orders(db, "sqlite", [9])[9]
        if action == "adopt":
            if leases.adopt(db, "sqlite", who, now, lease, 10):
                assert before.lease_until <= now and before.tracking
                adopted.append(now)
        elif action == "renew":
            leases.lease(db, "sqlite", [9], who, now, lease)
        elif action == "untrack":
            leases.untrack(db, "sqlite", [9], who, now)
        else:
            sql.track(db, "sqlite", 9, D, "p", now, channel=sql.CHANNEL)
        after = reads.orders(db, "sqlite", [9])[9]
        live = before.lease_until > now and before.owner is not None
        if live and after.owner != before.owner:
            assert after.owner is None  # only its owner gives a live lease up
        if live and action == "untrack" and who != before.owner:
            assert after.tracking == before.tracking  # its owner still follows it
    assert all(later - earlier >= lease for earlier, later in itertools.pairwise(adopted))


def _orders_table() -> Any:
    import sqlite3

    from transports.journal.sql_schema import migrations

    db = sqlite3.connect(":memory:", isolation_level=None)
    for step in migrations("sqlite").values():
        for statement in step:
            db.execute(statement)
    return db


def _insert(db: Any, row: OrderRow) -> None:
    db.execute(
        "INSERT INTO orderfsm_orders (order_id, status, version, until, user_id, tracking,"
        " tracked_at, owner, lease_until, fence, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?,"
        " ?, ?, 0)",
        (
            row.order_id,
            None if row.status is None else row.status.value,
            row.version,
            row.until.value,
            row.user_id,
            row.tracking,
            row.tracked_at,
            row.owner,
            row.lease_until,
            row.fence,
        ),
    )


@given(
    owner=st.sampled_from([None, "a", "b"]),
    status=st.sampled_from([None, *Status]),
    tracking=st.booleans(),
    lease_left=st.floats(-10, 10),
    asker=st.sampled_from(["a", "b"]),
)
@settings(max_examples=200)
def test_the_sql_lease_is_the_pure_decision(
    owner: str | None, status: Status | None, tracking: bool, lease_left: float, asker: str
) -> None:
    """Row by row, the UPDATE takes exactly the leases ``may_lease`` allows, with its fence."""
    import sqlite3

    from transports.journal.sql_schema import migrations

    db = sqlite3.connect(":memory:", isolation_level=None)
    for step in migrations("sqlite").values():
        for statement in step:
            db.execute(statement)
    now = 1000.0
    row = OrderRow(9, status, 1, D, None, tracking, owner, now + lease_left, 3)
    db.execute(
        "INSERT INTO orderfsm_orders (order_id, status, version, until, tracking, owner,"
        " lease_until, fence, updated_at) VALUES (9, ?, 1, 'done', ?, ?, ?, 3, 0)",
        (None if status is None else status.value, tracking, owner, now + lease_left),
    )
    held = leases.lease(db, "sqlite", [9], asker, now, 30.0)
    if may_lease(row, asker, now):
        assert held == {9: leased(row, asker, now, 30.0).fence}
    else:
        assert held == {}
    expected = leased(row, asker, now, 30.0) if held else row
    after = db.execute("SELECT tracking, owner FROM orderfsm_orders WHERE order_id = 9").fetchone()
    assert (bool(after[0]), after[1]) == (expected.tracking, expected.owner)


async def test_a_claim_that_writes_an_order_change_commits_durably() -> None:
    """A webhook's claim commits without waiting for the disk, and its order's change
    is written in the same transaction.  Trackers see the change at commit (the
    NOTIFY, their reads) and move their cursor past its version; a database crash
    before the log's flush would lose it, and the order's next change would take the
    same version, skipped by every such tracker for good.  So the change turns the
    durable commit back on for its transaction, and news that changes nothing does
    not."""
    url = postgres_server().url()
    async with open_journal(url) as journal:
        await OrderLog(journal).track(71, D, None)
    db = connect(url)
    try:
        for status, durable in ((P, "on"), (P, "off")):  # the second is a repeat
            db.execute("BEGIN")
            db.execute("SET LOCAL synchronous_commit = off")  # as the claim asks
            sql.record(db, "postgresql", [note(71, status)], time.time())
            assert db.execute("SHOW synchronous_commit").fetchone() == (durable,)
            db.execute("COMMIT")
    finally:
        db.close()


@on_databases
async def test_a_transactional_handler_that_refuses_or_fails_keeps_the_order_status(
    backend: str, tmp_path: Path
) -> None:
    """The delivery's status is a fact whatever the app makes of it.  A plain handler's
    claim commits it before the handler runs; a transactional handler's used to be
    written inside the handler's savepoint and rolled back with it: a refused refund
    (a 400, which Xsolla never retries) never reached the trackers or ``on_settled``.
    Order 73 is tracked before its webhooks (the claims write its changes), 74 after
    them (its first track reads them from the deliveries, kept whatever the answer)."""
    url = url_for(backend, tmp_path)

    def handler(notification: Any, connection: Any) -> None:
        if notification.notification_type == "order_canceled":
            raise WebhookError("this app refuses the refund")
        raise RuntimeError("the app's own table is missing")  # order_paid: a 5xx

    async with open_journal(url) as journal:
        log = OrderLog(journal)
        await log.track(73, P, None)
        receiver = WebhookReceiver(SECRET, store=journal, transactional=handler)
        answers = []
        for order_id in (73, 74):
            for body in (order_paid(order_id), order_paid(order_id, kind="order_canceled")):
                answers.append((await receiver.handle(signed(body), body)).status)
        await log.track(74, P, None)
        changes = await log.changes({73: 0, 74: 0}, everything=True)
    assert answers == [500, 400] * 2
    assert [(c.order_id, c.version, c.status, c.source) for c in changes] == [
        (o, v, s, "webhook") for o in (73, 74) for v, s in ((1, P), (2, C))
    ]


@on_databases
async def test_the_first_transactional_delivery_of_a_process_wakes_the_fleet_at_once(
    backend: str, tmp_path: Path
) -> None:
    """A receiver given its journal as a URL opens it on its first delivery.  Its
    transactional handler's unit of work read the PostgreSQL channel before that: the
    default one, not the schema's, so the order's status went out where no tracker
    listens, and trackers elsewhere learnt it at their backstop read, 3 s later.  A
    tracker's follower on another connection hears it at once."""
    url = url_for(backend, tmp_path)
    async with open_journal(url) as elsewhere:
        log = OrderLog(elsewhere)
        await log.track(75, D, None)
        assert (await log.wait_for_news(0.01, {75: 0})).everything  # listening from now
        receiver = WebhookReceiver(SECRET, transactional=lambda n, c: None, store=url)
        try:
            async with serve_receiver(receiver, "asgi") as served, open_http_client() as http:
                body = order_paid(75)
                answer = await http.request("POST", served, signed(body), body, timeout=10)
            heard = await woken_by(log, 75, within=1.0)  # a third of the backstop
        finally:
            await receiver.aclose()
    assert answer.status == 204
    assert [(c.order_id, c.status) for c in heard] == [(75, P)]


async def woken_by(log: OrderLog, order_id: int, within: float) -> list[Any]:
    """The order's changes as a follower learns them from wake-ups alone in ``within`` s
    (a PostgreSQL NOTIFY naming it, a SQLite commit: any, so read on until it shows)."""
    with anyio.move_on_after(within):
        while True:
            news = await log.wait_for_news(within, {order_id: 0})
            if news.quiet:
                break
            changes = news.changes
            if changes is None:
                changes = await log.changes({order_id: 0}, everything=True)
            if changes:
                return changes
    return []


async def test_a_notification_that_is_not_ours_reads_everything_instead_of_failing() -> None:
    """``NOTIFY`` on the fleet's channel by hand (an operator's ``'refresh'``), or by
    another version of the library: its payload is no list of order ids.  Reading
    it as one raised ``ValueError`` out of the follower and ended the whole tracker."""
    url = postgres_server().url()
    async with open_journal(url) as journal:
        log = await listening(journal)
        admin = connect(url)
        try:
            for payload in ("refresh", "1," + "9" * 5000):
                admin.execute("SELECT pg_notify(%s, %s)", (log.channel, payload))
                news = await log.wait_for_news(2.0, {1: 0})
                assert news.everything, payload[:10]
        finally:
            admin.close()


async def test_changes_arrive_through_the_backstop_while_the_listener_keeps_dying(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every listening connection is ended as soon as it is seen (pg_terminate_backend):
    a change still reaches the tracker, through the backstop read; the outage is logged
    once, and the reconnects back off (a reconnect that is ended at once is no recovery:
    about 7 in 7 s, not one every few milliseconds)."""
    url = postgres_server().url()
    caplog.set_level(logging.INFO, logger="orderfsm.fleet")
    ended = 0
    admin = connect(url)

    def terminate() -> int:
        return len(
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE query LIKE 'PREPARE orderfsm_changes_of%%' AND pid <> pg_backend_pid()"
            ).fetchall()
        )

    async def kill_listeners(stop: anyio.Event) -> None:
        nonlocal ended
        while not stop.is_set():
            ended += await anyio.to_thread.run_sync(terminate)
            with anyio.move_on_after(0.01):  # the fault's cadence, not a wait for a result
                await stop.wait()

    try:
        async with (
            Tracker(
                project_id=1, journal=url, transports=("journal",), fetch_details=False,
                until="paid",
            ) as tracker,
            anyio.create_task_group() as tg,
        ):  # fmt: skip
            tracker.track(1)
            stop = anyio.Event()
            tg.start_soon(kill_listeners, stop)
            await eventually(lambda: ended >= 2, timeout=10)
            start, before = anyio.current_time(), ended
            async with open_journal(url) as receivers:
                await OrderLog(receivers).record([note(1, P)])
            await eventually(lambda: tracker.status(1) is P, timeout=10)
            await eventually(lambda: anyio.current_time() > start + 7, timeout=10)
            reconnects = ended - before
            stop.set()
    finally:
        admin.close()
    outages = [r for r in caplog.records if "wake-ups unavailable" in r.getMessage()]
    assert len(outages) == 1, [r.getMessage() for r in outages]
    assert 2 <= reconnects <= 10, reconnects  # no fix: one per kill, about every 0.1 s


async def test_a_read_everything_wake_up_is_not_swallowed_by_a_later_one() -> None:
    """A transaction whose order ids do not fit a NOTIFY (past ``NOTIFY_LIMIT``) sends
    an empty payload: "read everything".  A notification naming orders that comes
    before the wait ends must not replace it: the wait read only the second one's
    orders, and order 1's change waited for a quiet backstop read, which steady
    traffic never leaves."""
    url = postgres_server().url()
    many = [10**18 + i for i in range(sql.NOTIFY_LIMIT // 19)]  # 19 digits and a comma each
    async with open_journal(url) as journal:
        log = await listening(journal)
        writer = OrderLog(journal)
        await writer.track(2, D, None)
        heard: list[Any] = []

        async def wait() -> None:
            heard.append(await log.wait_for_news(5.0, {1: 0, 2: 0}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await anyio.sleep(0.2)  # the wait is under way
            await writer.record([note(1, P), *(note(i, P) for i in many)])
            await anyio.sleep(0.2)  # heard alone, before the next one
            await writer.record([note(2, P)])
    (news,) = heard
    assert news.everything, news  # no fix: News(order_ids=(2,), ...): order 1 not read


async def test_an_order_whose_news_comes_before_its_past_is_read_sees_its_past_first(
    tmp_path: Path,
) -> None:
    """SQLite's wake-up reads what was committed since the last read, for every order
    followed, also one just tracked whose past (written before its track) is still
    to be read by the track's catch-up.  Applied there, its news jumped the order's
    cursor past its past, which the catch-up then never read: a waiter saw ``done``
    and never the ``paid`` before it (the write lock held here stands for the other
    processes' writes a track waits behind, or its writer's own earlier batches)."""
    url = url_for("sqlite", tmp_path)
    holder = connect(url)
    try:
        async with open_journal(url) as theirs:
            await OrderLog(theirs).record([note(7, P)])  # before anyone tracks it
        async with Tracker(
            project_id=1, journal=url, transports=("journal",), fetch_details=False
        ) as tracker:
            tracker.track(8)  # something followed: its reads go on from a mark
            await anyio.sleep(0.3)
            holder.execute("BEGIN IMMEDIATE")  # its writer's track of order 7 waits
            tracker.track(7)
            await anyio.sleep(0.3)
            sql.record(holder, "sqlite", [note(7, D)], time.time())
            holder.execute("COMMIT")
            holder.execute("BEGIN IMMEDIATE")  # at once: the writer waits on
            await anyio.sleep(0.3)  # the wake-up has read the commit
            holder.execute("ROLLBACK")
            with anyio.fail_after(10):
                seen = [change.status async for change in tracker.watch(7)]
    finally:
        holder.close()
    assert seen == [P, D]  # no fix: [D]


async def test_a_hole_in_an_orders_log_is_read_past_not_caught_up_forever(
    tmp_path: Path,
) -> None:
    """News past a hole in an order's versions waits for the order's catch-up; but a
    catch-up reads the log itself, so a hole there (rows deleted by hand, a restored
    backup) is gone for good: what follows it is applied, not caught up again in a
    loop that never lets the order hear anything."""
    url = url_for("sqlite", tmp_path)
    async with open_journal(url) as theirs:
        await OrderLog(theirs).record([note(9, P)])
        await OrderLog(theirs).record([note(9, D)])
    holder = connect(url)
    try:
        holder.execute("DELETE FROM orderfsm_changes WHERE order_id = 9 AND version = 1")
        holder.commit()
    finally:
        holder.close()
    async with Tracker(
        project_id=1, journal=url, transports=("journal",), fetch_details=False
    ) as tracker:
        tracker.track(9)
        with anyio.fail_after(10):
            seen = [change.status async for change in tracker.watch(9)]
    assert seen == [D]  # before: nothing, the catch-up queued again and again


async def test_the_backstop_read_comes_while_wake_ups_keep_coming() -> None:
    """A change no wake-up told of (its NOTIFY went to another channel here: a tool
    writing by hand, a bug) is read by the backstop, which comes under steady
    traffic too (every ``busy_backstop`` s: 1 s here, 30 s by default).  It came only
    after a quiet spell with no wake-up at all, so under steady traffic for other
    orders (a wake-up every 0.3 s here) it never came."""
    url = postgres_server().url()
    async with (
        Tracker(
            project_id=1, journal=url, transports=("journal",), fetch_details=False,
            until="paid",
        ) as tracker,
        open_journal(url) as others,
        anyio.create_task_group() as tg,
    ):  # fmt: skip
        assert tracker.fleet is not None
        tracker.fleet.busy_backstop = 1.0
        tracker.track(1)
        tracker.track(2)
        log = OrderLog(others)

        async def steady() -> None:
            for order_id in itertools.count(1000):
                await log.record([note(order_id, Status.NEW)])
                tracker.track(order_id)  # followed here: each wake-up names one of ours
                await anyio.sleep(0.3)

        tg.start_soon(steady)
        await anyio.sleep(0.5)
        db = connect(url)
        try:
            sql.record(db, "postgresql", [note(1, P)], time.time(), "not_our_channel")
        finally:
            db.close()
        await eventually(lambda: tracker.status(1) is P, timeout=5)
        tg.cancel_scope.cancel()
