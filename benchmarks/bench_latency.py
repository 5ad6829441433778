"""Publish -> receive latency over WebSocket, against the official centrifuge-python client.

One emulator in its own process (``--gc frozen``, the same for both clients)
publishes, for 1,000 orders of 100 users, ``paid`` then ``done`` for every
order: 2,000 publications spread evenly at 500 per second, scheduled inside
the emulator (scripts started before the first one is due), after every
connection is up and caught up.

* ours: one ``Tracker`` (``fetch_details=False``, as the other client fetches
  nothing); a status counts as received when the tracker's ``on_change``
  hook is called with it: like the other client's handler, a callback run as
  the frame is read (``p50_ms``, ``p99_ms``, the floors);
* ours through ``tracker.watch``, one watching task per order: received when
  the async iterator yields the change, one task switch later
  (``watch_p50_ms``, ``watch_p99_ms``);
* centrifuge-python: one ``Client`` per user connecting with Xsolla's connect
  data (the channel is a server-side subscription); received when its
  ``on_publication`` handler runs.

The clients take turns on the same emulator, never at the same time, with
fresh users and orders each turn, in a balanced order (``FULL_TURNS``;
``--quick``: one turn each), so that drift in the machine or the emulator
weighs on all alike; each client's latencies are pooled.
Before publishing, each turn collects the garbage of its warm-up
(``gc.collect()``), the same for both.  Latency = the application's
``time.time()`` minus the emulator's ``published_at``.  The in-process split
(``in_process_p50_us``) is the client's own part: from the moment the frame
that carried a status is handed to the client library (its socket's receive
method, timed the same way for both) to the application's callback.  Any
run, even ``--quick``, fails when a status is lost or delivered twice.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import Any

import anyio
from _common import (
    CentrifugeFleet,
    FrameClock,
    Key,
    Orders,
    create_orders,
    emit,
    even_schedule,
    following,
    latencies_ms,
    ms,
    percentile,
    publications_of,
    publish_rate,
    publish_start,
    run,
    run_schedule,
)

from orderfsm.supervisor.records import Change, StatusChange
from transports.centrifuge.aiohttp_socket import AiohttpSocket
from transports.emulator import EmulatorClient, EmulatorProcess, Publication

FLOORS = {
    "in_process_ratio_p50": ("<=", 1.0),
    "ratio_p50": ("<=", 1.0),
    "ratio_p99": ("<=", 1.5),
}
"""All against centrifuge-python in the same run.  The end-to-end p50 is mostly
the emulator and the loopback, so a 2x slower client moves ``ratio_p50`` only a
little; ``in_process_ratio_p50`` (frame read -> application, measured 0.72)
is our part alone, and doubling it fails the floor."""
STATUSES = ("paid", "done")
EMULATOR_GC = "frozen"
FULL_TURNS = (
    *("theirs", "ours", "watch"),
    *("ours", "watch", "theirs"),
    *("watch", "theirs", "ours"),
    *("theirs", "watch", "ours"),
    *("ours", "theirs", "watch"),
    *("watch", "ours", "theirs"),
)
"""Every order of the three clients once: each one turns up in each place twice.
One turn's p50 drifts by about 10% from the next on a shared machine, for any
client; six pooled turns each keep that drift from deciding the ratio."""
QUICK_TURNS = ("theirs", "ours", "watch")
TURN_NAMES = {"theirs": "centrifuge-python", "ours": "on_change", "watch": "watch"}


class Received:
    """Receive times by (order id, status); wakes the turn when every final is in."""

    def __init__(self, finals: int) -> None:
        self.at: dict[Key, float] = {}
        self.perf: dict[Key, float] = {}
        """``time.perf_counter()`` at the same moment, for the in-process split."""
        self.read_at: dict[Key, float] = {}
        """When the frame that carried each publication reached the client library."""
        self.duplicated = 0
        self.finals_left = finals
        self.all_final = anyio.Event()

    def record(self, order_id: int, status: str) -> None:
        key = (order_id, status)
        if key in self.at:
            self.duplicated += 1
            return
        self.perf[key] = time.perf_counter()
        self.at[key] = time.time()
        if status == STATUSES[-1]:
            self.finals_left -= 1
            if self.finals_left == 0:
                self.all_final.set()


async def publish_and_wait(
    emu: EmulatorClient, orders: Orders, received: Received, rate: float
) -> float:
    """Publish on schedule, wait for every final (bounded); return the scripts' lateness."""
    gc.collect()  # the warm-up's garbage, not the measurement's
    ids = orders.ids
    plan = even_schedule(ids, STATUSES, rate, publish_start(len(ids)))
    late = await run_schedule(emu, plan)
    last = max(at for steps in plan.values() for at, _ in steps)
    with anyio.move_on_after(max(last - time.time(), 0.0) + 10.0):
        await received.all_final.wait()
    return late


