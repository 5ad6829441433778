"""Memory, CPU and throughput with 10,000 orders of 1,000 users tracked at once.

The emulator runs in its own process; each client under test runs in a child
process of its own, so its peak RSS (``ru_maxrss``) and CPU time are its
alone:

* ours: one ``Tracker`` (``fetch_details=False``: no Get order per finished
  order, so only the WebSocket path is measured) counting changes in its
  ``on_change`` hook, as the other client counts in its handler (the plain
  figures: ``peak_rss_mb``, ``cpu_us_per_event`` and the rest);
* ours again with one ``tracker.watch`` consumer task per order, as an
  application waiting on each order would have (``watch_`` figures);
* centrifuge-python: the naive alternative, one ``Client`` per user, counting
  publications in ``on_publication`` (it has no notion of orders, so it
  holds less: a floor to compare with, not an equal).

Every order is created ``new`` (published before anyone connects: ours reads
it from history); once every client is connected and caught up, the
emulator publishes ``paid`` then ``done`` for every order at a high rate.
``events_per_s`` counts status changes delivered to the application per wall
second, from the first of those publications to the last delivery.  The
floors compare ours with centrifuge-python in the same run (``rss_ratio``,
``cpu_ratio``) and with the publication rate (``keeps_up``); any run, even
``--quick``, fails when a change is lost or delivered twice.  Prints one JSON
line.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import attrs
from _common import (
    CONNECT_TIMEOUT,
    CentrifugeFleet,
    Orders,
    create_orders,
    emit,
    even_schedule,
    following,
    publications_of,
    publish_rate,
    publish_start,
    run,
    run_schedule,
)

from orderfsm.supervisor.records import Change, StatusChange
from transports.emulator import EmulatorClient, EmulatorProcess, User

FLOORS = {"rss_ratio": ("<=", 1.2), "cpu_ratio": ("<=", 1.5), "keeps_up": (">=", 0.95)}
"""Against the other client in the same run (measured: 0.82 and 0.95, so doubling
our memory per order or our CPU per change fails them) and against the
publication rate, the physical limit of ``events_per_s``."""
STATUSES = ("paid", "done")
EMULATOR_GC = "frozen"
DRAIN_TIMEOUT = 60.0
CLIENTS = (("ours", ""), ("ours-watch", "watch_"), ("theirs", "centrifuge_python_"))
"""Child runs, in order: ours (``on_change``); ours with a ``watch`` task per
order; centrifuge-python.  Figures of the latter two carry the prefix."""


# --- the child: one client under test --------------------------------------------


class Deliveries:
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.keys: set[tuple[Any, Any]] = set()
        self.first = 0.0
        self.last = 0.0
        self.complete = anyio.Event()

    def hit(self, key: tuple[Any, Any]) -> None:
        now = time.time()
        if not self.count:
            self.first = now
        self.count += 1
        self.keys.add(key)
        self.last = now
        if len(self.keys) == self.expected:
            self.complete.set()


class GcPauses:
    """Time the cyclic garbage collector holds the loop, while recording."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._started = 0.0
        self.recording = False

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self.recording:
            self.pauses.append(time.perf_counter() - self._started)


async def tell_parent_and_wait(counter: Deliveries) -> dict[str, Any]:
    """Say ``ready``, wait for ``go`` on stdin, then for every change (bounded)."""
    gc.collect()
    tracked = len(gc.get_objects())
    rss_ready = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    print("ready", flush=True)
    await anyio.to_thread.run_sync(sys.stdin.readline)
    cpu = time.process_time()
    pauses.recording = True
    with anyio.move_on_after(DRAIN_TIMEOUT):
        await counter.complete.wait()
    pauses.recording = False
    gc.callbacks.remove(pauses)
    return {
        "rss_ready_mb": round(rss_ready, 1),
        "gc_objects": tracked,
        "window_cpu_s": round(time.process_time() - cpu, 3),
        "window_gc_s": round(sum(pauses.pauses), 3),
        "gc_max_pause_ms": round(max(pauses.pauses, default=0.0) * 1000, 1),
        "delivered": len(counter.keys),
        "duplicated": counter.count - len(counter.keys),
        "first_delivery": counter.first,
        "last_delivery": counter.last,
    }


async def child_ours(
    emu: EmulatorClient, users: list[User], by_user: dict[str, list[int]], via_watch: bool
) -> dict[str, Any]:
    project_id = int((await emu.info())["project_id"])
    owner = {oid: u for u in users for oid in by_user[u.external_id]}
    counter = Deliveries(len(owner) * len(STATUSES))

    def on_change(change: Change) -> None:
        if isinstance(change, StatusChange) and change.status.value in STATUSES:
            counter.hit((change.order_id, change.status.value))

    async with following(emu, project_id, owner, on_change, via_watch=via_watch):
        return await tell_parent_and_wait(counter)


async def child_theirs(
    emu: EmulatorClient, users: list[User], by_user: dict[str, list[int]]
) -> dict[str, Any]:
    project_id = int((await emu.info())["project_id"])
    counter = Deliveries(sum(len(v) for v in by_user.values()) * len(STATUSES))

    def on_publication(data: dict[str, Any]) -> None:
        if data.get("status") in STATUSES:
            counter.hit((data.get("order_id"), data["status"]))

    async with CentrifugeFleet(emu, project_id, users, on_publication=on_publication):
        return await tell_parent_and_wait(counter)


