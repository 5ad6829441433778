"""Soak: seeded random fault schedules against the emulator, every order checked.

Each seed draws a schedule (``soak_schedule.py``): a few users and orders,
each order's true path, and timed faults (socket closes with reconnectable and
terminal codes, drops, silent stalls, missing pings, duplicated and reordered
publications, history epoch resets, Get order 5xx / 429 / slow periods,
duplicate and badly signed webhooks, statuses hidden from the WebSocket so
polling or a webhook sees them first, junk publications).  About a third of
the schedules are WebSocket-strict: no safety poll, finals always published
and never sent by webhook, so a publication the socket loses without saying
so is a lost order, not one polling happened to find.  A tracker with the
WebSocket, polling and webhooks follows the orders (``soak_run.py``, faults
played by ``soak_faults.py``); what the application got from ``watch`` (from
the start, and once more later, to check the replay) and ``wait`` is compared
with the emulator's truth (``soak_judge.py``).

Schedules run ``--concurrency`` at a time against one emulator in a child
process (fresh every ``--recycle`` schedules) and one webhook receiver, each
with its own tracker and users.  A failing seed prints its problems and the
order's health trail on stderr; ``--seed N`` replays it alone (the plan is the
same; only the timing of real sockets differs, so a failure seen under load
may need its neighbours too: ``--first-seed N-20 --schedules 40``).

Prints one JSON line.  ``lost``, ``duplicated``, ``wrong``, ``leaked_tasks``,
``leaked_sockets`` (and ``harness_errors``) must be 0, else the exit status is
1 and ``failing_seeds`` lists the seeds to replay with ``--seed N``.

What counts as a leak:

* ``leaked_tasks``: tasks started while a schedule ran (by its tracker, or by
  the libraries below it) still running 0.5 s after its tracker closed;
* ``leaked_sockets``: WebSocket connections the emulator still sees open for a
  schedule's users 1.5 s after its tracker closed, plus this process's TCP
  sockets towards the emulator (the emulator runs in a child process, so
  they are all ours) when no schedule is running: checked every
  ``--drain-every`` schedules; such a leak is blamed on every seed since the
  previous check (replay them one by one to find the culprit).

    python benchmarks/soak.py --schedules 10000 --backend trio
    python benchmarks/soak.py --seed 4242          # replay one schedule, alone
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs
from soak_env import TaskProbe, WebhookRouter, settle, sockets_towards
from soak_run import SABOTAGES, Harness, Outcome, run_schedule
from soak_schedule import make_schedule

from transports.emulator.process import EmulatorProcess
from transports.webhook import WebhookReceiver, serve_receiver

SECRET = "soak-webhook-secret"
PING_INTERVAL = 1.0
"""Server pings; the connect reply advertises whole seconds, so 1 s is the shortest
interval a client can be told (it declares the connection dead 1 s +
``max_server_ping_delay`` after the last frame)."""
PONG_TIMEOUT = 0.8
"""Below the ping interval, as Centrifuge requires: with a longer one a server
pings again while a pong is outstanding, and a slow client's second pong then
counts as unsolicited (3501, terminal)."""
MUST_BE_ZERO = (
    "lost",
    "duplicated",
    "wrong",
    "leaked_tasks",
    "leaked_sockets",
    "harness_errors",
    "stats_mismatches",
)
FAILURES_SHOWN = 20


@attrs.frozen
class Options:
    schedules: int = 30
    first_seed: int = 0
    concurrency: int = 24
    drain_every: int = 50
    recycle: int = 1000
    """Start a fresh emulator after this many schedules (it keeps every record)."""
    sabotage: str | None = None
    verbose: bool = False
    progress: bool = False
    fleet: str | None = None
    """``sqlite`` or ``postgresql``: each schedule's tracker writes a journal of
    its own, and a second, journal-only tracker follows the same orders."""

    @property
    def seeds(self) -> range:
        return range(self.first_seed, self.first_seed + self.schedules)


@attrs.define
class Tally:
    schedules: int = 0
    orders: int = 0
    lost: int = 0
    duplicated: int = 0
    wrong: int = 0
    leaked_tasks: int = 0
    leaked_sockets: int = 0
    harness_errors: int = 0
    stats_mismatches: int = 0
    lingering_tasks: int = 0
    failing_seeds: set[int] = attrs.Factory(set)
    failures: list[dict[str, Any]] = attrs.Factory(list)
    faults: Counter[str] = attrs.Factory(Counter)
    final_sources: Counter[str] = attrs.Factory(Counter)
    socket_ends: Counter[str] = attrs.Factory(Counter)
    errors: Counter[str] = attrs.Factory(Counter)
    get_order_answers: Counter[str] = attrs.Factory(Counter)
    websocket_closes: Counter[str] = attrs.Factory(Counter)
    """As the tracker counted them (``tracker.stats()``)."""
    schedule_seconds: list[float] = attrs.Factory(list)

    def add(self, outcome: Outcome) -> None:
        self.schedules += 1
        self.orders += len(outcome.orders)
        self.faults.update(outcome.faults)
        self.socket_ends.update(outcome.socket_ends)
        self.schedule_seconds.append(outcome.seconds)
        self.lingering_tasks += outcome.lingering_tasks
        self.leaked_tasks += len(outcome.leaked_tasks)
        self.leaked_sockets += len(outcome.leaked_sockets)
        self.harness_errors += len(outcome.harness_errors)
        self.stats_mismatches += len(outcome.stats_mismatches)
        self.get_order_answers.update(outcome.stats.get_order)
        if outcome.stats.websocket is not None:
            self.websocket_closes.update(outcome.stats.websocket.closes)
        problems: list[str] = [*outcome.harness_errors, *outcome.stats_mismatches]
        problems += [f"leaked task {t}" for t in outcome.leaked_tasks]
        problems += [f"leaked socket: {s}" for s in outcome.leaked_sockets]
        for order in outcome.orders:
            verdict = order.verdict
            self.lost += verdict.lost
            self.duplicated += verdict.duplicated
            self.wrong += verdict.wrong
            self.final_sources[verdict.final_source or "none"] += 1
            for reason in verdict.reasons:
                if "raised" in reason:
                    self.errors[reason.split(":", 1)[0].rsplit(" ", 1)[-1]] += 1
            if not verdict.ok:
                name = f"order {order.order_id} (#{order.index}, {','.join(order.truth.path)})"
                problems += [f"{name}: {r}" for r in verdict.reasons]
                problems += [f"{name} trail: {line}" for line in order.trail]
        if problems:
            self.fail(outcome.seed, problems)

    def fail(self, seed: int, problems: Sequence[str]) -> None:
        self.failing_seeds.add(seed)
        for problem in problems:
            print(f"soak: seed {seed}: {problem}", file=sys.stderr)
            if len(self.failures) < FAILURES_SHOWN:
                self.failures.append({"seed": seed, "problem": problem})

    def report(self, options: Options, backend: str, seconds: float) -> dict[str, Any]:
        durations = sorted(self.schedule_seconds) or [0.0]
        return {
            "schedules": self.schedules,
            "orders": self.orders,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "wrong": self.wrong,
            "leaked_tasks": self.leaked_tasks,
            "leaked_sockets": self.leaked_sockets,
            "harness_errors": self.harness_errors,
            "stats_mismatches": self.stats_mismatches,
            "failing_seeds": sorted(self.failing_seeds),
            "seconds": round(seconds, 2),
            "schedules_per_s": round(self.schedules / seconds, 3) if seconds else 0.0,
            "schedule_seconds_mean": round(sum(durations) / len(durations), 3),
            "schedule_seconds_p99": round(durations[math.ceil(0.99 * len(durations)) - 1], 3),
            "backend": backend,
            "fleet": options.fleet,
            "concurrency": options.concurrency,
            "first_seed": options.first_seed,
            "faults": dict(sorted(self.faults.items())),
            "final_sources": dict(sorted(self.final_sources.items())),
            "websocket_connections": sum(self.socket_ends.values()),
            "websocket_ends": dict(self.socket_ends.most_common(12)),
            "errors": dict(sorted(self.errors.items())),
            "get_order_answers": dict(sorted(self.get_order_answers.items())),
            "websocket_closes_by_tracker": dict(self.websocket_closes.most_common(12)),
            "lingering_tasks": self.lingering_tasks,
            "failures": self.failures,
        }


async def run_soak(options: Options) -> dict[str, Any]:
    """Run the schedules on the running event loop; returns the report."""
    from transports.backend import on_asyncio

    started = time.perf_counter()
    tally = Tally()
    router = WebhookRouter()
    receiver = WebhookReceiver(SECRET, sink=router)
    seeds = list(options.seeds)
    async with (
        serve_receiver(receiver) as webhook_url,
        anyio.create_task_group() as background,
        _journals(options.fleet) as journal,
    ):
        with TaskProbe() as probe:
            for at in range(0, len(seeds), options.recycle):
                await _one_emulator(
                    seeds[at : at + options.recycle],
                    options,
                    tally,
                    webhook_url,
                    lambda emu: Harness(
                        emu,
                        router,
                        probe,
                        12345,
                        background,
                        sabotage=options.sabotage,
                        journal=journal,
                    ),
                )
        background.cancel_scope.cancel()
    backend = "asyncio" if on_asyncio() else "trio"
    return tally.report(options, backend, time.perf_counter() - started)


@contextlib.asynccontextmanager
async def _journals(fleet: str | None) -> AsyncIterator[Callable[[int], str] | None]:
    """A new journal per schedule: SQLite files in a temporary folder, or schemas
    of a temporary PostgreSQL server (started in a thread: it takes seconds)."""
    if fleet is None:
        yield None
    elif fleet == "sqlite":
        with tempfile.TemporaryDirectory(prefix="soak-fleet-") as folder:
            yield lambda seed: str(Path(folder) / f"journal-{seed}.sqlite3")
    else:
        from transports.journal.testing import TemporaryPostgres

        # Two trackers per schedule, each with a connection pool and a listener.
        server = await anyio.to_thread.run_sync(TemporaryPostgres, "max_connections=1000")
        try:
            yield lambda seed: server.url()
        finally:
            # Shielded: a run ending by cancellation left its server up (two seen at once).
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(server.close)


async def _one_emulator(
    seeds: list[int], options: Options, tally: Tally, webhook_url: str, harness: Any
) -> None:
    process = EmulatorProcess(
        secret=SECRET,
        ping_interval=PING_INTERVAL,
        pong_timeout=PONG_TIMEOUT,
        seed=seeds[0],
        project_id=12345,
    )
    async with process as emu:
        await emu.configure_webhooks(webhook_url)
        port = int(emu.base_url.rsplit(":", 1)[1])
        h: Harness = harness(emu)
        slots = anyio.Semaphore(options.concurrency)
        for at in range(0, len(seeds), options.drain_every):
            batch = seeds[at : at + options.drain_every]
            async with anyio.create_task_group() as tg:
                for seed in batch:
                    await slots.acquire()
                    tg.start_soon(_one, h, seed, slots, tally, options)
            # Nothing runs now: every socket of ours towards the emulator is a leak.
            leaked = await settle(lambda: sockets_towards(port), within=2.0)
            if leaked:
                tally.leaked_sockets += len(leaked)
                for seed in batch:
                    tally.fail(
                        seed, [f"socket left open after seeds {batch[0]}..{batch[-1]}: {leaked}"]
                    )
            if options.progress:
                print(
                    f"soak: {tally.schedules} schedules, {len(tally.failing_seeds)} failing",
                    file=sys.stderr,
                )
        await emu.configure_webhooks(None)


async def _one(
    h: Harness, seed: int, slots: anyio.Semaphore, tally: Tally, options: Options
) -> None:
    try:
        schedule = make_schedule(seed)
        if options.verbose:
            print(json.dumps(schedule.to_json()), file=sys.stderr)
        tally.add(await run_schedule(h, schedule))
    finally:
        slots.release()


def parse(argv: Sequence[str] | None = None) -> tuple[Options, str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedules", type=int, default=30, help="how many seeds to run")
    parser.add_argument("--first-seed", type=int, default=0, help="the first seed")
    parser.add_argument("--seed", type=int, default=None, help="replay this one seed, alone")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument(
        "--concurrency", type=int, default=24, help="schedules running at once (default 24)"
    )
    parser.add_argument("--drain-every", type=int, default=50, help=argparse.SUPPRESS)
    parser.add_argument("--recycle", type=int, default=1000, help=argparse.SUPPRESS)
    parser.add_argument("--verbose", action="store_true", help="print each schedule (stderr)")
    parser.add_argument("--progress", action="store_true", help="progress lines (stderr)")
    parser.add_argument(
        "--fleet",
        choices=("sqlite", "postgresql"),
        default=None,
        help="a journal per schedule, and a second (journal-only) tracker that must see "
        "what the first saw",
    )
    parser.add_argument("--sabotage", choices=SABOTAGES, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    options = Options(
        schedules=args.schedules,
        first_seed=args.first_seed,
        concurrency=args.concurrency,
        drain_every=args.drain_every,
        recycle=args.recycle,
        sabotage=args.sabotage,
        verbose=args.verbose,
        progress=args.progress,
        fleet=args.fleet,
    )
    if args.seed is not None:
        options = attrs.evolve(options, schedules=1, first_seed=args.seed, concurrency=1)
    return options, args.backend


def main(argv: Sequence[str] | None = None) -> int:
    options, backend = parse(argv)
    report = anyio.run(run_soak, options, backend=backend)
    print(json.dumps(report))
    return 1 if any(report[key] for key in MUST_BE_ZERO) else 0


if __name__ == "__main__":
    sys.exit(main())