async def ours(
    emu: EmulatorClient, project_id: int, orders: Orders, rate: float, *, via_watch: bool
) -> Received:
    received = Received(len(orders.ids))

    def on_change(change: Change) -> None:
        if isinstance(change, StatusChange):
            received.record(change.order_id, change.status.value)

    frames = FrameClock()
    with frames.watching(AiohttpSocket, "data"):
        async with following(emu, project_id, orders.owner(), on_change, via_watch=via_watch):
            await publish_and_wait(emu, orders, received, rate)
    received.read_at = frames.read_at()
    return received


async def theirs(emu: EmulatorClient, project_id: int, orders: Orders, rate: float) -> Received:
    received = Received(len(orders.ids))

    def on_publication(data: dict[str, Any]) -> None:
        received.record(data["order_id"], data["status"])

    from websockets.asyncio.connection import Connection

    frames = FrameClock()
    with frames.watching(Connection, "recv"):  # the socket centrifuge-python reads
        async with CentrifugeFleet(emu, project_id, orders.users, on_publication=on_publication):
            await publish_and_wait(emu, orders, received, rate)
    received.read_at = frames.read_at()
    return received


def figures(
    label: str, turns: list[tuple[Orders, Received]], pubs: dict[Key, Publication]
) -> dict[str, Any]:
    values: list[float] = []
    inside: list[float] = []
    lost = duplicated = 0
    for orders, received in turns:
        keys = [(oid, s) for oid in orders.ids for s in STATUSES]
        turn_values, turn_lost = latencies_ms(pubs, received.at, keys)
        values += turn_values
        lost += turn_lost
        duplicated += received.duplicated
        inside += [
            (received.perf[k] - received.read_at[k]) * 1e6
            for k in keys
            if k in received.perf and k in received.read_at
        ]
    return {
        f"{label}p50_ms": ms(percentile(values, 50)),
        f"{label}p90_ms": ms(percentile(values, 90)),
        f"{label}p99_ms": ms(percentile(values, 99)),
        f"{label}max_ms": ms(max(values, default=float("nan"))),
        f"{label}in_process_p50_us": round(percentile(inside, 50), 1),
        f"{label}in_process_p99_us": round(percentile(inside, 99), 1),
        f"{label}lost": lost,
        f"{label}duplicated": duplicated,
    }


async def measure(users: int, per_user: int, rate: float, turns: tuple[str, ...]) -> dict[str, Any]:
    done: dict[str, list[tuple[Orders, Received]]] = {"ours": [], "watch": [], "theirs": []}
    async with EmulatorProcess(gc=EMULATOR_GC) as emu:
        project_id = int((await emu.info())["project_id"])
        for number, client in enumerate(turns):
            orders = await create_orders(emu, f"{client}-{number}", users, per_user)
            if client == "theirs":
                received = await theirs(emu, project_id, orders, rate)
            else:
                received = await ours(emu, project_id, orders, rate, via_watch=client == "watch")
            done[client].append((orders, received))
        all_ids = [oid for runs in done.values() for orders, _ in runs for oid in orders.ids]
        pubs = await publications_of(emu, all_ids)
    result: dict[str, Any] = {
        "benchmark": "latency",
        "orders": users * per_user,
        "users": users,
        "publications": len(STATUSES) * users * per_user,
        "target_rate_per_s": rate,
        "achieved_rate_per_s": round(
            min(
                publish_rate(pubs[(oid, s)] for oid in orders.ids for s in STATUSES)
                for runs in done.values()
                for orders, _ in runs
            )
        ),
        **figures("", done["ours"], pubs),
        **figures("watch_", done["watch"], pubs),
        **figures("centrifuge_python_", done["theirs"], pubs),
        "turns": "-".join(TURN_NAMES[t] for t in turns),
        "emulator": "separate process",
        "emulator_gc": EMULATOR_GC,
        "client_gc": "default; gc.collect() after each warm-up",
        "fetch_details": False,
    }
    result["ratio_p50"] = round(result["p50_ms"] / result["centrifuge_python_p50_ms"], 3)
    result["ratio_p99"] = round(result["p99_ms"] / result["centrifuge_python_p99_ms"], 3)
    result["watch_ratio_p50"] = round(
        result["watch_p50_ms"] / result["centrifuge_python_p50_ms"], 3
    )
    result["in_process_ratio_p50"] = round(
        result["in_process_p50_us"] / result["centrifuge_python_in_process_p50_us"], 3
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for the test suite")
    args = parser.parse_args(argv)
    users, per_user, turns = (20, 5, QUICK_TURNS) if args.quick else (100, 10, FULL_TURNS)
    result = anyio.run(measure, users, per_user, 500.0, turns, backend="asyncio")
    result["quick"] = args.quick
    return emit(result, FLOORS, args.quick)


if __name__ == "__main__":
    run(main)
