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
* ``resume_10k_s``: a new instance (polling, with ``token_for``) starts on a
  journal where 10,000 orders are tracked and not settled and their owner is
  gone (its leases ran out), until it has taken every one over and follows
  it at the status the journal holds (its Get orders go to a closed port);
* ``lost``: waits that never returned.

``--split`` also times each delivery's steps (p50 / p99 of each, ms): sent ->
the receiver's order note (``at`` of its change row), -> B's listener has
the NOTIFY (in its thread), -> B's loop has the changes read, -> told; and
B's own cost per delivery: CPU (``b_cpu_us``), worker-thread hops
(``b_hops``) and listener wake-ups (``b_wakes``).  The timestamps are taken by
wrapping the journal's calls here, never in the library.  ``--only`` and
``--rates`` cut the run to what is being looked at.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
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


class Split:
    """``--split``: each delivery's steps on B, timed by wrapping the journal's calls."""

    def __init__(self) -> None:
        self.heard: dict[int, float] = {}
        self.read: dict[int, float] = {}
        self.hops = 0
        self.wakes = 0
        self.counting = False
        self._undo: list[tuple[Any, str, Any]] = []

    def restart(self) -> None:
        """A run of its own: each database's run numbers its orders from the same
        first id, and a stamp kept from the run before (``setdefault``) would be
        taken for this run's."""
        self.heard.clear()
        self.read.clear()
        self.counting, self.hops, self.wakes = True, 0, 0

    def _wrap(self, owner: Any, name: str, make: Any) -> None:
        original = getattr(owner, name)
        self._undo.append((owner, name, original))
        setattr(owner, name, make(original))

    def install(self) -> None:
        import anyio.to_thread

        from transports.journal.order_log import OrderLog
        from transports.journal.postgres import PostgresStore

        def heard(original: Any) -> Any:
            """Around what returns the order ids a wake-up announced."""

            def wrapper(*args: Any, **kwargs: Any) -> Any:
                ids = original(*args, **kwargs)
                now = time.time()
                if ids and self.counting:
                    self.wakes += 1
                for order_id in ids or ():
                    self.heard.setdefault(order_id, now)
                return ids

            return wrapper

        def read(original: Any, found: Any) -> Any:
            """Around what returns the changes read (``found`` takes them from its result)."""

            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                result = await original(*args, **kwargs)
                now = time.time()
                for change in found(result):
                    self.read.setdefault(change.order_id, now)
                return result

            return wrapper

        def run_sync(original: Any) -> Any:
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                if self.counting:
                    self.hops += 1
                return await original(*args, **kwargs)

            return wrapper

        if hasattr(PostgresStore, "listen"):  # a listener in a thread of its own (before)
            self._wrap(PostgresStore, "listen", heard)
        else:  # heard and read on the loop
            from transports.journal import postgres_listener

            self._wrap(postgres_listener, "_announced", heard)
            self._wrap(OrderLog, "wait_for_news", lambda f: read(f, lambda n: n.changes or ()))
        self._wrap(OrderLog, "changes", lambda f: read(f, lambda found: found))
        self._wrap(anyio.to_thread, "run_sync", run_sync)

    def uninstall(self) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo.clear()


