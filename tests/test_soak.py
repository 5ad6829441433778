"""The soak (``benchmarks/soak.py``) at a small size, and proof that it can fail.

A few dozen seeded fault schedules run on asyncio and on trio against the
emulator and must come out with no lost, duplicated or wrong status and no
leaked task or socket.  Each deliberately broken run (a lie told to the
tracker, a final status hidden from every transport, a task and a socket left
behind) must be caught.  The schedule generator and the judge are pure and
tested directly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import anyio
import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from soak import MUST_BE_ZERO, Options, run_soak  # noqa: E402
from soak_judge import Seen, Truth, fleet_verdict, judge  # noqa: E402
from soak_schedule import (  # noqa: E402
    FAULT_KINDS,
    HORIZON,
    PATHS,
    TERMINAL_CODES,
    Fault,
    Step,
    make_schedule,
    settles,
)
from soak_stats import Counted, stats_mismatches  # noqa: E402

from orderfsm.core import Status  # noqa: E402
from orderfsm.errors import TrackingTimeout  # noqa: E402
from orderfsm.metrics import TrackerStats  # noqa: E402
from orderfsm.supervisor.records import ConflictSeen, FinalResult, StatusChange  # noqa: E402

ORDER = 7


# --- the schedule generator ------------------------------------------------------


def test_a_seed_always_gives_the_same_schedule_and_seeds_differ() -> None:
    assert make_schedule(42) == make_schedule(42)
    assert len({make_schedule(seed) for seed in range(50)}) == 50


def test_every_schedule_is_playable() -> None:
    """Steps follow each order's path in time; every user has an order; faults name real ones."""
    for seed in range(300):
        schedule = make_schedule(seed)
        assert {o.user for o in schedule.orders} == set(range(schedule.users))
        for index, plan in enumerate(schedule.orders):
            assert plan.path in PATHS
            steps = [s for s in schedule.steps if s.order == index]
            assert tuple(["new", *[s.status for s in steps]]) == plan.path
            assert [s.at for s in steps] == sorted(s.at for s in steps)
            assert plan.late_watch_at > plan.track_at
        resets = [f for f in schedule.faults if f.kind == "new_epoch"]
        for fault in schedule.faults:
            assert fault.kind in (*FAULT_KINDS, "flush")
            if fault.kind == "reorder":  # nothing held across a reset (see the generator)
                assert all(r.at < fault.at for r in resets if r.user == fault.user)
            assert 0 <= fault.at <= HORIZON + 0.3
            assert fault.user is None or fault.user < schedule.users
            assert fault.order is None or fault.order < len(schedule.orders)
            if fault.kind == "webhook_copies":
                # only a notification the order really had by then
                status = {"order_paid": "paid", "order_canceled": "canceled"}[
                    fault.notification or ""
                ]
                assert any(
                    s.order == fault.order and s.status == status and s.at <= fault.at
                    for s in schedule.steps
                )


def test_a_few_hundred_seeds_cover_every_fault_and_hidden_finals() -> None:
    faults: Counter[str] = Counter()
    terminal = hidden_finals = strict = 0
    for seed in range(300):
        schedule = make_schedule(seed)
        if schedule.timings.safety_poll_interval is None:
            # WebSocket-strict: the socket alone must bring what settles an order
            strict += 1
            ends = {(i, o.path[-1]) for i, o in enumerate(schedule.orders)}
            finals = [
                s
                for s in schedule.steps
                if settles(s.status, schedule.timings.until) or (s.order, s.status) in ends
            ]
            assert all(s.publish and not s.webhook for s in finals)
            assert {f.user for f in schedule.faults if f.kind == "flush"} == set(
                range(schedule.users)
            )
            continue
        faults.update(f.kind for f in schedule.faults)
        terminal += sum(f.kind == "close" and f.code in TERMINAL_CODES for f in schedule.faults)
        hidden_finals += sum(
            not s.publish and settles(s.status, schedule.timings.until) for s in schedule.steps
        )
    assert set(faults) == set(FAULT_KINDS)
    assert terminal > 0 and hidden_finals > 0 and 50 < strict < 200