def child_main(which: str, base_url: str, plan_file: str) -> int:
    plan = json.loads(Path(plan_file).read_text())
    users = [User(**u) for u in plan["users"]]
    by_user = {k: list(v) for k, v in plan["by_user"].items()}
    emu = EmulatorClient(base_url)
    if which == "theirs":
        result = anyio.run(child_theirs, emu, users, by_user, backend="asyncio")
    else:
        via_watch = which == "ours-watch"
        result = anyio.run(child_ours, emu, users, by_user, via_watch, backend="asyncio")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = round(
        usage.ru_utime + usage.ru_stime, 3
    )  # the whole child, start-up included
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    print(json.dumps(result), flush=True)
    return 0


# --- the parent: emulator, orders, schedule, figures ---------------------------------


async def run_child(
    which: str, emu: EmulatorClient, orders: Orders, rate: float, plan_file: str
) -> tuple[dict[str, Any], float]:
    """Start the child, publish once it is ready, return its figures and the lateness."""
    command = [
        sys.executable,
        __file__,
        "--child",
        which,
        "--base-url",
        emu.base_url,
        "--plan",
        plan_file,
    ]
    async with await anyio.open_process(command, stderr=None) as process:
        assert process.stdin is not None and process.stdout is not None
        lines = _lines(process.stdout)
        with anyio.fail_after(CONNECT_TIMEOUT + 60):
            ready = await anext(lines)
        if ready != "ready":
            raise RuntimeError(f"{which} child said {ready!r}")
        ids = orders.ids
        plan = even_schedule(ids, STATUSES, rate, publish_start(len(ids)))
        late = await run_schedule(emu, plan, concurrency=8)
        await process.stdin.send(b"go\n")
        with anyio.fail_after(DRAIN_TIMEOUT + 60):
            figures = json.loads(await anext(lines))
            await process.wait()
    return figures, late


async def _lines(stream: Any) -> Any:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode().strip()


def write_plan(orders: Orders) -> str:
    """The users and orders, for the child (a file: 10,000 ids do not belong in argv)."""
    plan = {
        "users": [attrs.asdict(u) for u in orders.users],
        "by_user": {k: list(v) for k, v in orders.by_user.items()},
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(plan, f)
    return f.name


async def measure(users: int, per_user: int, rate: float) -> dict[str, Any]:
    result: dict[str, Any] = {
        "benchmark": "scale",
        "orders": users * per_user,
        "users": users,
        "target_rate_per_s": rate,
        "emulator": "separate process",
        "emulator_gc": EMULATOR_GC,
        "fetch_details": False,
        "clients": "each in its own child process, in turn: ours (on_change), "
        "ours (a watch task per order), centrifuge-python",
    }
    async with EmulatorProcess(gc=EMULATOR_GC) as emu:
        for which, prefix in CLIENTS:
            orders = await create_orders(emu, f"scale-{which}", users, per_user)
            plan_file = write_plan(orders)
            try:
                figures, late = await run_child(which, emu, orders, rate, plan_file)
            finally:
                await anyio.Path(plan_file).unlink()
            pubs = [
                p
                for (_, status), p in (await publications_of(emu, orders.ids)).items()
                if status in STATUSES
            ]
            first_published = min(p.published_at for p in pubs)
            expected = len(orders.ids) * len(STATUSES)
            span = figures["last_delivery"] - first_published
            result.update(
                {
                    f"{prefix}peak_rss_mb": figures["peak_rss_mb"],
                    f"{prefix}rss_connected_mb": figures["rss_ready_mb"],
                    f"{prefix}cpu_s": figures["cpu_s"],
                    f"{prefix}window_cpu_s": figures["window_cpu_s"],
                    f"{prefix}window_gc_s": figures["window_gc_s"],
                    f"{prefix}gc_max_pause_ms": figures["gc_max_pause_ms"],
                    f"{prefix}gc_tracked_objects": figures["gc_objects"],
                    f"{prefix}cpu_us_per_event": round(
                        figures["window_cpu_s"] / max(figures["delivered"], 1) * 1e6, 1
                    ),
                    f"{prefix}events": figures["delivered"],
                    f"{prefix}lost": expected - figures["delivered"],
                    f"{prefix}duplicated": figures["duplicated"],
                    f"{prefix}events_per_s": round(figures["delivered"] / span) if span > 0 else 0,
                    f"{prefix}achieved_publish_rate_per_s": round(publish_rate(pubs)),
                    f"{prefix}scripts_late_s": round(late, 3),
                }
            )
    theirs = "centrifuge_python_"
    result["rss_ratio"] = round(result["peak_rss_mb"] / result[f"{theirs}peak_rss_mb"], 3)
    result["cpu_ratio"] = round(result["cpu_us_per_event"] / result[f"{theirs}cpu_us_per_event"], 3)
    result["keeps_up"] = round(result["events_per_s"] / result["achieved_publish_rate_per_s"], 3)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for the test suite")
    parser.add_argument("--child", choices=[c for c, _ in CLIENTS], help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child, args.base_url, args.plan)
    users, per_user, rate = (50, 10, 1000.0) if args.quick else (1000, 10, 5000.0)
    result = anyio.run(measure, users, per_user, rate, backend="asyncio")
    result["quick"] = args.quick
    return emit(result, FLOORS, args.quick)


if __name__ == "__main__":
    run(main)
