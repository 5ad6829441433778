"""Run one schedule: a tracker against the emulator while the schedule's faults happen.

The application side (``soak_app.py``) is what a real one does: ``track`` each
order, read ``watch`` and ``wait`` for it, and route webhooks to the tracker.  The
emulator side plays the schedule (status steps and faults at their times).
Once every order has ended, the tracker is closed and the schedule's tasks
and WebSocket connections must be gone.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import anyio
import attrs
from anyio.abc import TaskGroup
from soak_app import AppOrder, follow, follow_peer
from soak_env import SCHEDULE, TaskProbe, WebhookRouter, settle
from soak_faults import Player
from soak_judge import Seen, Truth, Verdict, fleet_verdict, judge
from soak_schedule import Schedule
from soak_stats import Counted, stats_mismatches

from orderfsm.interface import HealthReport
from orderfsm.metrics import TrackerStats
from orderfsm.supervisor.policy import DefaultPolicy
from orderfsm.supervisor.records import Change, StatusChange
from orderfsm.supervisor.tracker import Tracker
from orderfsm.testing import SteppedClock, eventually
from transports.centrifuge import EngineConfig
from transports.emulator import EmulatorClient, User
from transports.emulator.webhooks import NO_RETRY_STATUSES

SABOTAGES = ("wrong", "lost", "leak")
"""Deliberately broken runs, to show the soak catches each kind of failure:
``wrong`` tells the tracker a status the first order never has; ``lost``
hides the first order's final status from every transport; ``leak`` leaves a
task and a socket behind."""

CLOSE_GRACE = 1.5
"""How long the emulator may take to see a closed socket closed."""
HANG_MARGIN = 20.0
"""A schedule still running this long after its deadline is hung."""
WEBHOOK_GRACE = 5.0
"""How long webhook deliveries may take to be answered before the tracker closes anyway."""


@attrs.define
class Harness:
    """What schedules share; built by ``soak.py``."""

    emu: EmulatorClient
    router: WebhookRouter
    probe: TaskProbe
    project_id: int
    background: TaskGroup
    """Outlives the schedules (used only by the ``leak`` sabotage)."""
    sabotage: str | None = None
    journal: Callable[[int], str] | None = None
    """``--fleet``: a new journal URL for a schedule's seed.  A second tracker
    (another instance: journal only, no transport of its own) follows the same
    orders, and must see what the first one saw (``fleet_verdict``)."""


@attrs.frozen
class OrderOutcome:
    order_id: int
    index: int
    """The order's place in the schedule."""
    truth: Truth
    verdict: Verdict
    trail: tuple[str, ...] = ()
    """The order's health reports and changes, for a failure's diagnosis."""


@attrs.frozen
class Outcome:
    seed: int
    orders: tuple[OrderOutcome, ...]
    leaked_tasks: tuple[str, ...]
    leaked_sockets: tuple[str, ...]
    """WebSocket connections the emulator still sees open for the schedule's users."""
    lingering_tasks: int
    """Tasks still running when the tracker had closed, that ended moments later."""
    harness_errors: tuple[str, ...]
    stats_mismatches: tuple[str, ...]
    """Where ``tracker.stats()`` disagrees with what the application counted."""
    stats: TrackerStats
    faults: tuple[str, ...]
    socket_ends: tuple[str, ...]
    """How each of the users' WebSocket connections ended, as the emulator saw it."""
    seconds: float


def _policy(schedule: Schedule, sabotage: str | None) -> DefaultPolicy:
    t = schedule.timings
    return DefaultPolicy(
        poll_interval=t.poll_interval,
        deadline=3.0 if sabotage == "lost" else t.deadline,
        websocket_lifespan=t.websocket_lifespan,
        safety_poll_interval=t.safety_poll_interval,
        connect_grace=t.connect_grace,
        expired_grace=t.expired_grace,
        expired_poll_interval=t.expired_poll_interval,
    )


def _brief(change: Change) -> str:
    if isinstance(change, StatusChange):
        return f"change {change.previous} -> {change.status} via {change.source}"
    return f"conflict {change.current} then {change.observed} via {change.source}"