def test_a_few_hundred_seeds_cover_every_life_cycle_and_both_goals() -> None:
    """Expired then paid, refunds after delivery, and servers that settle at paid."""
    paths: Counter[tuple[str, ...]] = Counter()
    goals: Counter[str] = Counter()
    for seed in range(300):
        schedule = make_schedule(seed)
        paths.update(o.path for o in schedule.orders)
        goals[schedule.timings.until] += 1
    assert set(paths) == set(PATHS)
    assert ("new", "expired", "paid", "done") in paths and (
        "new",
        "paid",
        "done",
        "canceled",
    ) in paths
    assert goals["paid"] > 30 and goals["done"] > 150


# --- the judge ----------------------------------------------------------------------


def change(
    status: str, previous: str | None, source: str = "websocket", settled: bool = False
) -> StatusChange:
    skipped: tuple[Status, ...] = ()
    before = None if previous is None else Status(previous)
    return StatusChange(ORDER, Status(status), before, skipped, source, 1.0, settled)


def seen(
    *changes: StatusChange | ConflictSeen,
    final: bool = True,
    followed: tuple[StatusChange, ...] | None = None,
    until: str = "done",
) -> Seen:
    """What a tracker delivers: with ``final``, its last change settled the order
    (unless it is ``expired``: that settles by the end of its grace, not a change)."""
    watched = list(changes)
    status_changes = [c for c in watched if isinstance(c, StatusChange)]
    result = None
    if final:
        last = status_changes[-1]
        if last.status is not Status.EXPIRED:
            last = attrs.evolve(last, settled=True)
            watched[watched.index(status_changes[-1])] = last
            status_changes[-1] = last
        result = FinalResult(
            ORDER, last.status, last.source, last.at, tuple(status_changes), until=Status(until)
        )
    error = None if final else "TrackingTimeout: late"
    return Seen(tuple(watched), error, result, error, followed)


TRUTH = Truth(("new", "paid", "done"), "done")


def test_the_judge_accepts_a_faithful_delivery_even_with_skipped_statuses() -> None:
    assert judge(TRUTH, seen(change("new", None), change("paid", "new"), change("done", "paid"))).ok
    verdict = judge(TRUTH, seen(change("new", None), change("done", "new", "polling")))
    assert verdict.ok and verdict.final_source == "polling"


@pytest.mark.parametrize(
    ("delivered", "final", "kind"),
    [
        ([("new", None), ("paid", "new"), ("paid", "paid"), ("done", "paid")], True, "duplicated"),
        ([("new", None), ("done", "paid")], True, "wrong"),
        ([("new", None), ("canceled", "new")], True, "wrong"),
        ([("paid", None), ("new", "paid"), ("done", "new")], True, "wrong"),
        ([("new", None), ("paid", "new")], False, "lost"),
    ],
)
def test_the_judge_catches_each_kind_of_failure(
    delivered: list[tuple[str, str | None]], final: bool, kind: str
) -> None:
    verdict = judge(TRUTH, seen(*(change(s, p) for s, p in delivered), final=final))
    assert (verdict.lost, verdict.duplicated, verdict.wrong) == (
        kind == "lost",
        kind == "duplicated",
        kind == "wrong",
    ), verdict.reasons


def test_the_judge_allows_what_settles_the_order_and_nothing_earlier() -> None:
    refunded = Truth(("new", "paid", "done", "canceled"), "canceled")
    assert judge(refunded, seen(change("new", None), change("done", "new"))).ok
    assert judge(refunded, seen(change("new", None), change("canceled", "new"))).ok  # looked late
    server = Truth(("new", "expired", "paid", "done"), "done", until="paid")
    assert judge(server, seen(change("new", None), change("paid", "new"), until="paid")).ok
    assert judge(server, seen(change("new", None), change("expired", "new"), until="paid")).wrong
    lapsed = Truth(("new", "expired"), "expired")
    assert judge(lapsed, seen(change("new", None), change("expired", "new"))).ok
    # paid only after the grace the tracker gave the expired order (seen at 1.0): expired is right
    late = Truth(server.path, "done", asked_at={"paid": 4.0}, expired_grace=2.0)
    assert judge(late, seen(change("new", None), change("expired", "new"))).ok
    early = attrs.evolve(late, asked_at={"paid": 2.5})
    assert judge(early, seen(change("new", None), change("expired", "new"))).wrong


