"""Failover: how fast polling takes over, how fast a silent stall is seen, what
random WebSocket faults cost the settling status, and how fast a host that
slept knows its orders' true status.

One emulator in its own process (server ping 25 s, as Xsolla's Centrifugo;
``--quick``: 1 s) serves four measurements:

* ``close_to_first_poll_ms``: the emulator closes a user's socket with the
  reconnectable code 3000; the tracker reports the WebSocket DEGRADED and
  starts polling at once.  From the emulator's ``closed_at`` to its first Get
  order request for the order after it, both wall-clock times in the
  emulator process; the worst of several users (and the median).  Its floor
  is a physical one measured in the same run: a few times a bare Get order's
  round trip (``get_order_rtt_ms``) from this process.
* ``stall_detect_s``: right after a user's connection is caught up, the
  emulator stalls it (no data, no pings, no close).  From just before the
  stall request to the tracker's ``on_report`` saying DEGRADED "no ping"
  (default ``max_server_ping_delay`` 10 s: ping + 10 = 35 s).
  centrifuge-python (same delay) is stalled alongside; its time is when it
  reports reconnecting with its "no ping" code.  The floor is the ratio.
* ``final_latency_p99_ms``: 1,000 orders of 100 users go new -> paid ->
  done (publications spread over 8 s) while a seeded random fault hits a
  user every 100 ms: closes with reconnectable codes, TCP drops, stalls of
  0.5-2 s, duplicated and reordered publications.  From the ``done``
  publication to the tracker's watcher getting it (by whichever transport);
  then the same plan on fresh users with centrifuge-python (one ``Client``
  per user: reconnects and recovers, never polls).  ``lost`` counts finals
  never received.  The tail is stalls, held-back publications and
  reconnects: ours retries a connection that was up a while at once (below
  ``first_reconnect_delay``), one lost soon after catching up from
  ``first_reconnect_delay`` doubling, one that never connected from 0.5 s;
  centrifuge-python backs off from its ``min_reconnect_delay`` (read from
  the library).  ``final_latency_p99_ratio`` is ours / theirs.
* ``resume_to_status_ms``: every socket of several users goes silent (a host
  asleep: no close, no ping) while each user's order becomes ``done``; then
  the host wakes, which the tracker learns from its sleep clock jumping
  ahead.  From the wake to the order's ``done`` on the tracker (a Get order
  at once, and a reconnect), over a few wakes; without it a dead socket is
  found by the missed ping, up to ping + slack later.

Prints one JSON line.  ``lost`` must be 0, ``--quick`` or not.
"""

from __future__ import annotations

import argparse
import inspect
import random
import statistics
import time
from collections import Counter
from collections.abc import Hashable
from typing import Any

import anyio
from _common import (
    CentrifugeFleet,
    Countdown,
    HealthBoard,
    Key,
    Orders,
    create_orders,
    emit,
    even_schedule,
    latencies_ms,
    ms,
    percentile,
    publications_of,
    publish_start,
    run,
    run_schedule,
)

from orderfsm.interface import Health, HealthReport
from orderfsm.supervisor.records import Change, StatusChange
from orderfsm.supervisor.sleep import SLEEP_CHECK_INTERVAL
from orderfsm.supervisor.tracker import Tracker
from orderfsm.testing import SteppedClock
from transports.centrifuge import EngineConfig
from transports.emulator import EmulatorClient, EmulatorProcess, User
from transports.http import open_http_client

FLOORS = {
    "close_to_first_poll_ratio_to_rtt": ("<=", 4.0),
    "stall_detect_ratio": ("<=", 1.05),
    "final_latency_p99_ratio": ("<=", 1.0),
}
MUST_BE_ZERO = ("lost", "centrifuge_python_lost")
EMULATOR_GC = "frozen"
CLOSE_CODE = 3000
RECONNECT_CODES = (3000, 3001, 3008, 3012, 4000)
FAULT_WEIGHTS = {"close": 3, "drop": 2, "stall": 1, "duplicate": 2, "reorder": 2}
FAULT_PERIOD = 0.1
NO_PING_CODE = 2
"""centrifuge-python's connecting code for a missed server ping."""
SEED = 7


