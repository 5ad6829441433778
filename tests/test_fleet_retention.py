"""The retention of the fleet tracker's change log (``orderfsm_changes``) on SQLite and
PostgreSQL: what the journal's prune deletes, what it keeps whatever its age, and that
what reads the log still holds after it: the ``on_settled`` sweep, and a follower that
was away longer than the retention.

Changes are written as instances write them (``OrderLog.record``), their time set in
the past (``Note.at``) rather than waited for; the prune is the journal's own.
"""

from __future__ import annotations

import functools
import itertools
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anyio
import attrs
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from hypothesis import given, settings
from hypothesis import strategies as st
from support_journal import connect, is_postgres, mark, on_databases, url_for

from orderfsm import Status
from orderfsm.journal import DAY, JournalSettings
from orderfsm.journal.orders import (
    ChangeRow,
    RowMark,
    advance,
    change_prunable,
    later_in_journal,
    mark_for_goal,
    settled_key,
    told_for_good,
)
from orderfsm.supervisor.fleet import Settled
from orderfsm.supervisor.tracker import Tracker
from orderfsm.testing import eventually
from transports.journal import SyncJournal, change_prune, open_journal, store_for
from transports.journal import orders as sql
from transports.journal.order_log import OrderLog
from transports.journal.orders import Note
from transports.journal.settled_log import SettledLog

P, D, N, E, C = Status.PAID, Status.DONE, Status.NEW, Status.EXPIRED, Status.CANCELED
RETENTION = JournalSettings().retention
TESTS = Path(__file__).resolve().parent
CODE = os.pathsep.join([str(TESTS), str(TESTS.parent)])
"""The app process's imports: the tests' helpers, and this checkout's code."""


def sync_journal(url: str) -> SyncJournal:
    settings = JournalSettings(wait=1.0)
    journal = SyncJournal(store_for(url, settings), settings)
    journal.open()
    return journal


def left(url: str) -> set[tuple[int, int]]:
    """(order id, version) of every change in the log."""
    db = connect(url)
    try:
        rows = db.execute("SELECT order_id, version FROM orderfsm_changes").fetchall()
        return {(int(order_id), int(version)) for order_id, version in rows}
    finally:
        db.close()


def last_seq(url: str) -> int:
    db = connect(url)
    try:
        return int(db.execute("SELECT max(seq) FROM orderfsm_changes").fetchone()[0])
    finally:
        db.close()


def answer_claim(url: str, key: str) -> None:
    """An ``on_settled`` call recorded (its claim answered), as an instance records it."""
    m = mark(url)
    db = connect(url)
    try:
        db.execute(
            "INSERT INTO orderfsm_claims (key, attempt, state, owner, lease_until, claimed_at,"
            f" answered_at, status) VALUES ({m}, 1, 'answered', 'gone', 0, {m}, {m}, 204)",
            (key, time.time(), time.time()),
        )
    finally:
        db.close()


# --- the decision and its SQL -------------------------------------------------------------


def test_a_change_goes_once_old_unless_it_is_its_orders_latest_or_a_call_still_owed() -> None:
    cutoff, old = 1000.0, 10.0
    new = ChangeRow(1, 1, N, None, "webhook", old)
    paid = ChangeRow(1, 2, P, N, "webhook", old)  # calls on_settled for the goal paid
    done = ChangeRow(1, 3, D, P, "webhook", old)  # calls it for the goal done
    assert change_prunable(new, cutoff, latest=3, tracked=True, told=0)
    assert not change_prunable(attrs.evolve(new, at=cutoff), cutoff, 3, True, 0)  # not old
    assert not change_prunable(done, cutoff, latest=3, tracked=False, told=3)  # the latest
    assert not change_prunable(paid, cutoff, latest=3, tracked=True, told=1)  # owed
    assert change_prunable(paid, cutoff, latest=3, tracked=True, told=2)  # told
    assert change_prunable(paid, cutoff, latest=3, tracked=False, told=0)  # nobody's to tell
    # Owed for the goal done only: kept whatever goal the row has now, which can move.
    assert not change_prunable(done, cutoff, latest=4, tracked=True, told=2)


def test_a_call_the_retention_pruned_the_claim_of_is_known_made_by_its_orders_mark() -> None:
    """The row's mark (never pruned) answers for a change read from the journal: made up
    to the mark, for the goal the mark was judged for; not past it, nor for another
    goal (a mark judged for ``done`` passes the payment, which calls only for ``paid``)."""
    row = RowMark(told=3, goal=D, status=D, version=3)
    assert told_for_good(row, D, D, version=2)
    assert told_for_good(attrs.evolve(row, goal=P), P, P, version=3)
    assert not told_for_good(row, C, D, version=4)
    assert not told_for_good(row, P, P, version=2)