def test_the_judge_wants_a_refund_announced_by_webhook_heard_once_after_settling() -> None:
    truth = Truth(
        ("new", "paid", "done", "canceled"), "canceled", webhooked=frozenset({"canceled"})
    )
    watched = (change("new", None), change("paid", "new"), change("done", "paid", settled=True))
    refund = change("canceled", "done", "webhook")
    assert judge(truth, seen(*watched, followed=(*watched, refund))).ok
    assert judge(truth, seen(*watched, followed=watched)).lost
    assert judge(truth, seen(*watched, followed=(*watched, refund, refund))).duplicated
    assert judge(truth, seen(*watched, followed=(refund,))).wrong


def test_the_judge_counts_a_conflict_and_a_final_other_than_the_truth_as_wrong() -> None:
    conflict = ConflictSeen(ORDER, Status.DONE, Status.CANCELED, "webhook", 2.0)
    assert judge(TRUTH, seen(change("done", None), conflict)).wrong
    assert judge(
        Truth(("new", "paid", "canceled"), "canceled"), seen(change("paid", None), final=False)
    ).lost
    assert judge(
        Truth(("new", "expired"), "expired"), seen(change("new", None), change("done", "new"))
    ).wrong


def test_the_stats_check_names_each_number_the_application_counted_otherwise() -> None:
    done = seen(change("new", None), change("paid", "new"), change("done", "paid", "polling"))
    assert done.result is not None
    orders = [
        Counted(done.result, None, done.watched),
        Counted(None, TrackingTimeout("late"), (change("new", None),)),
    ]
    right = TrackerStats(
        orders_tracked=2,
        orders_active=0,
        settled={"succeeded": 1},
        unsettled={"timed_out": 1},
        changes={"websocket": 3, "polling": 1},
        conflicts=0,
        polling=0,
        checks=5,
        get_order={"200": 4},
        host_sleeps=0,
        websocket=None,
    )
    assert stats_mismatches(right, orders) == []
    wrong = attrs.evolve(right, changes={"websocket": 4}, unsettled={}, orders_active=1)
    found = stats_mismatches(wrong, orders)
    assert [line.split(" is ")[0] for line in found] == [
        "tracker.stats().orders_active",
        "tracker.stats().unsettled",
        "tracker.stats().changes",
    ]


# --- what the soak found -------------------------------------------------------------


@pytest.mark.anyio
async def test_a_late_watch_replays_changes_in_the_order_they_were_applied() -> None:
    """Soak seed 1846: a webhook's ``paid`` was applied, then the user's socket
    replayed ``done``, which it had seen earlier (a smaller ``at``).  A watch
    started afterwards used to replay ``done, paid``, sorted by ``at``."""
    from orderfsm.core import Observation, OrderBook
    from orderfsm.supervisor.order import TrackedOrder
    from orderfsm.supervisor.records import User

    async def token() -> str:
        return "token"

    book = OrderBook()
    book.track(ORDER)
    order = TrackedOrder(ORDER, User(token), book, now=0.0, websocket=True)
    order.observe(Observation(ORDER, "paid", source="webhook", at=2.0))
    order.observe(Observation(ORDER, "done", source="websocket", at=1.0))
    replayed = list(order.log)  # what a watch started now replays
    assert [c.status for c in replayed if isinstance(c, StatusChange)] == ["paid", "done"]
    assert replayed == order.changes()