class Size:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.ping = 1.0 if quick else 25.0
        self.ping_slack = 1.0 if quick else 10.0
        self.close_users = 5 if quick else 20
        self.stall_users = 2 if quick else 3
        self.fault_users, self.fault_per_user = (10, 5) if quick else (100, 10)
        self.publish_window = 2.0 if quick else 8.0
        self.drain = 20.0 if quick else 60.0
        self.sleepers, self.wakes = (5, 2) if quick else (20, 5)


def their_min_reconnect_delay() -> float:
    """centrifuge-python's own default, as installed."""
    from centrifuge import Client  # type: ignore[import-untyped]

    return float(inspect.signature(Client).parameters["min_reconnect_delay"].default)


def tracker_for(emu: EmulatorClient, project_id: int, size: Size, **options: Any) -> Tracker:
    config = EngineConfig(project_id=project_id, max_server_ping_delay=size.ping_slack)
    return Tracker(
        project_id=project_id,
        ws_url=emu.ws_url,
        api_url=emu.api_url,
        websocket_options={"config": config},
        **options,
    )


def track_all(tracker: Tracker, orders: Orders) -> None:
    owner = orders.owner()
    for order_id in orders.ids:
        user = owner[order_id]
        tracker.track(order_id, token=user.token, user_id=user.external_id)


# --- close -> first poll ------------------------------------------------------------


async def close_to_first_poll(emu: EmulatorClient, project_id: int, size: Size) -> list[float]:
    orders = await create_orders(emu, "close", size.close_users, 1)
    board = HealthBoard(orders.ids)
    async with tracker_for(emu, project_id, size, fetch_details=False, on_report=board) as tracker:
        track_all(tracker, orders)
        await board.wait()
        for user in orders.users:
            await emu.close_connections(user, CLOSE_CODE, "bench failover")
            await anyio.sleep(0.05)
        await anyio.sleep(1.0)
        connections = await emu.connections()
        requests = (await emu.stats()).get_order_requests
    closed = {
        c.user: c.closed_at
        for c in connections
        if c.close_code == CLOSE_CODE and c.closed_at is not None
    }
    delays = []
    for user in orders.users:
        (order_id,) = orders.by_user[user.external_id]
        at = closed[user.external_id]
        after = [t for t in requests.get(order_id, []) if t >= at]
        delays.append((min(after) - at) * 1000.0 if after else float("inf"))
    return delays


# --- silent stall -> detection ---------------------------------------------------------


async def stall_ours(emu: EmulatorClient, project_id: int, size: Size) -> list[float]:
    orders = await create_orders(emu, "stall-ours", size.stall_users, 1)
    board = HealthBoard(orders.ids)
    detected: dict[Hashable, float] = {}
    seen = Countdown(len(orders.ids))

    def on_report(order_id: int, report: HealthReport) -> None:
        board(order_id, report)
        if report.health is Health.DEGRADED and "no ping" in report.reason:
            detected.setdefault(order_id, time.time())
            seen.hit(order_id)

    async with tracker_for(
        emu, project_id, size, fetch_details=False, on_report=on_report
    ) as tracker:
        track_all(tracker, orders)
        await board.wait()
        stalled = {}
        for user in orders.users:
            (order_id,) = orders.by_user[user.external_id]
            await emu.stall_connections(user)
            stalled[order_id] = time.time()  # the emulator confirmed: stalled by now
        await seen.wait(size.ping + size.ping_slack + 15.0, "stalls detected")
    return [detected[oid] - at for oid, at in stalled.items()]