def test_news_heard_from_xsolla_is_known_called_when_the_row_holds_it_told() -> None:
    """News heard from Xsolla has no journal version.  Its call was made when the row
    holds the news (its status, or one past it) and no change past the mark makes the
    same call; or the news never reached the journal, past a refund made or owed (a
    grant after it would never be revoked).  Not for news the row does not hold (its
    write refused), a lapse (no change: the mark passes it called or not), another
    goal, or a row whose past the retention pruned (nobody tracked it)."""
    delivered = RowMark(told=2, goal=D, status=D, version=2)
    assert told_for_good(delivered, D, D, None)
    assert not told_for_good(delivered, D, P, None)  # another goal's call
    assert not told_for_good(delivered, C, D, None)  # a refund the row does not hold
    assert not told_for_good(attrs.evolve(delivered, status=P, version=1, told=1), D, D, None)
    owed = RowMark(told=1, goal=D, status=D, version=2, above=((2, D, P),))
    assert not told_for_good(owed, D, D, None)
    # For the goal paid, paid and done are one settlement: done written past the mark
    # calls nothing (the payment's call was made at or below it).
    paid = RowMark(told=1, goal=P, status=D, version=2, above=((2, D, P),))
    assert told_for_good(paid, D, P, None)
    assert told_for_good(paid, P, P, None)
    # Done heard just before a refund: made below the mark, or never in the journal.
    after = RowMark(told=2, goal=D, status=C, version=3, above=((3, C, D),))
    assert told_for_good(after, D, D, None)  # made at 2, the refund still owed
    never = RowMark(told=2, goal=D, status=C, version=2)  # paid, refunded, both told
    assert told_for_good(never, D, D, None)  # a grant now would follow the refund
    owed_refund = RowMark(told=1, goal=D, status=C, version=2, above=((2, C, P),))
    assert told_for_good(owed_refund, D, D, None)  # so would it the refund owed
    untracked = RowMark(told=0, goal=P, status=C, version=2, above=((2, C, P),))
    assert not told_for_good(untracked, P, P, None)  # the payment's change pruned
    lapsed = RowMark(told=2, goal=D, status=E, version=2)
    assert not told_for_good(lapsed, E, D, None)
    assert not told_for_good(attrs.evolve(lapsed, status=None, version=0, told=0), D, D, None)


def test_a_change_past_the_mark_is_later_when_the_journal_holds_a_settlement_before_it() -> None:
    """The ``later`` of news heard from Xsolla, as the journal says it: the change past
    the mark that makes the same call has a settlement before it."""
    refund = RowMark(told=2, goal=D, status=C, version=3, above=((3, C, D),))
    assert later_in_journal(refund, C, D)
    assert not later_in_journal(attrs.evolve(refund, above=((3, C, P),)), C, D)  # undelivered
    assert later_in_journal(attrs.evolve(refund, above=((3, C, P),), goal=P), C, P)
    assert not later_in_journal(refund, D, D)  # no change past the mark makes that call
    assert not later_in_journal(RowMark(told=0, goal=D, status=D, version=2), D, D)


def test_a_goal_raised_owes_no_grant_before_a_refund_owed_or_made() -> None:
    """Paid, done, refunded; the ``paid`` goal's calls: the payment's made, so its mark
    passed the delivery.  Raised to ``done``: the delivery's call is owed only when no
    refund comes after it, made or still being retried (its claim released between
    tries): a grant made then might come after the refund, never revoked.  The refund
    stays owed until made.  Made months ago, its claim pruned, the old mark says so."""
    history = [ChangeRow(1, 1, P, None, "t", 0.0), ChangeRow(1, 2, D, P, "t", 0.0)]
    refunded = [*history, ChangeRow(1, 3, C, D, "t", 0.0)]
    assert mark_for_goal(2, history, D, {P}, P) == 1  # the delivery's call owed
    assert mark_for_goal(2, refunded, D, {P}, P) == 2  # the refund owed, no grant
    assert mark_for_goal(2, refunded, D, {P, C}, P) == 2  # the refund made, no grant
    assert mark_for_goal(3, refunded, D, set(), P) == 3  # made long ago, claims pruned


ADVANCES = [(p, s) for p in (None, *Status) for s in Status if advance(p, s) is not None]
CUTOFF = 1_000_000.0
NOW = CUTOFF + 100.0


@st.composite
def staged(draw: st.DrawFn) -> tuple[ChangeRow, int, bool, int]:
    """A change and its order's row: (change, latest version, tracked, settled_told)."""
    latest = draw(st.integers(1, 4))
    previous, status = draw(st.sampled_from(ADVANCES))
    # Before the cutoff, at it, after it, and past the prune's own clock.
    at = draw(st.sampled_from([CUTOFF - 1.0, CUTOFF, CUTOFF + 1.0, NOW + 1.0]))
    change = ChangeRow(0, draw(st.integers(1, latest)), status, previous, "test", at)
    return change, latest, draw(st.booleans()), draw(st.integers(0, latest))


