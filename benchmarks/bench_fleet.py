"""A fleet through its journal: a webhook on instance A until ``wait()`` returns on B.

Instance A is any of three ``orderfsm webhook-server --store URL`` processes
(the load generator goes round them, as a load balancer would): its
claim's transaction records the order's status (and, on PostgreSQL,
NOTIFYs).  Instance B is a ``Tracker(journal=URL, transports=("journal",),
until="paid")`` in this process, already waiting on every order.  The load
generator is a process of its own sending signed ``order_paid``
notifications at a fixed rate (open loop: latency counts from the scheduled
send, so queueing anywhere shows), after a warm-up at the same rate for
other orders (the receivers' pools grown, as in a long-lived fleet):

* ``{pg,sqlite}_p50_ms_R`` / ``_p99_ms_R``: send -> B's waiter told, at R = 50
  and 500 webhooks/s;
* ``notify_floor_p50_ms`` / ``_p99_ms``: the bare database round trip, a
  transaction that NOTIFYs committed -> a LISTENing connection has it (no
  HTTP, no journal); ``sqlite_wake_floor_p99_ms``: a commit -> another
  connection's ``PRAGMA data_version`` moved, watched as the journal does;
* ``resume_10k_s``: a new instance starts on a journal where 10,000 orders
  are tracked and not settled, until every one is followed again at the
  status the journal holds;
* ``lost``: waits that never returned.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import anyio
from _common import Floors, emit, percentile
from bench_journal import SECRET, body, run_part, servers

from orderfsm import Status
from orderfsm.supervisor.policy import DefaultPolicy
from orderfsm.supervisor.records import Change, StatusChange
from orderfsm.supervisor.tracker import Tracker
from orderfsm.testing import eventually
from transports.journal import open_journal
from transports.journal.order_log import OrderLog
from transports.journal.testing import TemporaryPostgres

FLOORS: Floors = {
    "pg_p99_ms_500": ("<=", 10.0),
    "sqlite_p99_ms_500": ("<=", 30.0),
    "resume_10k_s": ("<=", 2.0),
}
RATES = (50.0, 500.0)
RECEIVERS = 3
"""Receiver processes behind the load generator's round robin: a fleet's instances A."""
POLICY = DefaultPolicy(deadline=None)


def signed(order_id: int) -> tuple[str, str]:
    """One ``order_paid`` and its ``Authorization`` (each order once: payload i is order i)."""
    raw = body(order_id)
    return raw.decode(), f"Signature {hashlib.sha1(raw + SECRET.encode()).hexdigest()}"


def receiver(store: str) -> list[str]:
    """Instance A (its handler does nothing: nothing it prints can fill a pipe)."""
    return [sys.executable, "-m", "orderfsm", "webhook-server", "--secret-env", "SECRET",
            "--port", "0", "--store", store, "--handler", "_journal_load:noop"]  # fmt: skip


async def send_to_waiters(
    store: str, rate: float, count: int, first: int, folder: Path
) -> dict[str, Any]:
    """Webhooks to A at ``rate``; B waits on each; send -> told, per order."""
    told: dict[int, float] = {}
    done = anyio.Event()

    def on_change(change: Change) -> None:
        if isinstance(change, StatusChange) and change.status is Status.PAID:
            told.setdefault(change.order_id, time.time())
            if len(told) == count:
                done.set()

    payloads = [signed(order_id) for order_id in range(first, first + count)]
    async with Tracker(
        project_id=1, transports=("journal",), journal=store, until="paid",
        fetch_details=False, policy=POLICY, on_change=on_change,
    ) as b:  # fmt: skip
        for order_id in range(first, first + count):
            b.track(order_id)
        assert b.fleet is not None
        await b.fleet.flush(60.0)  # B follows them all in the journal before the first send
        with servers([receiver(store)] * RECEIVERS) as urls:
            # Warm the receivers up at the measured rate first (their connection
            # pools grow to what the rate needs, the first statements are
            # prepared): a fleet's receivers are long-lived, and without it the
            # first second's start-up is the whole p99.
            extra = range(first + count, first + count + max(100, int(rate)))
            warm_up = {"urls": urls, "payloads": [signed(o) for o in extra], "mode": "open",
                       "rate": rate}  # fmt: skip
            await anyio.to_thread.run_sync(run_part, "loadgen", warm_up, folder)
            spec = {"urls": urls, "payloads": payloads, "mode": "open", "rate": rate}
            sent = await anyio.to_thread.run_sync(run_part, "loadgen", spec, folder)
            with anyio.move_on_after(30):
                await done.wait()
    start = sent["wall_start"]
    latencies = [
        (told[first + i] - (start + i / rate)) * 1000.0 for i in range(count) if first + i in told
    ]
    return {"latencies": latencies, "lost": count - len(latencies), "loadgen": sent}


def notify_floor(url: str, samples: int) -> list[float]:
    """Commit a NOTIFY, time until a LISTENing connection has it (ms)."""
    import psycopg

    listener = psycopg.connect(url, autocommit=True)
    writer = psycopg.connect(url, autocommit=True)
    listener.execute("LISTEN bench_floor")
    times: list[float] = []
    try:
        for i in range(samples):
            start = time.perf_counter()
            with writer.transaction():
                writer.execute("SELECT pg_notify('bench_floor', %s)", (str(i),))
            for _ in listener.notifies(timeout=5, stop_after=1):
                times.append((time.perf_counter() - start) * 1000.0)
    finally:
        listener.close()
        writer.close()
    return times


def sqlite_wake_floor(path: str, samples: int) -> list[float]:
    """Commit in one connection, time until another sees ``data_version`` move (ms),
    watched every few ms as the journal's SQLite watcher does."""
    import sqlite3

    from transports.journal.sqlite import WATCH_INTERVAL

    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    watcher = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE IF NOT EXISTS floor (i INTEGER)")
    times: list[float] = []

    def commit(i: int, stamp: list[float]) -> None:
        time.sleep(0.002)
        stamp.append(time.perf_counter())
        writer.execute("INSERT INTO floor VALUES (?)", (i,))

    try:
        for i in range(samples):
            seen = watcher.execute("PRAGMA data_version").fetchone()[0]
            stamp: list[float] = []
            thread = threading.Thread(target=commit, args=(i, stamp))
            thread.start()
            while watcher.execute("PRAGMA data_version").fetchone()[0] == seen:
                time.sleep(WATCH_INTERVAL)
            thread.join()
            times.append((time.perf_counter() - stamp[0]) * 1000.0)
    finally:
        writer.close()
        watcher.close()
    return times