@pytest.mark.anyio
async def test_a_gap_is_checked_with_get_order_until_it_answers() -> None:
    """Soak seed 257 (trio, under load): the final status was published while
    the socket was down, then the stream's epoch changed, so recovery could not
    bring it back and the socket reported a gap.  A poller was running (and
    failing: Get order answered 502), so the one-shot check was skipped; the
    socket was healthy again, the poller stopped, and nothing looked again."""
    from orderfsm.interface import Health, HealthReport
    from orderfsm.supervisor.policy import DefaultPolicy
    from orderfsm.supervisor.tracker import Tracker
    from transports.centrifuge import EngineConfig
    from transports.emulator import Emulator

    async with Emulator(ping_interval=1.0, pong_timeout=0.8) as emu:
        user = await emu.create_user()
        order_id = await emu.create_order(user)
        healthy = anyio.Event()
        gaps: list[HealthReport] = []

        def on_report(_: int, report: HealthReport) -> None:
            if report.gap:
                gaps.append(report)
            if report.source == "websocket" and report.health is Health.HEALTHY:
                healthy.set()

        tracker = Tracker(
            project_id=emu.project_id,
            token=user.token,
            user_id=user.external_id,
            ws_url=emu.ws_url,
            api_url=emu.api_url,
            policy=DefaultPolicy(poll_interval=0.05, deadline=5.0),
            websocket_options={
                "config": EngineConfig(
                    project_id=emu.project_id, min_reconnect_delay=0.3, max_reconnect_delay=0.3
                )
            },
            fetch_details=False,
            on_report=on_report,
        )
        async with tracker:
            tracker.track(order_id)
            await healthy.wait()
            await emu.get_order_fault("error", seconds=1.5, order_id=order_id)
            await emu.drop_connections(user)  # back in 0.3 s; polling meanwhile, answered 500
            await emu.set_status(order_id, "canceled")  # published while the socket is down
            await emu.new_epoch(user)  # and the history that held it is gone
            result = await tracker.wait(order_id)
    assert gaps, "the socket should have reported the gap"
    assert result.status is Status.CANCELED and result.source == "polling"


@pytest.mark.anyio
async def test_an_error_in_the_tracker_block_comes_out_as_it_is() -> None:
    """Found writing the reproductions above: ``wait``'s ``TrackingTimeout``
    left ``async with Tracker(...)`` wrapped in an exception group, so
    ``except TrackingTimeout`` around the block never matched."""
    from orderfsm.errors import TrackingTimeout
    from orderfsm.supervisor.policy import DefaultPolicy
    from orderfsm.supervisor.tracker import Tracker

    with pytest.raises(TrackingTimeout):
        async with Tracker(
            project_id=1,
            token="token",
            transports=("webhook",),
            policy=DefaultPolicy(deadline=0.1),
            fetch_details=False,
        ) as tracker:
            await tracker.wait(ORDER)


def test_two_before_one_on_an_empty_stream_is_a_hole_not_a_start() -> None:
    """Soak seed 3301: on a stream whose history was empty (a new epoch), a
    reordered push at offset 2 came before offset 1; 2 was taken as the start,
    so 1 was dropped as old, and it was the order's final status."""
    from transports.centrifuge.config import EngineConfig
    from transports.centrifuge.engine import CentrifugeEngine
    from transports.centrifuge.events import OrderPublication
    from transports.centrifuge.testing import (
        commands,
        connect_reply,
        history_reply,
        pub_push,
        publication,
        sub_result,
    )

    engine = CentrifugeEngine(EngineConfig(project_id=1))
    engine.connect(0.0, "jwt")
    engine.receive(connect_reply(1, subs={"c": sub_result(epoch="e")}), 0.0)
    [history] = commands(engine.data_to_send())
    engine.receive(history_reply(history["id"], [], epoch="e", offset=0), 0.0)  # empty, top 0
    events = engine.receive(pub_push("c", publication(2, "canceled", offset=2)), 1.0)
    events += engine.receive(pub_push("c", publication(1, "done", offset=1)), 1.0)
    [again] = commands(engine.data_to_send())  # the hole is read from history
    both = [publication(1, "done", offset=1), publication(2, "canceled", offset=2)]
    events += engine.receive(history_reply(again["id"], both, epoch="e", offset=2), 1.0)
    delivered = [(e.order_id, e.status) for e in events if isinstance(e, OrderPublication)]
    assert delivered == [(1, "done"), (2, "canceled")]


