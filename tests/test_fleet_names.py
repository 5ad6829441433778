"""Instance names (``Tracker(instance=...)``): held by one live tracker at a time.

A name given twice (a deployer's mistake, an old pod still alive in a rolling
deploy) had both trackers follow the same orders and the newer one's start end
the older one's leases.  Each test runs on both event loops, on SQLite (a
lock file) and PostgreSQL (a session advisory lock) where both apply;
``tests/test_fleet_processes.py`` kills a real holder.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from support_journal import connect, on_databases, url_for
from support_postgres import postgres_server

from orderfsm.errors import InstanceNameInUse
from orderfsm.journal.config import JournalSettings
from orderfsm.supervisor.tracker import Tracker
from orderfsm.testing import eventually
from transports.journal import open_journal
from transports.journal.instance import SLOTS, hold_sqlite_slot
from transports.journal.orders import channel_for
from transports.journal.postgres_name import name_key

pytestmark = pytest.mark.anyio

ONLY_THE_JOURNAL: dict[str, Any] = {"transports": ("journal",), "fetch_details": False}


def listening(url: str, **kw: Any) -> Tracker:
    """An instance that follows the journal alone (no Xsolla needed to start it)."""
    return Tracker(project_id=1, journal=url, **ONLY_THE_JOURNAL, **kw)


def lease_until(url: str, order_id: int) -> float:
    db = connect(url)
    try:
        mark = "%s" if url.startswith("postgres") else "?"
        query = f"SELECT lease_until FROM orderfsm_orders WHERE order_id = {mark}"
        return float(db.execute(query, (order_id,)).fetchone()[0])
    finally:
        db.close()


@on_databases
async def test_a_name_a_live_tracker_holds_is_refused_after_waiting_a_lease(
    backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A holds ``shop-1`` and an order's lease under it.  B, given the same name, waits
    for the name up to its lease (A may be stopping), warns once, then raises the
    typed error naming the instance; A's lease is untouched (B's start used to end
    it).  Once A has closed, the name is free at once."""
    url = url_for(backend, tmp_path)
    order_id = 20_000_001
    async with listening(url, instance="shop-1", lease=30.0) as a:
        a.track(order_id)
        assert a.fleet is not None and await a.fleet.flush(5)  # the order's row written
        await a.fleet.log.lease([order_id], 30.0)  # as an owner following Xsolla would
        held_until = lease_until(url, order_id)
        caplog.clear()
        started = time.monotonic()
        with pytest.raises(InstanceNameInUse) as refused:
            async with listening(url, instance="shop-1", lease=1.0):
                pass
        waited = time.monotonic() - started
        assert refused.value.instance == "shop-1" and "'shop-1'" in str(refused.value)
        assert 1.0 <= waited < 10.0
        warned = [r for r in caplog.records if "is held by another live tracker" in r.message]
        assert len(warned) == 1 and warned[0].levelno == logging.WARNING
        assert lease_until(url, order_id) == held_until  # not released by B
    with anyio.fail_after(5):
        async with listening(url, instance="shop-1", lease=1.0) as c:
            assert c.fleet is not None and c.fleet.log.owner == "shop-1"


def test_a_name_that_would_share_a_sqlite_slot_is_refused_at_once(tmp_path: Path) -> None:
    """``sqlite-slot-<n>`` names the SQLite file's slots: a tracker given it would lease
    under a slot another tracker holds."""
    with pytest.raises(ValueError, match="sqlite-slot-"):
        listening(str(tmp_path / "journal.sqlite3"), instance="sqlite-slot-0")