async def run_schedule(h: Harness, schedule: Schedule) -> Outcome:
    started = time.perf_counter()
    emu = h.emu
    errors: list[str] = []
    users = [await emu.create_user() for _ in range(schedule.users)]
    orders: list[AppOrder] = []
    for index, plan in enumerate(schedule.orders):
        user = users[plan.user]
        order_id = await emu.create_order(user, publish=plan.publish_new)
        orders.append(AppOrder(index, order_id, user, ["new"]))
    journal = None if h.journal is None else h.journal(schedule.seed)
    tracker = Tracker(
        project_id=h.project_id,
        ws_url=emu.ws_url,
        api_url=emu.api_url,
        transports=("websocket", "polling", "webhook"),
        journal=journal,
        policy=_policy(schedule, h.sabotage),
        websocket_options={
            "config": EngineConfig(
                project_id=h.project_id,
                min_reconnect_delay=0.02,
                max_reconnect_delay=0.1,
                max_server_ping_delay=0.2,
                connect_timeout=1.0,
                request_timeout=1.0,
            )
        },
        fetch_details=True,
        details_timeout=1.0,
        until=schedule.timings.until,
        sleep_clock=(clock := SteppedClock()),
    )
    peer = (
        None
        if journal is None
        else Tracker(
            project_id=h.project_id,
            transports=("journal",),
            journal=journal,
            policy=_policy(schedule, h.sabotage),
            fetch_details=False,
            until=schedule.timings.until,
        )
    )
    for order in orders:
        h.router.register(order.order_id, tracker)
    start = anyio.current_time()
    by_id = {order.order_id: order for order in orders}

    def on_report(order_id: int, report: HealthReport) -> None:
        gap = " gap" if report.gap else ""
        by_id[order_id].reports.append(
            f"{report.at - start:.3f} {report.source} {report.health.value}{gap} {report.reason}"
        )

    tracker.on_report = on_report
    player = Player(
        emu,
        schedule,
        [o.order_id for o in orders],
        users,
        [o.path for o in orders],
        start,
        clock,
        sabotage=h.sabotage,
    )
    tag = SCHEDULE.set(schedule.seed)
    try:
        with anyio.fail_after(schedule.timings.deadline + HANG_MARGIN):
            # Watches that follow past the settlement end when the tracker closes,
            # so their task group is outside it.
            async with (
                anyio.create_task_group() as following,
                tracker,
                contextlib.nullcontext() if peer is None else peer,
                anyio.create_task_group() as driver,
            ):
                driver.start_soon(player.play)
                async with anyio.create_task_group() as followers:
                    for order in orders:
                        followers.start_soon(follow, h, schedule, tracker, order, start, following)
                        if peer is not None:
                            followers.start_soon(follow_peer, schedule, peer, order, start)
                # What comes after the settlements (a refund) must be heard too:
                # every step played, every webhook sent so far answered.
                await player.steps_played.wait()
                unanswered = await _webhooks_answered(emu, [o.order_id for o in orders], player)
                if unanswered is not None:
                    errors.append(unanswered)
                driver.cancel_scope.cancel()  # faults planned after the last step
    except TimeoutError:
        errors.append(f"hung: still running {schedule.timings.deadline + HANG_MARGIN} s in")
    finally:
        errors += player.errors
        SCHEDULE.reset(tag)
        for order in orders:
            h.router.unregister(order.order_id)

    counted = [Counted(o.result, o.wait_exception, tuple(o.followed)) for o in orders]
    stats = tracker.stats()
    mismatches = stats_mismatches(stats, counted)

    # Leaks: a tracker that has closed leaves no task and no socket behind.
    lingering = h.probe.alive(schedule.seed)
    leaked_tasks = await settle(lambda: h.probe.alive(schedule.seed), within=0.5)
    h.probe.forget(schedule.seed)
    leaked_sockets, socket_ends = await _open_connections(emu, users)

    outcomes = []
    for order in orders:
        final = str((await emu.order(order.order_id))["status"])
        webhooked = frozenset(player.webhooked.get(order.index, ()))
        truth = Truth(
            tuple(order.path),
            final,
            schedule.timings.until,
            webhooked,
            asked_at=player.asked_at.get(order.index, {}),
            expired_grace=schedule.timings.expired_grace,
        )
        followed = tuple(order.followed) if order.follow_error is None else None
        if order.follow_error is not None and order.wait_error is None:
            errors.append(
                f"order {order.order_id}: the following watch raised {order.follow_error}"
            )
        seen = Seen(
            tuple(order.watched), order.watch_error, order.result, order.wait_error, followed
        )
        verdict = judge(truth, seen)
        late_watch = [*order.late] if order.late_error is None else None
        if late_watch is not None and late_watch != order.watched:
            verdict = attrs.evolve(
                verdict,
                wrong=True,
                reasons=(
                    *verdict.reasons,
                    f"a later watch replayed {[str(c) for c in late_watch]}, "
                    f"the first saw {[str(c) for c in order.watched]}",
                ),
            )
        if peer is not None:
            peer_seen = Seen(
                tuple(order.peer_watched),
                order.peer_watch_error,
                order.peer_result,
                order.peer_wait_error,
                None,
            )
            verdict = fleet_verdict(truth, verdict, seen, peer_seen)
        trail: tuple[str, ...] = ()
        if not verdict.ok:
            changes = [f"{c.at - start:.3f} {_brief(c)}" for c in order.watched]
            after = [f"{c.at - start:.3f} followed: {_brief(c)}" for c in order.followed]
            theirs = [f"{c.at - start:.3f} peer: {_brief(c)}" for c in order.peer_watched]
            trail = (*order.reports, *changes, *after, *theirs)
        outcomes.append(OrderOutcome(order.order_id, order.index, truth, verdict, trail))
    return Outcome(
        seed=schedule.seed,
        orders=tuple(outcomes),
        leaked_tasks=tuple(leaked_tasks),
        leaked_sockets=tuple(leaked_sockets),
        lingering_tasks=len(lingering),
        harness_errors=tuple(errors),
        stats_mismatches=tuple(mismatches),
        stats=stats,
        faults=tuple(player.applied),
        socket_ends=socket_ends,
        seconds=time.perf_counter() - started,
    )