async def stall_theirs(emu: EmulatorClient, project_id: int, size: Size) -> list[float]:
    orders = await create_orders(emu, "stall-theirs", size.stall_users, 1)
    detected: dict[Hashable, float] = {}
    seen = Countdown(len(orders.users))

    def on_connecting(user: str, code: int) -> None:
        if code == NO_PING_CODE:
            detected.setdefault(user, time.time())
            seen.hit(user)

    fleet = CentrifugeFleet(
        emu,
        project_id,
        orders.users,
        on_connecting=on_connecting,
        max_server_ping_delay=size.ping_slack,
    )
    async with fleet:
        stalled = {}
        for user in orders.users:
            await emu.stall_connections(user)
            stalled[user.external_id] = time.time()
        await seen.wait(size.ping + size.ping_slack + 15.0, "stalls detected")
    return [detected[u] - at for u, at in stalled.items()]


# --- final latency under random faults ------------------------------------------------


def fault_plan(size: Size) -> list[tuple[float, int, str, Any]]:
    """(seconds after the first publication, user index, fault, parameter), seeded.

    Reorders and duplicates stop at 3/4 of the window, so the publications
    they hold back are always followed by more for the same user.
    """
    rng = random.Random(SEED)
    kinds = list(FAULT_WEIGHTS)
    weights = list(FAULT_WEIGHTS.values())
    plan = []
    steps = int(size.publish_window / FAULT_PERIOD)
    for step in range(steps):
        at = step * FAULT_PERIOD
        kind = rng.choices(kinds, weights)[0]
        if kind in ("reorder", "duplicate") and at > size.publish_window * 0.75:
            kind = "close"
        param: Any = {
            "close": rng.choice(RECONNECT_CODES),
            "drop": None,
            "stall": round(rng.uniform(0.5, 2.0), 2),
            "duplicate": rng.randint(1, 3),
            "reorder": rng.randint(2, 3),
        }[kind]
        plan.append((at, rng.randrange(size.fault_users), kind, param))
    return plan


async def inject(
    emu: EmulatorClient, users: tuple[User, ...], start: float, size: Size
) -> Counter[str]:
    done: Counter[str] = Counter()
    for at, index, kind, param in fault_plan(size):
        await anyio.sleep(max(start + at - time.time(), 0.0))
        user = users[index]
        if kind == "close":
            await emu.close_connections(user, param, "bench fault")
        elif kind == "drop":
            await emu.drop_connections(user)
        elif kind == "stall":
            await emu.stall_connections(user, param)
        elif kind == "duplicate":
            await emu.duplicate_publications(user, param)
        else:
            await emu.reorder_publications(user, param)
        done[kind] += 1
    return done


class Finals:
    def __init__(self, expected: int) -> None:
        self.at: dict[Key, float] = {}
        self.sources: Counter[str] = Counter()
        self.left = expected
        self.all_in = anyio.Event()

    def record(self, order_id: int, source: str) -> None:
        key = (order_id, "done")
        if key in self.at:
            return
        self.at[key] = time.time()
        self.sources[source] += 1
        self.left -= 1
        if self.left == 0:
            self.all_in.set()


async def publish_with_faults(
    emu: EmulatorClient, orders: Orders, finals: Finals, size: Size
) -> Counter[str]:
    ids = orders.ids
    rate = len(ids) * 2 / size.publish_window
    start = publish_start(len(ids))
    await run_schedule(emu, even_schedule(ids, ("paid", "done"), rate, start))
    faults = await inject(emu, orders.users, start, size)
    with anyio.move_on_after(max(start + size.publish_window - time.time(), 0) + size.drain):
        await finals.all_in.wait()
    return faults