def test_an_epoch_change_after_an_empty_stream_is_a_gap() -> None:
    """Soak seed 8160: caught up on an empty stream (offset 0), the socket
    dropped; two statuses were published and the epoch changed before it came
    back.  Offset 0 passed for "no position", so the new epoch was not
    reported as a gap and no one looked the orders up."""
    from transports.centrifuge.config import EngineConfig
    from transports.centrifuge.engine import CentrifugeEngine
    from transports.centrifuge.events import Gap
    from transports.centrifuge.testing import (
        commands,
        connect_reply,
        history_reply,
        sub_result,
    )

    engine = CentrifugeEngine(EngineConfig(project_id=1))
    engine.connect(0.0, "jwt")
    engine.receive(connect_reply(1, subs={"c": sub_result(epoch="a")}), 0.0)
    [history] = commands(engine.data_to_send())
    engine.receive(history_reply(history["id"], [], epoch="a", offset=0), 0.0)
    engine.connection_lost(None, "dropped", 1.0)  # reconnect later
    [connect] = commands([engine.connect(2.0, "jwt")])
    assert connect["connect"]["subs"]["c"] == {"recover": True, "offset": 0, "epoch": "a"}
    events = engine.receive(connect_reply(connect["id"], subs={"c": sub_result(epoch="b")}), 2.0)
    assert any(isinstance(e, Gap) for e in events), events


@pytest.mark.anyio
async def test_an_order_the_socket_has_no_record_of_is_looked_up_once() -> None:
    """Soak seed 1797: the final status was published, then the stream was reset
    (history emptied), and only then was the order tracked.  The socket caught
    up with nothing about it and stayed healthy, so without a safety poll no
    one ever asked Get order."""
    from orderfsm.supervisor.policy import DefaultPolicy
    from orderfsm.supervisor.tracker import Tracker
    from transports.emulator import Emulator

    async with Emulator(ping_interval=1.0, pong_timeout=0.8) as emu:
        user = await emu.create_user()
        order_id = await emu.create_order(user)
        await emu.set_status(order_id, "expired")
        await emu.new_epoch(user)
        async with Tracker(
            project_id=emu.project_id,
            token=user.token,
            user_id=user.external_id,
            ws_url=emu.ws_url,
            api_url=emu.api_url,
            policy=DefaultPolicy(poll_interval=0.05, deadline=3.0),
            fetch_details=False,
        ) as tracker:
            result = await tracker.wait(order_id)
        assert result.status is Status.EXPIRED and result.source == "polling"
        # Once at the start; once more as its grace ends (a payment may have come).
        assert len((await emu.stats()).get_order_requests[order_id]) == 2


# --- the soak itself ------------------------------------------------------------------


def test_the_fleet_judge_wants_the_peer_to_see_what_this_instance_saw() -> None:
    here = seen(change("new", None), change("paid", "new"), change("done", "paid"))
    mine = judge(TRUTH, here)
    assert fleet_verdict(TRUTH, mine, here, here).ok
    skipped = seen(change("new", None), change("done", "new", "journal"))  # caught up late
    assert fleet_verdict(TRUTH, mine, here, skipped).ok
    unsettled = seen(change("new", None), change("paid", "new"), final=False)
    assert fleet_verdict(TRUTH, mine, here, unsettled).lost
    twice = seen(change("new", None), change("paid", "new"), change("paid", "paid"))
    assert fleet_verdict(TRUTH, mine, here, twice).duplicated
    refunded = Truth(("new", "paid", "done", "canceled"), "canceled")
    late = seen(change("new", None), change("canceled", "new"))  # allowed alone...
    verdict = fleet_verdict(refunded, judge(refunded, here), here, late)
    assert verdict.wrong and "this instance" in verdict.reasons[-1]  # ...not beside done