async def _open_connections(
    emu: EmulatorClient, users: list[User]
) -> tuple[list[str], tuple[str, ...]]:
    """The users' WebSocket connections the emulator still has open (stalled ones
    are the emulator's own doing: it stopped reading them on purpose), and how
    every one of their connections ended (close code and reason), for the report."""

    async def look() -> tuple[list[str], tuple[str, ...]]:
        found, ends = [], []
        for user in users:
            for conn in await emu.connections(user):
                if conn.state in ("connecting", "connected"):
                    found.append(f"emulator conn {conn.conn_id} of {user.external_id} {conn.state}")
                else:
                    ends.append(f"{conn.close_code} {conn.close_reason}".strip())
        return found, tuple(ends)

    found, ends = await look()
    with contextlib.suppress(TimeoutError), anyio.fail_after(CLOSE_GRACE):
        while found:
            await anyio.sleep(0.05)
            found, ends = await look()
    return found, ends


async def _webhooks_answered(
    emu: EmulatorClient, order_ids: list[int], player: Player
) -> str | None:
    """Until every delivery sent so far has its last answer (bounded): an answer after
    which the emulator, as Xsolla, sends no more (a 2xx, or a 4xx it never retries).
    An attempt that failed (no answer in time, a dropped connection) is retried later,
    perhaps after the tracker closed: counted as answered, as it once was, its webhook
    was then judged lost (soak seed 22 under load).  What is still unanswered at the
    bound is said: the tracker closes anyway, and a webhook it never got is judged
    lost, with this error beside it to say the delivery never finished."""
    finished: set[int] = set()

    async def answered() -> bool:
        for attempt in await emu.webhook_deliveries(order_ids):
            status = attempt.status
            if status is not None and (200 <= status < 300 or status in NO_RETRY_STATUSES):
                finished.add(attempt.delivery_id)
        return len(finished) >= player.webhooks_sent

    try:
        await eventually(answered, timeout=WEBHOOK_GRACE, interval=0.02)
    except TimeoutError:
        return (
            f"webhooks: {len(finished)} of {player.webhooks_sent} deliveries answered"
            f" {WEBHOOK_GRACE} s after the last step; the tracker closed anyway"
        )
    return None