def probe(url: str, channel: str, out: str) -> None:
    """``--probe``: a process of its own LISTENing beside B, stamping when each
    order's NOTIFY reached it: the commit plus the bare wake-up, what B's own
    wake-up is compared with.  Writes ``order_id at`` lines to ``out`` on SIGTERM."""
    import signal

    import psycopg

    def stop(*_: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    stamps: dict[int, float] = {}
    connection = psycopg.connect(url, autocommit=True)
    connection.execute(f"LISTEN {channel}")
    print("ready", flush=True)
    try:
        while True:
            for note in connection.notifies(timeout=0.5):
                now = time.time()
                for part in filter(None, note.payload.split(",")):
                    stamps.setdefault(int(part), now)
    finally:
        Path(out).write_text("".join(f"{k} {v!r}\n" for k, v in stamps.items()))


@contextlib.contextmanager
def probing(
    store: str, channel: str, folder: Path, split: Split | None
) -> Iterator[dict[int, float]]:
    """The probe's stamps, filled in when the block ends (nothing off PostgreSQL)."""
    stamps: dict[int, float] = {}
    if split is None or "://" not in store:
        yield stamps
        return
    out = folder / "probe.txt"
    command = [sys.executable, __file__, "--probe", store, channel, str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        yield stamps
    finally:
        process.terminate()
        process.wait(10)
    for line in out.read_text().splitlines():
        order_id, at = line.split()
        stamps[int(order_id)] = float(at)


def steps(marks: dict[str, dict[int, float]]) -> dict[str, list[float]]:
    """Per delivery (ms), each step named by the mark it ends at, between successive
    marks (in the order given; a mark nobody stamped is left out): sent -> note (the
    receiver's order note) -> claim (its batch's worker thread began) -> committed ->
    probe (the NOTIFY reached a bare listener) -> heard (B has it) -> read -> told."""
    present = {name: at for name, at in marks.items() if at}
    names = list(present)
    out: dict[str, list[float]] = {name: [] for name in names[1:]}
    for order_id in present[names[0]]:
        times = [present[name].get(order_id) for name in names]
        if None in times:
            continue
        for name, (a, b) in zip(names[1:], itertools.pairwise(times), strict=True):
            out[name].append((b - a) * 1000.0)  # type: ignore[operator]
    return out


def signed(order_id: int) -> tuple[str, str]:
    """One ``order_paid`` and its ``Authorization`` (each order once: payload i is order i)."""
    raw = body(order_id)
    return raw.decode(), f"Signature {hashlib.sha1(raw + SECRET.encode()).hexdigest()}"


def receiver(store: str, stamps: Path | None = None) -> list[str]:
    """Instance A (its handler does nothing: nothing it prints can fill a pipe);
    with ``stamps``, timed by :func:`timed_receiver`."""
    run = [sys.executable, "-m", "orderfsm"]
    if stamps is not None:
        run = [sys.executable, __file__, "--receiver", str(stamps)]
    return [*run, "webhook-server", "--secret-env", "SECRET", "--port", "0", "--store", store,
            "--handler", "_journal_load:noop"]  # fmt: skip


def timed_receiver(out: str, argv: list[str]) -> int:
    """``--split``'s receiver: ``orderfsm webhook-server`` with its claim batches timed
    (PostgreSQL: when the batch's worker thread began it, when it had committed, and
    the batch's size, per order), written to ``out`` every half second (the
    benchmark kills its receivers)."""
    from orderfsm.cli import main as cli
    from transports.journal.postgres import PostgresStore

    stamps: dict[int, tuple[float, float, int]] = {}
    original = PostgresStore.claim_many

    def claim_many(store: PostgresStore, requests: Any, *args: Any, **kwargs: Any) -> Any:
        began = time.time()
        result = original(store, requests, *args, **kwargs)
        ended = time.time()
        for request in requests:
            for note in request.notes:
                stamps.setdefault(note.order_id, (began, ended, len(requests)))
        return result

    def dump() -> None:
        while True:
            time.sleep(0.5)
            lines = [f"{k} {b!r} {e!r} {n}\n" for k, (b, e, n) in list(stamps.items())]
            Path(out + ".tmp").write_text("".join(lines))
            Path(out + ".tmp").replace(out)

    PostgresStore.claim_many = claim_many  # type: ignore[method-assign,assignment]
    threading.Thread(target=dump, daemon=True).start()
    sys.argv = ["orderfsm", *argv]
    return int(cli() or 0)


async def send_to_waiters(
    store: str, rate: float, count: int, first: int, folder: Path, split: Split | None = None
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
        stamps = folder / "receiver-{}.txt" if split is not None and "://" in store else None
        commands = [
            receiver(store, stamps and Path(str(stamps).format(i))) for i in range(RECEIVERS)
        ]
        with servers(commands) as urls:
            # Warm the receivers up at the measured rate first (their connection
            # pools grow to what the rate needs, the first statements are
            # prepared): a fleet's receivers are long-lived, and without it the
            # first second's start-up is the whole p99.
            extra = range(first + count, first + count + max(100, int(rate)))
            warm_up = {"urls": urls, "payloads": [signed(o) for o in extra], "mode": "open",
                       "rate": rate}  # fmt: skip
            await anyio.to_thread.run_sync(run_part, "loadgen", warm_up, folder)
            spec = {"urls": urls, "payloads": payloads, "mode": "open", "rate": rate}
            with probing(store, b.fleet.log.channel, folder, split) as probed:
                cpu = time.process_time()
                if split is not None:
                    split.restart()
                sent = await anyio.to_thread.run_sync(run_part, "loadgen", spec, folder)
                with anyio.move_on_after(30):
                    await done.wait()
                cpu = time.process_time() - cpu
            if split is not None:
                split.counting = False
                if stamps is not None:
                    await anyio.sleep(1.0)  # the receivers' last stamps written
    start = sent["wall_start"]
    latencies = [
        (told[first + i] - (start + i / rate)) * 1000.0 for i in range(count) if first + i in told
    ]
    run: dict[str, Any] = {"latencies": latencies, "lost": count - len(latencies), "loadgen": sent}
    if split is not None:
        # The loadgen's own hop is one; B's CPU includes waiting for it (blocked, ~0).
        notes = await note_times(store, range(first, first + count))
        scheduled = {first + i: start + i / rate for i in range(count)}
        claims = read_claim_stamps(stamps) if stamps is not None else {}
        run["steps"] = steps({
            "sent": scheduled, "note": notes,
            "claim": {k: v[0] for k, v in claims.items()},
            "committed": {k: v[1] for k, v in claims.items()},
            "probe": probed, "heard": split.heard, "read": split.read, "told": told,
        })  # fmt: skip
        # B's own part whole: the NOTIFY at a bare listener -> B has the changes read.
        if probed:
            run["steps"]["b_own"] = steps({"probe": probed, "read": split.read})["read"]
        sizes = [claims[o][2] for o in scheduled if o in claims]
        if sizes:
            run["claim_batch"] = statistics.mean(sizes)
        run["b_cpu_us"] = cpu / count * 1e6
        run["b_hops"] = (split.hops - 1) / count
        run["b_wakes"] = split.wakes / count
    return run


def read_claim_stamps(stamps: Path) -> dict[int, tuple[float, float, int]]:
    """The timed receivers' stamps: (began, committed, batch size) per order."""
    claims: dict[int, tuple[float, float, int]] = {}
    for i in range(RECEIVERS):
        for line in Path(str(stamps).format(i)).read_text().splitlines():
            order_id, began, ended, size = line.split()
            claims[int(order_id)] = (float(began), float(ended), int(size))
    return claims


async def note_times(store: str, order_ids: range) -> dict[int, float]:
    """When each order's paid note was made (its change row's ``at``, the receiver's clock)."""
    async with open_journal(store) as journal:
        mark = "%s" if journal.store.kind == "postgresql" else "?"

        def read(db: Any) -> dict[int, float]:
            rows = db.execute(
                f"SELECT order_id, at FROM orderfsm_changes WHERE status = 'paid'"
                f" AND order_id >= {mark} AND order_id < {mark}",
                (order_ids.start, order_ids.stop),
            ).fetchall()
            return {int(order_id): float(at) for order_id, at in rows}

        return await anyio.to_thread.run_sync(journal.store.read, read, time.monotonic() + 60)  # type: ignore[attr-defined]


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

    from transports.journal.sqlite_watcher import WATCH_INTERVAL

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
            # Their owner is gone: a start takes over only such orders (or its own).
            rows = [(n, "new", 1, "done", f"player-{n % 100}", True, now, "gone", 0.0, 0, now)
                    for n in range(10_000_000, 10_000_000 + orders)]  # fmt: skip
            db.cursor().executemany(
                "INSERT INTO orderfsm_orders (order_id, status, version, until, user_id,"
                " tracking, tracked_at, owner, lease_until, fence, updated_at) VALUES "
                f"({', '.join([mark] * 11)})",
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
        project_id=1, transports=("polling",), api_url="http://127.0.0.1:9", journal=store,
        token_for=lambda order_id, user_id: "bench", fetch_details=False, policy=POLICY,
    ) as tracker:  # fmt: skip
        await eventually(
            lambda: sum(tracker.status(o) is Status.NEW for o in tracker._orders) >= orders,
            timeout=120,
        )
        return time.perf_counter() - started


async def measure(
    quick: bool, folder: Path, only: str | None, rates: tuple[float, ...], split: Split | None
) -> dict[str, Any]:
    counts = {50.0: 100 if quick else 500, 500.0: 200 if quick else 5_000}
    figures: dict[str, Any] = {"quick": quick, "benchmark": "fleet"}
    lost = 0
    with TemporaryPostgres() as postgres:
        stores = {"pg": postgres.url(), "sqlite": str(folder / "fleet.sqlite3")}
        for name, store in stores.items():
            if only not in (None, name):
                continue
            first = 1_000
            for rate in rates:
                count = counts.get(rate, int(rate * 10))
                run = await send_to_waiters(store, rate, count, first, folder, split)
                first += 100_000
                lost += run["lost"]
                at = f"{name}_{{}}_{int(rate)}"
                figures[at.format("p50_ms")] = round(percentile(run["latencies"], 50), 3)
                figures[at.format("p99_ms")] = round(percentile(run["latencies"], 99), 3)
                figures[at.format("receiver_p99_ms")] = round(run["loadgen"]["p99_ms"], 3)
                for step, values in run.get("steps", {}).items():
                    figures[at.format(f"{step}_p50_ms")] = round(percentile(values, 50), 3)
                    figures[at.format(f"{step}_p99_ms")] = round(percentile(values, 99), 3)
                for key in ("b_cpu_us", "b_hops", "b_wakes", "claim_batch"):
                    if key in run:
                        figures[at.format(key)] = round(run[key], 2)
        if only is not None:
            figures["lost"] = lost
            floor = await anyio.to_thread.run_sync(notify_floor, postgres.url(), 2_000)
            figures["notify_floor_p99_ms"] = round(percentile(floor, 99), 3)
            figures["load_average"] = [round(x, 2) for x in os.getloadavg()]
            figures["at_utc"] = time.strftime("%H:%M:%S", time.gmtime())
            return figures
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
    figures["load_average"] = [round(x, 2) for x in os.getloadavg()]
    figures["at_utc"] = time.strftime("%H:%M:%S", time.gmtime())
    return figures


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--probe"]:
        probe(*argv[1:4])
        return 0
    if argv[:1] == ["--receiver"]:
        return timed_receiver(argv[1], argv[2:])
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for the test suite")
    parser.add_argument("--split", action="store_true", help="time each delivery's steps on B")
    parser.add_argument("--only", choices=("pg", "sqlite"), help="one database (no floors)")
    parser.add_argument("--rates", type=float, nargs="+", default=RATES, help="webhooks/s")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    split = Split() if args.split else None
    if split is not None:
        split.install()
    try:
        figures = anyio.run(
            measure, args.quick, folder, args.only, tuple(args.rates), split, backend="asyncio"
        )
    finally:
        if split is not None:
            split.uninstall()
        shutil.rmtree(folder, ignore_errors=True)
    partial = args.quick or args.only is not None or tuple(args.rates) != RATES
    code = emit(figures, {} if partial else FLOORS, partial)
    return code or int(figures["lost"] > 0)


if __name__ == "__main__":
    sys.exit(main())