def test_the_fleet_judge_runs_an_expired_grace_from_the_first_instance_that_saw_it() -> None:
    """Soak seed 3 under load: the owner saw ``expired`` at 1.0 and its last look at
    the grace's end found it still expired; the payment was asked at 3.5, before the
    end of a grace counted from 2.5, when the peer heard ``expired`` through the
    journal.  Both settled expired, as the fleet should; the peer is not wrong."""
    truth = Truth(("new", "expired", "paid", "done"), "done", asked_at={"paid": 3.5},
                  expired_grace=2.0)  # fmt: skip
    here = seen(change("new", None), change("expired", "new"))
    heard_late = seen(change("new", None), attrs.evolve(change("expired", "new"), at=2.5))
    assert judge(truth, here).ok
    assert judge(truth, heard_late).wrong  # alone, its own grace would allow only done
    assert fleet_verdict(truth, judge(truth, here), here, heard_late).ok
    paid = seen(change("new", None), change("expired", "new"), change("paid", "expired"),
                change("done", "paid"))  # fmt: skip
    # Still one answer for the fleet: done here, expired there is wrong.
    assert fleet_verdict(truth, judge(truth, paid), paid, heard_late).wrong


@pytest.mark.anyio
@pytest.mark.parametrize("fleet", ["sqlite", "postgresql"])
async def test_a_second_instance_on_the_journal_sees_what_the_first_saw(fleet: str) -> None:
    if fleet == "postgresql":
        from support_postgres import postgres_server

        postgres_server()  # skips with the reason when PostgreSQL is not installed
    report = await run_soak(
        Options(schedules=12, first_seed=2400, concurrency=12, drain_every=12, fleet=fleet)
    )
    assert report["schedules"] == 12 and report["fleet"] == fleet
    assert {key: report[key] for key in MUST_BE_ZERO} == dict.fromkeys(MUST_BE_ZERO, 0), report[
        "failures"
    ]


@pytest.mark.anyio
async def test_a_few_dozen_schedules_lose_duplicate_and_leak_nothing() -> None:
    report = await run_soak(Options(schedules=30, first_seed=1830, concurrency=15, drain_every=15))
    assert report["schedules"] == 30 and report["orders"] > 30
    assert {key: report[key] for key in MUST_BE_ZERO} == dict.fromkeys(MUST_BE_ZERO, 0), report[
        "failures"
    ]
    assert report["failing_seeds"] == []
    # the faults really happened, and finals arrived by more than one way
    assert len(report["faults"]) >= 10, report["faults"]
    assert {"websocket", "polling", "webhook"} <= set(report["final_sources"])


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("sabotage", "counts"),
    [
        ("wrong", ("wrong",)),
        ("lost", ("lost",)),
        ("leak", ("leaked_tasks", "leaked_sockets")),
    ],
)
async def test_a_broken_run_is_caught(sabotage: str, counts: tuple[str, ...]) -> None:
    schedules = 3
    report = await run_soak(
        Options(schedules=schedules, first_seed=100, concurrency=schedules, sabotage=sabotage)
    )
    for key in counts:
        assert report[key] >= schedules, (key, report)
    assert report["failing_seeds"] == [100, 101, 102]
    assert report["failures"]


def run_cli(*args: str) -> tuple[int, dict[str, object], str]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "soak.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout + done.stderr
    return done.returncode, json.loads(lines[0]), done.stderr


def test_the_command_replays_a_seed_and_exits_non_zero_on_failure() -> None:
    code, report, _ = run_cli("--seed", "7", "--backend", "trio")
    assert code == 0, report
    assert report["schedules"] == 1 and report["first_seed"] == 7 and report["backend"] == "trio"
    code, report, stderr = run_cli("--seed", "7", "--sabotage", "wrong")
    assert code == 1 and report["failing_seeds"] == [7]
    assert "seed 7" in stderr


def test_steps_and_faults_are_plain_records() -> None:
    """The schedule prints as JSON, so a failing seed can be read as well as replayed."""
    schedule = make_schedule(3)
    text = json.dumps(schedule.to_json())
    assert json.loads(text)["seed"] == 3
    assert all(isinstance(s, Step) for s in schedule.steps)
    assert all(isinstance(f, Fault) for f in schedule.faults)