async def faults_ours(
    emu: EmulatorClient, project_id: int, size: Size
) -> tuple[Orders, Finals, Counter[str]]:
    orders = await create_orders(emu, "faults-ours", size.fault_users, size.fault_per_user)
    owner = orders.owner()
    finals = Finals(len(orders.ids))
    board = HealthBoard(orders.ids)
    async with tracker_for(emu, project_id, size, on_report=board) as tracker:

        async def watch(order_id: int) -> None:
            user = owner[order_id]
            async for change in tracker.watch(order_id, token=user.token, user_id=user.external_id):
                if isinstance(change, StatusChange) and change.settled:
                    finals.record(order_id, change.source)

        async with anyio.create_task_group() as tg:
            for order_id in orders.ids:
                tg.start_soon(watch, order_id)
            await board.wait()
            faults = await publish_with_faults(emu, orders, finals, size)
            tg.cancel_scope.cancel()
    return orders, finals, faults


async def faults_theirs(
    emu: EmulatorClient, project_id: int, size: Size
) -> tuple[Orders, Finals, Counter[str]]:
    orders = await create_orders(emu, "faults-theirs", size.fault_users, size.fault_per_user)
    finals = Finals(len(orders.ids))

    def on_publication(data: dict[str, Any]) -> None:
        if data.get("status") == "done":
            finals.record(data["order_id"], "websocket")

    fleet = CentrifugeFleet(
        emu,
        project_id,
        orders.users,
        on_publication=on_publication,
        max_server_ping_delay=size.ping_slack,
    )
    async with fleet:
        faults = await publish_with_faults(emu, orders, finals, size)
    return orders, finals, faults


async def final_figures(
    emu: EmulatorClient, label: str, run: tuple[Orders, Finals, Counter[str]]
) -> dict[str, Any]:
    orders, finals, faults = run
    pubs = await publications_of(emu, orders.ids)
    values, lost = latencies_ms(pubs, finals.at, [(oid, "done") for oid in orders.ids])
    figures: dict[str, Any] = {
        f"{label}final_latency_p50_ms": ms(percentile(values, 50)),
        f"{label}final_latency_p99_ms": ms(percentile(values, 99)),
        f"{label}final_latency_max_ms": ms(max(values, default=float("nan"))),
        f"{label}lost": lost,
    }
    if not label:
        figures["final_sources"] = dict(finals.sources)
        figures["faults"] = dict(faults)
    return figures


# --- a host that slept -> the true status -------------------------------------------


async def resume_to_status(emu: EmulatorClient, project_id: int, size: Size) -> list[float]:
    """Per order and wake: seconds from the wake to the tracker's ``done``."""
    delays: list[float] = []
    for wake in range(size.wakes):
        delays += await one_wake(emu, project_id, size, f"sleep-{wake}")
    return delays


async def one_wake(emu: EmulatorClient, project_id: int, size: Size, label: str) -> list[float]:
    orders = await create_orders(emu, label, size.sleepers, 1)
    board = HealthBoard(orders.ids)
    clock = SteppedClock()
    done: dict[int, float] = {}
    all_done = Countdown(len(orders.ids))

    def on_change(change: Change) -> None:
        if isinstance(change, StatusChange) and change.settled:
            done.setdefault(change.order_id, time.time())
            all_done.hit(change.order_id)

    async with tracker_for(
        emu, project_id, size, on_report=board, on_change=on_change, sleep_clock=clock
    ) as tracker:
        track_all(tracker, orders)
        await board.wait()
        for user in orders.users:
            await emu.suspend(user)
        for order_id in orders.ids:
            await emu.set_status(order_id, "done")  # into the history, not to the socket
        for user in orders.users:
            await emu.resume(user)
        # A host wakes at any moment of the tracker's sleep checks.
        await anyio.sleep(random.uniform(0.0, SLEEP_CHECK_INTERVAL))
        woke = time.time()
        clock.step(3600.0)
        await all_done.wait(size.ping + size.ping_slack + 15.0, "orders after a wake")
    return [done[oid] - woke for oid in orders.ids]