async def resume(store: str, orders: int) -> float:
    """Seconds for a new instance to follow ``orders`` tracked orders again."""
    async with open_journal(store) as journal:
        log = OrderLog(journal)
        dialect = log.dialect
        now = time.time()

        def fill(db: Any) -> None:
            mark = "%s" if dialect == "postgresql" else "?"
            rows = [(n, "new", 1, "done", f"player-{n % 100}", True, now, 0.0, 0, now)
                    for n in range(10_000_000, 10_000_000 + orders)]  # fmt: skip
            db.cursor().executemany(
                "INSERT INTO orderfsm_orders (order_id, status, version, until, user_id,"
                " tracking, tracked_at, lease_until, fence, updated_at) VALUES "
                f"({', '.join([mark] * 10)})",
                rows,
            )
            db.cursor().executemany(
                "INSERT INTO orderfsm_changes (order_id, version, status, previous, source, at)"
                f" VALUES ({', '.join([mark] * 6)})",
                [(r[0], 1, "new", None, "websocket", now) for r in rows],
            )

        await anyio.to_thread.run_sync(journal.store.write, fill, time.monotonic() + 120)  # type: ignore[attr-defined]
    started = time.perf_counter()
    async with Tracker(
        project_id=1, transports=("journal",), journal=store, fetch_details=False, policy=POLICY
    ) as tracker:
        await eventually(
            lambda: sum(tracker.status(o) is Status.NEW for o in tracker._orders) >= orders,
            timeout=120,
        )
        return time.perf_counter() - started


async def measure(quick: bool, folder: Path) -> dict[str, Any]:
    counts = {50.0: 100 if quick else 500, 500.0: 200 if quick else 5_000}
    figures: dict[str, Any] = {"quick": quick, "benchmark": "fleet"}
    lost = 0
    with TemporaryPostgres() as postgres:
        stores = {"pg": postgres.url(), "sqlite": str(folder / "fleet.sqlite3")}
        for name, store in stores.items():
            first = 1_000
            for rate in RATES:
                run = await send_to_waiters(store, rate, counts[rate], first, folder)
                first += 100_000
                lost += run["lost"]
                figures[f"{name}_p50_ms_{int(rate)}"] = round(percentile(run["latencies"], 50), 3)
                figures[f"{name}_p99_ms_{int(rate)}"] = round(percentile(run["latencies"], 99), 3)
                figures[f"{name}_receiver_p99_ms_{int(rate)}"] = round(run["loadgen"]["p99_ms"], 3)
        floor = await anyio.to_thread.run_sync(
            notify_floor, postgres.url(), 200 if quick else 2_000
        )
        figures["notify_floor_p50_ms"] = round(statistics.median(floor), 3)
        figures["notify_floor_p99_ms"] = round(percentile(floor, 99), 3)
        wake = await anyio.to_thread.run_sync(
            sqlite_wake_floor, str(folder / "floor.sqlite3"), 100 if quick else 500
        )
        figures["sqlite_wake_floor_p99_ms"] = round(percentile(wake, 99), 3)
        size = 1_000 if quick else 10_000
        figures["resume_orders"] = size
        figures["resume_10k_s" if not quick else "resume_1k_s"] = round(
            await resume(postgres.url(), size), 3
        )
        figures["resume_10k_sqlite_s" if not quick else "resume_1k_sqlite_s"] = round(
            await resume(str(folder / "resume.sqlite3"), size), 3
        )
    figures["lost"] = lost
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for the test suite")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    try:
        figures = anyio.run(measure, args.quick, folder, backend="asyncio")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    code = emit(figures, {} if args.quick else FLOORS, args.quick)
    return code or int(figures["lost"] > 0)


if __name__ == "__main__":
    sys.exit(main())