@on_databases
def test_the_sql_prunes_a_change_exactly_when_the_pure_decision_says(
    backend: str, tmp_path: Path
) -> None:
    url = url_for(backend, tmp_path)
    journal = sync_journal(url)
    db = connect(url)
    m = mark(url)
    ids = itertools.count(1)

    @settings(max_examples=80)
    @given(case=staged())
    def agree(case: tuple[ChangeRow, int, bool, int]) -> None:
        change, latest, tracked, told = case
        change = attrs.evolve(change, order_id=next(ids))
        db.execute(
            "INSERT INTO orderfsm_orders (order_id, status, version, until, tracking,"
            " tracked_at, lease_until, fence, updated_at, settled_told)"
            f" VALUES ({m}, 'paid', {m}, 'paid', {m}, {m}, 0, 0, 0, {m})",
            (change.order_id, latest, False, 1.0 if tracked else None, told),
        )
        db.execute(
            "INSERT INTO orderfsm_changes (order_id, version, status, previous, source, at)"
            f" VALUES ({m}, {m}, {m}, {m}, 'test', {m})",
            (change.order_id, change.version, change.status.value,
             None if change.previous is None else change.previous.value, change.at),
        )  # fmt: skip
        seq = last_seq(url)
        work = functools.partial(
            change_prune.prune_chunk, dialect=journal.store.kind, after=seq - 1,
            cutoff=CUTOFF, now=NOW, size=1,
        )  # fmt: skip
        journal.store.write(work, time.monotonic() + 5)  # type: ignore[attr-defined]
        gone = not db.execute(f"SELECT 1 FROM orderfsm_changes WHERE seq = {seq}").fetchall()
        assert gone == change_prunable(change, CUTOFF, latest, tracked, told)

    try:
        agree()
    finally:
        db.close()
        journal.close()