@on_databases
async def test_a_name_made_for_the_tracker_ends_no_leases_at_its_start(
    backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A name made at the start (no ``instance=``, no free SQLite slot) never held a
    lease: its start runs no statement to end them, so it neither waits on a busy
    orders table nor says the journal is unavailable."""
    url = url_for(backend, tmp_path)
    slots = []
    async with open_journal(url, JournalSettings(wait=0.5)) as journal:
        busy = connect(url)
        if backend == "sqlite":
            slots = [hold_sqlite_slot(url) for _ in range(SLOTS)]  # every slot is taken
            busy.execute("BEGIN EXCLUSIVE")
        else:
            busy.execute("BEGIN")
            busy.execute("LOCK TABLE orderfsm_orders IN SHARE MODE")  # no writer passes
        try:
            caplog.clear()
            async with listening(journal) as tracker:
                assert tracker.fleet is not None and tracker.fleet.log.fresh
        finally:
            busy.execute("ROLLBACK")
            busy.close()
            for slot in slots:
                assert slot is not None
                slot[1].close()
    assert not [r for r in caplog.records if "taking over orders at start" in r.message]


def lock_holder(url: str, key: int) -> int | None:
    """The server process holding the advisory lock ``key``, if any."""
    db = connect(url)
    try:
        row = db.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND ((classid::bigint << 32) | objid::bigint) = %s",
            (key,),
        ).fetchone()
        return None if row is None else int(row[0])
    finally:
        db.close()


async def test_a_name_lost_with_its_connection_is_taken_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PostgreSQL: the name's session ended (a restart, a failover; here terminated) is
    taken again on a new one.  Taken meanwhile by another (here the test's session,
    which waited for it), the loss is logged as an error and the tracker goes on
    (duplicated polling over none); it holds the name again once the other lets go."""
    url = postgres_server().url()
    async with listening(url, instance="shop-1") as tracker:
        admin = connect(url)
        schema = admin.execute("SELECT current_schema()").fetchone()[0]
        key = name_key(channel_for(schema), "shop-1")
        first = lock_holder(url, key)
        assert first is not None
        admin.execute("SELECT pg_terminate_backend(%s)", (first,))
        await eventually(lambda: lock_holder(url, key) not in (None, first), timeout=10)

        other = connect(url)  # waits for the name, so takes it the moment it is lost
        other_pid = other.info.backend_pid

        async def wait_for_the_name() -> None:
            await anyio.to_thread.run_sync(
                lambda: other.execute("SELECT pg_advisory_lock(%s)", (key,))
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_the_name)
            waiting = (
                "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND pid = %s"
            )
            await eventually(lambda: admin.execute(waiting, (other_pid,)).fetchall(), timeout=10)
            admin.execute("SELECT pg_terminate_backend(%s)", (lock_holder(url, key),))
        assert lock_holder(url, key) == other_pid
        shared = "is held by another live tracker: both lease orders"
        await eventually(lambda: [r for r in caplog.records if shared in r.message], timeout=10)
        assert [r.levelno for r in caplog.records if shared in r.message] == [logging.ERROR]
        assert tracker.fleet is not None and tracker._tg is not None  # still running
        other.close()
        await eventually(lambda: lock_holder(url, key) not in (None, other_pid), timeout=15)
        admin.close()


async def test_the_names_session_has_keepalives_on_both_sides() -> None:
    """PostgreSQL: a holder whose host died sends nothing, so its session (and the name)
    lasts until the server's keepalives notice; the system's default is two hours.  The
    name's session sets the listener's values on the server's side (about 11 s) and
    on ours (to notice the lock's connection died).  Read from the kernel, and from
    the session's settings."""
    async with open_journal(postgres_server().url()) as journal:
        lock = journal.store.name_lock("shop-1")  # type: ignore[attr-defined]
        try:
            assert await anyio.to_thread.run_sync(lock.take)
            connection = lock._connection
            with socket.socket(fileno=os.dup(connection.pgconn.socket)) as sock:
                ours = [sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)] + [
                    sock.getsockopt(socket.IPPROTO_TCP, option)
                    for option in (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT)
                ]
            settings = ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count")
            theirs = [int(connection.execute(f"SHOW {s}").fetchone()[0]) for s in settings]
        finally:
            lock.close()
    assert ours == [1, 5, 2, 3] and theirs == [5, 2, 3]  # no fix: the server's 7200, 75, 9