async def get_order_rtt(emu: EmulatorClient, project_id: int) -> list[float]:
    """Bare Get order round trips from this process: the floor under any failover."""
    orders = await create_orders(emu, "rtt", 1, 1)
    (order_id,) = orders.ids
    (user,) = orders.users
    url = f"{emu.api_url}/v2/project/{project_id}/order/{order_id}"
    headers = {"Authorization": f"Bearer {user.token}"}
    times = []
    async with open_http_client() as http:
        for _ in range(30):
            start = time.perf_counter()
            await http.request("GET", url, headers=headers, timeout=10.0)
            times.append(time.perf_counter() - start)
    return times


# --- all together ------------------------------------------------------------------


async def measure(size: Size) -> dict[str, Any]:
    async with EmulatorProcess(ping_interval=size.ping, gc=EMULATOR_GC) as emu:
        project_id = int((await emu.info())["project_id"])
        stalls: dict[str, list[float]] = {}

        async def stall(label: str, body: Any) -> None:
            stalls[label] = await body(emu, project_id, size)

        async with anyio.create_task_group() as tg:
            # The stalls only wait on timers: the light close test runs meanwhile,
            # the busy fault test after them, so that no load delays the timers.
            tg.start_soon(stall, "ours", stall_ours)
            tg.start_soon(stall, "theirs", stall_theirs)
            rtt = await get_order_rtt(emu, project_id)
            closes = await close_to_first_poll(emu, project_id, size)
            resumes = await resume_to_status(emu, project_id, size)
        ours = await final_figures(emu, "", await faults_ours(emu, project_id, size))
        theirs = await final_figures(
            emu, "centrifuge_python_", await faults_theirs(emu, project_id, size)
        )
    rtt_p50_ms = statistics.median(rtt) * 1000.0
    stall_detect, their_stall_detect = max(stalls["ours"]), max(stalls["theirs"])
    return {
        "benchmark": "failover",
        "close_to_first_poll_ms": ms(max(closes)),
        "close_to_first_poll_p50_ms": ms(statistics.median(closes)),
        "get_order_rtt_ms": ms(rtt_p50_ms),
        "close_to_first_poll_ratio_to_rtt": round(statistics.median(closes) / rtt_p50_ms, 2),
        "close_samples": len(closes),
        "close_code": CLOSE_CODE,
        "stall_detect_s": round(stall_detect, 3),
        "centrifuge_python_stall_detect_s": round(their_stall_detect, 3),
        "stall_detect_ratio": round(stall_detect / their_stall_detect, 3),
        "stall_samples": len(stalls["ours"]),
        "resume_to_status_ms": ms(percentile([r * 1000.0 for r in resumes], 50)),
        "resume_to_status_max_ms": ms(max(resumes) * 1000.0),
        "resume_samples": len(resumes),
        "sleep_check_interval_s": SLEEP_CHECK_INTERVAL,
        "server_ping_s": size.ping,
        "max_server_ping_delay_s": size.ping_slack,
        **ours,
        **theirs,
        "final_latency_p99_ratio": round(
            ours["final_latency_p99_ms"] / theirs["centrifuge_python_final_latency_p99_ms"], 3
        ),
        "fault_orders": size.fault_users * size.fault_per_user,
        "fault_users": size.fault_users,
        "publish_window_s": size.publish_window,
        "fault_every_s": FAULT_PERIOD,
        "fault_seed": SEED,
        "emulator": "separate process",
        "emulator_gc": EMULATOR_GC,
        "policy": "DefaultPolicy() (poll every 3 s while the WebSocket is not healthy)",
        "min_reconnect_delay_s": EngineConfig(project_id=1).min_reconnect_delay,
        "first_reconnect_delay_s": EngineConfig(project_id=1).first_reconnect_delay,
        "centrifuge_python_min_reconnect_delay_s": their_min_reconnect_delay(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for the test suite")
    args = parser.parse_args(argv)
    result = anyio.run(measure, Size(args.quick), backend="asyncio")
    result["quick"] = args.quick
    code = emit(result, FLOORS, args.quick)
    return code or int(any(result[key] for key in MUST_BE_ZERO))


if __name__ == "__main__":
    run(main)