@on_databases
def test_a_prune_reads_past_the_changes_it_keeps_and_stops_at_the_first_young_one(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two changes a transaction here.  The changes kept (each order's latest) fill whole
    chunks before the first the prune may delete: the pass goes on past them.  It stops
    at the first change younger than the retention (one written late, behind it, goes
    at a later prune); a change from a clock far ahead does not stop it.  The log's
    last change stays: SQLite would give its ``seq`` again, behind followers' marks."""
    monkeypatch.setattr(change_prune, "PRUNE_CHUNK", 2)
    url = url_for(backend, tmp_path)
    now = time.time()
    old = now - RETENTION - DAY
    journal = sync_journal(url)

    def write(*notes: tuple[int, Status, float]) -> None:
        work = functools.partial(
            sql.record, dialect=journal.store.kind,
            notes=[Note(o, s, "webhook", at) for o, s, at in notes], now=now,
        )  # fmt: skip
        journal.store.write(work, time.monotonic() + 5)  # type: ignore[attr-defined]

    try:
        write((1, P, old), (2, P, old), (3, P, old))  # each its order's only change
        write((4, N, old), (4, P, old))
        write((5, N, now + 3 * RETENTION))  # a clock far ahead
        write((6, N, old), (6, P, old))
        write((7, N, now - 60))  # the first young change
        write((8, N, old), (8, P, old))  # written late, behind it
        last = last_seq(url)
        assert journal.prune().changes == 2
        kept = {(1, 1), (2, 1), (3, 1), (4, 2), (5, 1), (6, 2), (7, 1), (8, 1), (8, 2)}
        assert left(url) == kept
        journal.clock = lambda: time.time() + RETENTION  # order 7's change is old now
        assert journal.prune().changes == 1
        assert left(url) == kept - {(8, 1)}
        assert last_seq(url) == last
    finally:
        journal.close()


# --- what reads the log, after a prune ----------------------------------------------------


@pytest.mark.anyio
@on_databases
async def test_a_change_whose_on_settled_call_is_still_owed_is_kept_whatever_its_age(
    backend: str, tmp_path: Path
) -> None:
    """Orders 6 and 7 were tracked until ``paid``, paid and delivered weeks ago; order
    7's call was made, order 6's instance died before it.  The prune deletes what
    order 7 no longer needs, but keeps order 6's payment (not its latest change),
    and the sweep of an instance started afterwards still makes that call.  Without
    the payment the sweep finds nothing owed: the delivery after it calls nothing
    for ``paid``."""
    url = url_for(backend, tmp_path)
    old = time.time() - RETENTION - DAY
    async with open_journal(url) as journal:
        log = OrderLog(journal)
        await log.track_many([(6, P, "p6"), (7, P, "p7")])
        await log.record([Note(o, s, "polling", old) for o in (6, 7) for s in (N, P, D)])
        answer_claim(url, settled_key(7, P))
        await SettledLog(log).tell(7)
        pruned = await journal.prune()
    remaining = left(url)

    calls: list[Settled] = []

    async def on_settled(event: Settled) -> None:
        calls.append(event)

    async with Tracker(
        project_id=1, journal=url, transports=("journal",), fetch_details=False,
        until="paid", on_settled=on_settled, lease=0.5,
    ) as tracker:  # fmt: skip
        fleet = tracker.fleet
        assert fleet is not None
        await eventually(lambda: calls, timeout=30)
        swept = fleet.sweeps
        await eventually(lambda: fleet.sweeps >= swept + 2, timeout=30)  # and nothing more
    assert [(e.order_id, e.status, e.succeeded, e.later) for e in calls] == [(6, P, True, False)]
    assert (pruned.changes, remaining) == (3, {(6, 2), (6, 3), (7, 3)})


async def _app(url: str, loop: str, *args: str) -> tuple[Process, BufferedByteReceiveStream]:
    command = [sys.executable, str(TESTS / "settled_app.py"), url, *args, "--backend", loop]
    process = await anyio.open_process(
        command, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": CODE}
    )
    assert process.stdout is not None
    return process, BufferedByteReceiveStream(process.stdout)


async def _next(reader: BufferedByteReceiveStream, *prefixes: str, within: float = 60) -> str:
    with anyio.fail_after(within):
        while True:
            line = (await reader.receive_until(b"\n", 1 << 16)).decode()
            if line.startswith(prefixes):
                return line


def _tracked(url: str, order_id: int) -> bool:
    db = connect(url)
    try:
        found = db.execute(
            "SELECT 1 FROM orderfsm_orders WHERE order_id = "
            f"{order_id} AND until = 'paid' AND tracked_at IS NOT NULL"
        ).fetchall()
        return bool(found)
    finally:
        db.close()


def _idle(url: str, tag: str) -> bool:
    """No transaction of the app's is open: on SQLite its write lock is free, on
    PostgreSQL none of its sessions (``application_name`` ``tag``) is in a statement or
    a transaction."""
    if not is_postgres(url):
        db = sqlite3.connect(url, isolation_level=None, timeout=0)
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            db.close()
    db = connect(url)
    try:
        busy = db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state <> 'idle'",
            (tag,),
        ).fetchone()
        return int(busy[0]) == 0
    finally:
        db.close()


async def _stopped_idle(process: Process, url: str, tag: str) -> None:
    """SIGSTOP the app at a moment it holds no transaction: stopped inside one it would
    hold the database (SQLite's write lock, PostgreSQL's row locks) from the test."""
    with anyio.fail_after(30):
        while True:
            process.send_signal(signal.SIGSTOP)
            if _idle(url, tag):
                return
            process.send_signal(signal.SIGCONT)
            await anyio.sleep(0.05)


@pytest.mark.anyio
@on_databases
async def test_a_follower_away_longer_than_the_retention_hears_the_orders_status_after_a_prune(
    backend: str, tmp_path: Path, anyio_backend_name: str
) -> None:
    """B, a process following the journal alone, watches order 5 until ``paid`` and has
    heard it is ``new``.  It is stopped (SIGSTOP) while the order expires and is paid,
    weeks ago as far as the changes say; the payment's call is made elsewhere, and a
    prune deletes every change of the order but the payment, the latest.  Woken, B
    hears ``paid`` once, after ``new`` once, and its watch ends: the expiry between
    them is a hole in the order's log, read past, not waited for."""
    tag = f"away-{secrets.token_hex(4)}"
    url = url_for(backend, tmp_path)
    app_url = f"{url}&application_name={tag}" if is_postgres(url) else url
    old = time.time() - RETENTION - DAY
    follower, reader = await _app(
        app_url, anyio_backend_name, "--track", "5", "--no-handler", "--watch"
    )
    try:
        await _next(reader, "READY")
        await eventually(lambda: _tracked(url, 5), timeout=30)
        async with open_journal(url) as journal:
            log = OrderLog(journal)
            await log.record([Note(5, N, "webhook", old)])
            assert await _next(reader, "CHANGE", "SETTLED") == "CHANGE 5 new"
            await _stopped_idle(follower, url, tag)
            try:
                await log.record([Note(5, E, "webhook", old + 1), Note(5, P, "webhook", old + 2)])
                answer_claim(url, settled_key(5, P))
                await SettledLog(log).tell(5)
                pruned = await journal.prune()
            finally:
                follower.send_signal(signal.SIGCONT)
        heard = [await _next(reader, "CHANGE", "SETTLED", within=30) for _ in range(2)]
        assert heard == ["CHANGE 5 paid", "SETTLED 5"]
        assert (pruned.changes, left(url)) == (2, {(5, 3)})
    finally:
        follower.kill()
        await follower.wait()
