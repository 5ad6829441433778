"""The journal under load: webhook deliveries per second and latency, memory / SQLite /
PostgreSQL, one and three receiver processes, beside the ceiling and the database floor.

Every receiver is a real ``orderfsm webhook-server --store URL`` process
(asyncio, aiohttp.web) with a do-nothing handler; the load generator is a
process of its own (``_journal_load.py``), sending signed ``order_paid``
notifications, 10% of them duplicates of earlier ones, round robin over the
receivers as a load balancer would:

* ``*_deliveries_per_s_N``: at saturation (as fast as the answers come);
* ``*_p50_ms_N`` / ``*_p99_ms_N``: receive-to-answer at a fixed 500
  deliveries/s, open loop (timed from the scheduled send);
* ``ceiling_deliveries_per_s``: the same load generator against a
  do-nothing aiohttp handler; ``*_ratio_to_ceiling_N`` divides by it;
* ``*_floor_tx_per_s_N``: the journal's claim and answer per delivery in N
  processes, without HTTP (what the database allows);
* ``pg_sync_cpu_ms_per_tx`` / ``pg_async_cpu_ms_per_tx``: the claim
  statement's CPU through psycopg's sync and async connections.

After each run every delivery not answered 2xx is sent again until it is
(as Xsolla would), then the journal is read: ``lost`` counts notifications
never handled, ``duplicated`` those handled twice, ``answered_4xx`` any 4xx
(there must be none).  Prints one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
from _common import Floors, emit

from orderfsm import Status
from transports.journal import open_journal
from transports.journal.order_log import OrderLog
from transports.journal.testing import TemporaryPostgres

HERE = Path(__file__).resolve().parent
SECRET = "PROJECT_SECRET_KEY"
RATE = 500.0
DUPLICATES = 0.10

FLOORS: Floors = {
    "pg_deliveries_per_s_3": (">=", 1500),
    "pg_p99_ms_3": ("<=", 20),
    "sqlite_deliveries_per_s_3": (">=", 1000),
    "sqlite_p99_ms_3": ("<=", 20),
    "pg_ratio_to_ceiling_3": (">=", 0.2),
    "sqlite_ratio_to_ceiling_3": (">=", 0.2),
}


def body(order_id: int) -> bytes:
    """A realistic ``order_paid`` (about 700 bytes, combined mode)."""
    payload = {
        "items": [
            {"sku": "com.example.sword", "type": "virtual_good", "quantity": 1,
             "amount": "4.99", "promotions": [], "is_pre_order": False},
        ],
        "notification_type": "order_paid",
        "order": {"id": order_id, "mode": "sandbox", "currency_type": "real",
                  "currency": "USD", "amount": "4.99", "status": "paid",
                  "platform": "xsolla", "comment": None, "invoice_id": str(order_id * 7)},
        "user": {"external_id": f"player-{order_id % 997}", "email": "p@example.com",
                 "country": "US"},
        "custom_parameters": {},
        "billing": {"notification_type": "payment",
                    "settings": {"project_id": 12345, "merchant_id": 100000},
                    "purchase": {"total": {"currency": "USD", "amount": 4.99}},
                    "transaction": {"id": order_id * 7, "dry_run": 1,
                                    "payment_date": "2026-11-25T10:00:00+00:00"}},
    }  # fmt: skip
    return json.dumps(payload, separators=(",", ":")).encode()


def deliveries(first_order: int, unique: int, rng: random.Random) -> list[tuple[str, str]]:
    """``unique`` notifications plus 10% duplicates of earlier ones, in sending order."""
    orders = list(range(first_order, first_order + unique))
    sequence = list(orders)
    for _ in range(int(unique * DUPLICATES)):
        at = rng.randrange(1, len(sequence) + 1)
        sequence.insert(at, rng.choice(sequence[:at]))
    out = []
    for order_id in sequence:
        raw = body(order_id)
        signature = hashlib.sha1(raw + SECRET.encode()).hexdigest()
        out.append((raw.decode(), f"Signature {signature}"))
    return out


def run_part(mode: str, spec: dict[str, Any], folder: Path) -> dict[str, Any]:
    path = folder / f"{mode}-spec.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    result = subprocess.run(
        [sys.executable, str(HERE / "_journal_load.py"), mode, f"@{path}"],
        capture_output=True, text=True, check=True, env=env, timeout=900,
    )  # fmt: skip
    parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


@contextmanager
def servers(commands: list[list[str]]) -> Iterator[list[str]]:
    """Start each command (it prints its URL first); yields the URLs, kills them after."""
    env = {**os.environ, "PYTHONPATH": str(HERE), "SECRET": SECRET}
    processes = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        for c in commands
    ]
    try:
        urls = []
        for process in processes:
            assert process.stdout is not None
            urls.append(process.stdout.readline().strip())
            if not urls[-1].startswith("http"):
                raise RuntimeError(f"a server did not start: {commands}")
        yield urls
    finally:
        for process in processes:
            process.kill()
            process.wait()


def track_every_order(url: str, order_ids: Sequence[int]) -> None:
    """Track these orders in the journal at ``url``, as a fleet's tracker does when a
    player starts a purchase, before any webhook of it."""

    async def track() -> None:
        async with open_journal(url) as journal:
            log = OrderLog(journal)
            for start in range(0, len(order_ids), 1000):
                chunk = order_ids[start : start + 1000]
                await log.track_many([(order_id, Status.PAID, None) for order_id in chunk])

    anyio.run(track)


def receivers(store: str, count: int, options: Sequence[str] = ()) -> list[list[str]]:
    command = [sys.executable, "-m", "orderfsm", "webhook-server", "--secret-env", "SECRET",
               "--port", "0", "--store", store, "--handler", "_journal_load:noop",
               *options]  # fmt: skip
    return [command] * count


def handled_counts(store: str) -> list[int]:
    """How many times each notification was handled, read from the journal."""
    sql = "SELECT count(*) FROM orderfsm_deliveries WHERE outcome = 'handled' GROUP BY key"
    if store.startswith("postgres"):
        import psycopg

        with psycopg.connect(store) as server:
            return [int(row[0]) for row in server.execute(sql).fetchall()]
    import sqlite3

    local = sqlite3.connect(store)
    try:
        return [int(row[0]) for row in local.execute(sql).fetchall()]
    finally:
        local.close()


def measure(
    name: str,
    store: str,
    count: int,
    sizes: dict[str, int],
    folder: Path,
    figures: dict[str, Any],
    tracked: bool = False,
) -> None:
    """``tracked``: a tracker of the fleet follows every order before its webhook comes,
    so each claim also writes the order's change and its NOTIFY."""
    rng = random.Random(count)
    base = 1_000_000 * (len(figures) + 1)
    saturation = deliveries(base, sizes["saturate"], rng)
    paced = deliveries(base + 500_000, sizes["paced"], rng)
    with servers(receivers(store, count)) as urls:
        if tracked:
            late = base + 500_000
            ids = [*range(base, base + sizes["saturate"]), *range(late, late + sizes["paced"])]
            track_every_order(store, ids)
        run_part("loadgen", {"urls": urls, "payloads": paced[:50], "mode": "open", "rate": 200},
                 folder)  # warm-up (connections, prepared statements)  # fmt: skip
        hot = run_part(
            "loadgen", {"urls": urls, "payloads": saturation, "mode": "saturate", "per_url": 16},
            folder,
        )  # fmt: skip
        slow = run_part(
            "loadgen", {"urls": urls, "payloads": paced[50:], "mode": "open", "rate": RATE}, folder
        )
    figures[f"{name}_deliveries_per_s_{count}"] = round(hot["per_s"], 1)
    figures[f"{name}_p50_ms_{count}"] = round(slow["p50_ms"], 3)
    figures[f"{name}_p99_ms_{count}"] = round(slow["p99_ms"], 3)
    for key in ("answered_4xx", "answered_5xx", "no_answer", "final_not_2xx"):
        figures[key] = figures.get(key, 0) + hot[key] + slow[key]
    if name != "memory":
        counts = handled_counts(store)
        unique = sizes["saturate"] + sizes["paced"]
        figures["lost"] = figures.get("lost", 0) + unique - len(counts)
        figures["duplicated"] = figures.get("duplicated", 0) + sum(c > 1 for c in counts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for the test suite")
    args = parser.parse_args(argv)
    sizes = (
        {"saturate": 600, "paced": 300, "floor": 300}
        if args.quick
        else {"saturate": 20_000, "paced": 5_050, "floor": 5_000}
    )
    folder = Path(tempfile.mkdtemp(prefix="bench-journal-"))
    figures: dict[str, Any] = {"quick": args.quick, "rate": RATE, "duplicates": DUPLICATES}
    try:
        with TemporaryPostgres() as postgres:
            with servers([[sys.executable, str(HERE / "_journal_load.py"), "ceiling"]]) as urls:
                payloads = deliveries(1, sizes["saturate"], random.Random(1))
                ceiling = run_part(
                    "loadgen",
                    {"urls": urls, "payloads": payloads, "mode": "saturate", "per_url": 48},
                    folder,
                )
            figures["ceiling_deliveries_per_s"] = round(ceiling["per_s"], 1)
            for count in (1, 3):
                measure("memory", "memory:", count, sizes, folder, figures)
                measure("sqlite", str(folder / f"journal-{count}.sqlite3"), count, sizes,
                        folder, figures)  # fmt: skip
                measure("pg", postgres.url(), count, sizes, folder, figures)
            # A fleet's receivers: every order tracked, so each claim writes its change
            # and NOTIFY too (the runs above are a webhook-only backend's, issue 14's).
            measure("pg_tracked", postgres.url(), 3, sizes, folder, figures, tracked=True)
            measured = [(n, c) for n in ("sqlite", "pg") for c in (1, 3)] + [("pg_tracked", 3)]
            for name, count in measured:
                figures[f"{name}_ratio_to_ceiling_{count}"] = round(
                    figures[f"{name}_deliveries_per_s_{count}"]
                    / figures["ceiling_deliveries_per_s"],
                    3,
                )
            floors(figures, postgres, folder, sizes["floor"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return emit(figures, FLOORS, args.quick)


def floors(figures: dict[str, Any], postgres: TemporaryPostgres, folder: Path, count: int) -> None:
    """The database floor (no HTTP), and psycopg's sync and async CPU per statement."""
    for name in ("sqlite", "pg"):
        for processes in (1, 3):
            store = (
                str(folder / f"floor-{processes}.sqlite3") if name == "sqlite" else postgres.url()
            )
            env = {**os.environ, "PYTHONPATH": str(HERE)}
            specs = [json.dumps({"url": store, "prefix": f"p{i}", "count": count})
                     for i in range(processes)]  # fmt: skip
            started = [
                subprocess.Popen(
                    [sys.executable, str(HERE / "_journal_load.py"), "floor", spec],
                    stdout=subprocess.PIPE,
                    text=True,
                    env=env,
                )
                for spec in specs
            ]
            results = [json.loads(p.communicate(timeout=600)[0]) for p in started]
            figures[f"{name}_floor_tx_per_s_{processes}"] = round(
                sum(r["per_s"] for r in results), 1
            )
    drivers = run_part("drivers", {"url": postgres.url(), "count": count}, folder)
    figures["pg_sync_cpu_ms_per_tx"] = round(drivers["sync_cpu_ms"], 4)
    figures["pg_async_cpu_ms_per_tx"] = round(drivers["async_cpu_ms"], 4)


if __name__ == "__main__":
    sys.exit(main())
