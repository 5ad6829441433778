"""Trackers sharing a journal, in one process: what any instance learns reaches every waiter.

Each "instance" is a ``Tracker`` with a journal of its own on the same
database (SQLite file or PostgreSQL schema), so they meet only through the
database, as separate hosts would.  Every test runs on both databases and
both event loops; ``tests/test_fleet_processes.py`` does the same with real
processes and SIGKILL.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from support_journal import connect, deliveries_of, history, leased, on_databases, url_for
from support_webhook import serve_receiver

from orderfsm import Observation, Status
from orderfsm.errors import TokenRejected
from orderfsm.interface import ObservationSink
from orderfsm.journal import ClaimState
from orderfsm.journal.orders import settled_key
from orderfsm.supervisor.admission import STARTING_AT_ONCE
from orderfsm.supervisor.custom import OrderContext
from orderfsm.supervisor.fleet import Settled
from orderfsm.supervisor.policy import DefaultPolicy
from orderfsm.supervisor.tracker import Tracker
from orderfsm.testing import eventually
from transports.centrifuge import EngineConfig
from transports.emulator import Emulator, User
from transports.journal import Journal, open_journal
from transports.journal.order_log import OrderLog
from transports.journal.orders import Note
from transports.webhook import WebhookReceiver

pytestmark = pytest.mark.anyio

SECRET = "fleet-secret"
FAST = DefaultPolicy(poll_interval=0.05, deadline=30.0)


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(seed=41, ping_interval=2.0, secret=SECRET) as emulator:
        yield emulator


def instance(url: str | Journal, emu: Emulator, user: User | None = None, **kw: Any) -> Tracker:
    """One instance of the fleet: its own journal connection on the shared database."""
    options: dict[str, Any] = {"policy": FAST, "lease": 1.0}
    options.update(kw)
    return Tracker(
        project_id=emu.project_id,
        token=None if user is None else user.token,
        user_id=None if user is None else user.external_id,
        ws_url=emu.ws_url,
        api_url=emu.api_url,
        journal=url,
        websocket_options={
            "config": EngineConfig(
                project_id=emu.project_id, min_reconnect_delay=0.05, max_reconnect_delay=0.2
            )
        },
        **options,
    )


async def owning(t: Tracker, order_id: int) -> None:
    """``t`` tracks the order and holds its lease (so its socket and polling)."""
    t.track(order_id)
    await eventually(lambda: t._orders[order_id].owned)


async def results_of(order_id: int, *trackers: Tracker, within: float = 20.0) -> list[Any]:
    """Each tracker's ``wait()`` for the order, side by side (in the order they return)."""
    results: list[Any] = []

    async def waits(t: Tracker) -> None:
        with anyio.fail_after(within):
            results.append(await t.wait(order_id))

    async with anyio.create_task_group() as tg:
        for t in trackers:
            tg.start_soon(waits, t)
    return results


@asynccontextmanager
async def paid_behind_a_slow_look(
    emu: Emulator, order_id: int, follower: Tracker
) -> AsyncIterator[None]:
    """Once ``follower`` knows the order expired, it is paid where only Get order sees it,
    and Get order takes 2 s to answer (until the block ends): the owner's last look is
    slow."""
    await eventually(lambda: follower._orders[order_id].book.status(order_id) is Status.EXPIRED)
    await emu.set_status(order_id, "paid", publish=False)
    try:
        await emu.get_order_fault("slow", delay=2.0, order_id=order_id)
        yield
    finally:
        await emu.clear_faults()


async def done_on_the_socket_reaches(t: Tracker, emu: Emulator, order_id: int) -> bool:
    """``done`` published on the socket, which only the order's owner keeps: does ``t``,
    still owning it, settle the order with it?"""
    if not t._orders[order_id].owned:
        return False
    await emu.set_status(order_id, "done")
    with anyio.fail_after(10):
        return (await t.wait(order_id)).status is Status.DONE


@asynccontextmanager
async def receiver_for(url: str, emu: Emulator) -> AsyncIterator[None]:
    """A webhook receiver of the fleet (on its own journal connection), fed by the emulator."""
    async with open_journal(url) as journal:
        receiver = WebhookReceiver(SECRET, store=journal)
        async with serve_receiver(receiver, "asgi") as served:
            await emu.configure_webhooks(served)
            try:
                yield
            finally:
                await emu.configure_webhooks(None)


@on_databases
async def test_a_webhook_on_one_instance_finishes_a_wait_on_another(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """No Xsolla connection on B: the receiver's claim writes the status, B hears it."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    async with (
        instance(url, emu, transports=("journal",), until="paid", fetch_details=False) as b,
        receiver_for(url, emu),
    ):
        b.track(order_id)
        await emu.set_status(order_id, "paid")  # order_paid to the receiver
        with anyio.fail_after(10):
            result = await b.wait(order_id)
    assert (result.status, result.source, result.succeeded) == (Status.PAID, "webhook", True)


@on_databases
async def test_a_webhook_before_any_instance_tracks_the_order_finishes_a_later_wait(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """The receiver answers the payment while nobody tracks the order (it writes no
    change then); B, journal only, tracks it afterwards: its first track reads the
    delivery, and B's wait finishes from the webhook alone."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    async with receiver_for(url, emu):
        await emu.set_status(order_id, "paid")  # order_paid to the receiver
        await eventually(
            lambda: ("order_paid", 204) in [d[:2] for d in deliveries_of(url, order_id)]
        )
        assert history(url, order_id) == []  # nobody tracks it: no change written
        async with instance(
            url, emu, transports=("journal",), until="paid", fetch_details=False
        ) as b:
            b.track(order_id)
            with anyio.fail_after(10):
                result = await b.wait(order_id)
    assert (result.status, result.source, result.succeeded) == (Status.PAID, "webhook", True)


@on_databases
async def test_one_instance_follows_xsolla_the_others_hear_each_change_once(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    async with instance(url, emu, user) as a, instance(url, emu, user) as b:
        a.track(order_id)
        b.track(order_id)
        owners = lambda: [t._orders[order_id].owned for t in (a, b)]  # noqa: E731
        await eventually(lambda: sorted(owners()) == [False, True])
        await emu.run_script(order_id, [(0.1, "paid"), (0.1, "done")])
        results = [await t.wait(order_id) for t in (a, b)]
        assert sorted(owners()) == [False, True]  # one owner throughout, never both
    for result in results:
        assert [c.status for c in result.changes] == [Status.NEW, Status.PAID, Status.DONE]
        assert result.status is Status.DONE


@on_databases
async def test_when_the_owner_stops_renewing_another_takes_the_order_over(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    async with instance(url, emu, user) as b:
        async with instance(url, emu, user) as a:
            a.track(order_id)
            await eventually(lambda: a._orders[order_id].owned)
            b.track(order_id)
            await anyio.sleep(0.3)
            assert not b._orders[order_id].owned
        # a closed without giving up: its lease runs out (1 s here) and b takes over
        await emu.set_status(order_id, "done", publish=False)  # Get order alone knows
        with anyio.fail_after(15):
            result = await b.wait(order_id)
        assert b._orders[order_id].owned
    assert (result.status, result.source) == (Status.DONE, "polling")


@on_databases
@pytest.mark.parametrize("b_tracks", [True, False], ids=["b-tracks", "b-adopts"])
async def test_an_order_its_owner_can_follow_no_more_goes_to_an_instance_that_polls(
    backend: str, tmp_path: Path, emu: Emulator, b_tracks: bool
) -> None:
    """A follows the order on the WebSocket alone, and its socket's lifespan ends.  A keeps
    the order, following the journal (its waiter still hears the fleet's news), but lets
    its lease go at once: B, which polls, takes it (its renewal when it tracks the order
    too, its adopter when not; never A's adopter) and hears ``done``, which only Get
    order knows.  (A renewed the lease on an order nothing followed: B never took it, and
    ``done`` waited for the deadline.)"""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    short = DefaultPolicy(poll_interval=0.05, deadline=30.0, websocket_lifespan=1.5)
    results: list[Any] = []
    async with (
        instance(url, emu, user, transports=("polling",)) as b,
        instance(url, emu, user, transports=("websocket",), policy=short) as a,
        anyio.create_task_group() as tg,
    ):

        async def a_waits() -> None:
            results.append(await a.wait(order_id))

        await owning(a, order_id)
        await emu.wait_connected(user)
        tg.start_soon(a_waits)
        if b_tracks:
            b.track(order_id)
        await eventually(lambda: order_id in b._orders and b._orders[order_id].owned)
        assert not a._orders[order_id].owned
        await emu.set_status(order_id, "done", publish=False)  # Get order alone knows
        with anyio.fail_after(10):
            results.append(await b.wait(order_id))
            await eventually(lambda: len(results) == 2)
        assert not a._orders[order_id].owned  # never taken back
    assert [(r.status, r.source) for r in results] == [(Status.DONE, "polling")] * 2


@on_databases
async def test_an_owner_that_can_follow_an_order_no_more_looks_once_before_letting_it_go(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """Before letting go of an order it can follow no more, its owner asks Get order once
    more, as a tracker outside a fleet does before giving up, and holds the lease while
    it asks: in a fleet where no instance polls, a payment its socket missed is heard (it
    waited for the deadline)."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    short = DefaultPolicy(deadline=30.0, websocket_lifespan=1.0)
    websocket_only: dict[str, Any] = {"transports": ("websocket",), "until": "paid"}
    try:
        async with instance(url, emu, user, policy=short, **websocket_only) as a:
            await owning(a, order_id)
            await emu.wait_connected(user)
            await emu.set_status(order_id, "paid", publish=False)
            await emu.get_order_fault("slow", delay=1.0, order_id=order_id)
            order = a._orders[order_id]
            await eventually(lambda: order.last_look is False)
            assert order.owned and leased(url, order_id)  # looking is following
            with anyio.fail_after(10):
                result = await a.wait(order_id)
    finally:
        await emu.clear_faults()
    assert (result.status, result.source) == (Status.PAID, "polling")


@on_databases
async def test_an_order_let_go_still_gets_its_last_look_when_its_expired_grace_ends(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """The only instance, WebSocket-only, hears ``expired``; its socket's time ends in
    the grace and it lets the order go (nobody polls).  The payment completes where only
    Get order sees it: at the grace's end the instance that let go looks once more and
    settles ``paid`` (it settled ``expired``, waiting for an owner's look nobody made)."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    short = DefaultPolicy(deadline=30.0, websocket_lifespan=1.0, expired_grace=3.0)
    websocket_only: dict[str, Any] = {"transports": ("websocket",), "until": "paid"}
    async with instance(url, emu, user, policy=short, **websocket_only) as a:
        await owning(a, order_id)
        await emu.wait_connected(user)
        await emu.set_status(order_id, "expired")
        order = a._orders[order_id]
        await eventually(lambda: order.let_go)
        await emu.set_status(order_id, "paid", publish=False)
        with anyio.fail_after(15):
            result = await a.wait(order_id)
    assert (result.status, result.source) == (Status.PAID, "polling")


@on_databases
async def test_an_instance_following_the_journal_settles_an_expired_order_as_its_owners_look_says(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """The owner's last look at the end of the expired grace is slow (Get order takes 2 s)
    and finds the payment.  The instance that follows only the journal must say ``paid``
    too: it waits for the owner's verdict, not for a time of its own (it waited its own
    ``details_timeout`` and one second more, settled ``expired``, and the two instances
    told their applications different things; soak under load)."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    # No polling in the grace: only the last look can hear the payment.  Its 3 s leave
    # time to set it up before the owner's grace ends, on a loaded host too.
    grace = DefaultPolicy(
        poll_interval=0.05, deadline=30.0, expired_grace=3.0, expired_poll_interval=60.0
    )
    async with (
        instance(url, emu, user, transports=("polling",), policy=grace, details_timeout=5.0,
                 until="paid", lease=5.0) as a,
        instance(url, emu, transports=("journal",), policy=grace, details_timeout=0.2,
                 fetch_details=False, until="paid", lease=5.0) as b,
    ):  # fmt: skip
        await owning(a, order_id)
        b.track(order_id)
        await emu.set_status(order_id, "expired", publish=False)
        async with paid_behind_a_slow_look(emu, order_id, b):
            results = await results_of(order_id, a, b)
    # The journal carries the owner's source: polling, on both.
    assert [(r.status, r.source) for r in results] == [(Status.PAID, "polling")] * 2


@on_databases
async def test_a_journal_only_instance_with_a_token_follows_the_owners_verdict_not_its_own_look(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """B follows only the journal but has a token and fetches details, so it could ask Get
    order.  It heard ``expired`` a second after the owner, whose look at its grace's end
    still found it expired: the owner settled ``expired``, and the payment came after.
    B settles as the owner did; it looked for itself at its own grace's end, heard the
    payment, and the two told their applications different things (soak seed 3's shape;
    review)."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    grace = DefaultPolicy(poll_interval=0.05, deadline=30.0, expired_grace=2.0)
    async with (
        instance(url, emu, user, transports=("polling",), policy=grace, until="paid") as a,
        instance(url, emu, user, transports=("journal",), policy=grace, until="paid") as b,
    ):
        await owning(a, order_id)
        await emu.set_status(order_id, "expired", publish=False)
        await eventually(lambda: a._orders[order_id].book.status(order_id) is Status.EXPIRED)
        await anyio.sleep(1.0)
        b.track(order_id)
        with anyio.fail_after(10):
            first = await a.wait(order_id)
        await emu.set_status(order_id, "paid", publish=False)
        (second,) = await results_of(order_id, b)
    assert (first.status, second.status) == (Status.EXPIRED, Status.EXPIRED)


@on_databases
async def test_an_instance_following_the_journal_settles_an_expired_order_whose_owner_is_gone(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """The owner stops in the grace and nobody takes the order over (the other instance
    follows only the journal): nobody will look, so once its wait for a verdict is
    over (its ``details_timeout``, a second and a lease: time for another to take the
    order over and look) the other settles ``expired``, not waiting for ever."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    grace = DefaultPolicy(poll_interval=0.05, deadline=30.0, expired_grace=1.0)
    journal_only: dict[str, Any] = {"transports": ("journal",), "fetch_details": False}
    async with instance(url, emu, policy=grace, details_timeout=0.2, **journal_only) as b:
        async with instance(url, emu, user, transports=("polling",), policy=grace) as a:
            await owning(a, order_id)
            b.track(order_id)
            await emu.set_status(order_id, "expired", publish=False)
            await eventually(lambda: b._orders[order_id].book.status(order_id) is Status.EXPIRED)
        assert leased(url, order_id)  # a closing tracker leaves its orders to be resumed
        with anyio.fail_after(10):
            result = await b.wait(order_id)
    assert (result.status, result.succeeded) == (Status.EXPIRED, False)


@on_databases
async def test_an_owner_that_let_an_expired_order_go_still_decides_for_the_others(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """The owner, WebSocket-only, lets the expired order go when its socket's time ends in
    the grace; it still looks once at the grace's end, slowly (Get order takes 2 s), and
    finds the payment.  The instance following only the journal waits for that look:
    a lease let go is no sign that nobody looks (it settled ``expired`` at once; review)."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    short = DefaultPolicy(deadline=30.0, websocket_lifespan=1.0, expired_grace=3.0)
    async with (
        instance(url, emu, user, policy=short, transports=("websocket",), until="paid",
                 details_timeout=5.0) as a,
        instance(url, emu, transports=("journal",), policy=short, fetch_details=False,
                 until="paid", details_timeout=2.5) as b,
    ):  # fmt: skip
        await owning(a, order_id)
        b.track(order_id)
        await emu.wait_connected(user)
        await emu.set_status(order_id, "expired")
        await eventually(lambda: a._orders[order_id].let_go)
        async with paid_behind_a_slow_look(emu, order_id, b):
            results = await results_of(order_id, a, b)
    assert [(r.status, r.source) for r in results] == [(Status.PAID, "polling")] * 2


@on_databases
async def test_an_expired_order_whose_owner_died_is_decided_by_the_instance_taking_it_over(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """The owner stops in the grace; C, which polls the order too, takes it over once the
    lease runs out, and its look finds the payment.  B, following only the journal,
    waits for C's verdict rather than settling ``expired`` when the lease ran out, and
    C looks rather than settling as B would (both said ``expired``; review)."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    grace = DefaultPolicy(
        poll_interval=0.05, deadline=40.0, expired_grace=3.0, expired_poll_interval=60.0
    )
    polling: dict[str, Any] = {"transports": ("polling",), "policy": grace, "until": "paid"}
    async with (
        instance(url, emu, transports=("journal",), policy=grace, fetch_details=False,
                 until="paid", lease=2.0, details_timeout=3.0) as b,
        instance(url, emu, user, lease=2.0, **polling) as c,
    ):  # fmt: skip
        async with instance(url, emu, user, lease=2.0, **polling) as a:
            await owning(a, order_id)
            b.track(order_id)
            c.track(order_id)
            await eventually(lambda: order_id in c._orders)
            await emu.set_status(order_id, "expired", publish=False)
            await eventually(lambda: b._orders[order_id].book.status(order_id) is Status.EXPIRED)
            await eventually(lambda: c._orders[order_id].book.status(order_id) is Status.EXPIRED)
            assert not c._orders[order_id].owned
        await emu.set_status(order_id, "paid", publish=False)
        results = await results_of(order_id, b, c)
    assert [r.status for r in results] == [Status.PAID] * 2


@on_databases
async def test_two_instances_that_can_follow_an_order_no_more_do_not_pass_it_around(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """Two WebSocket-only instances track one order past their sockets' time: each lets
    it go, and neither adopter takes it (it tracks it and cannot follow it).  Each
    adopted what the other let go, every third of a lease, a new fence each time."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    short = DefaultPolicy(deadline=30.0, websocket_lifespan=0.5)
    websocket_only: dict[str, Any] = {"transports": ("websocket",), "policy": short}
    async with (
        instance(url, emu, user, **websocket_only) as a,
        instance(url, emu, user, **websocket_only) as c,
    ):
        await owning(a, order_id)
        c.track(order_id)
        await eventually(lambda: not (a._orders[order_id].follows or c._orders[order_id].follows))
        await anyio.sleep(0.5)  # the let-go written, and any adoption under way done
        before = fence_of(url, order_id)
        await anyio.sleep(1.5)  # four adopters' periods each
        after = fence_of(url, order_id)
    assert after == before


def fence_of(url: str, order_id: int) -> int:
    db = connect(url)
    try:
        query = f"SELECT fence FROM orderfsm_orders WHERE order_id = {order_id}"
        return int(db.execute(query).fetchone()[0])
    finally:
        db.close()


@on_databases
async def test_a_custom_transport_runs_on_every_instance_whatever_the_lease(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """The lease holder's custom transport gives up (a stale token): the order is still
    followed by another instance's own.  (Custom transports that followed the lease
    left such an order with no source at all while its holder renewed the lease.)"""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    order_id = await emu.create_order(user)

    async def broken(order: OrderContext, sink: ObservationSink) -> None:
        raise TokenRejected("a's token for the Event API is stale")

    async def works(order: OrderContext, sink: ObservationSink) -> None:
        sink.observe(Observation(order.order_id, "paid", "events", anyio.current_time()))
        await anyio.sleep_forever()

    custom_only: dict[str, Any] = {"transports": ("webhook",), "fetch_details": False}
    async with (
        instance(url, emu, user, extra=[works], until="paid", **custom_only) as b,
        instance(url, emu, user, extra=[broken], until="paid", **custom_only) as a,
    ):
        await owning(a, order_id)
        b.track(order_id)
        with anyio.fail_after(10):
            assert (await b.wait(order_id)).status is Status.PAID


def set_lease(url: str, order_id: int, assignments: str) -> None:
    db = connect(url)
    try:
        db.execute(f"UPDATE orderfsm_orders SET {assignments} WHERE order_id = {order_id}")
    finally:
        db.close()


async def taken_over_elsewhere(url: str, t: Tracker, order_id: int) -> None:
    """Another instance takes the order's lease (as after ``t`` was too slow to renew it),
    and ``t`` has learnt it."""
    until = time.time() + 600
    set_lease(url, order_id, f"owner = 'elsewhere', fence = fence + 1, lease_until = {until}")
    await eventually(lambda: not t._orders[order_id].owned)


@on_databases
async def test_a_check_queued_while_another_instance_took_the_order_over_is_not_asked(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """An instance whose lease another instance took (it was too slow to renew) leaves
    Get order to the new owner, which checks the order itself: the check it had
    queued behind a full admission must not reach Xsolla once its turn comes."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    blockers = [await emu.create_order(user) for _ in range(STARTING_AT_ONCE)]
    order_id = await emu.create_order(user)
    await emu.get_order_fault("slow", delay=2.0)
    try:
        async with instance(url, emu, user, fetch_details=False) as a:
            for blocker in blockers:
                a.track(blocker)
            await owning(a, order_id)
            # Queued behind the blockers' checks (2 s each), by the order's runner once
            # it sees the lease: a moment after ``owned``, not with it.
            await eventually(lambda: a._orders[order_id].checking, timeout=1.5)
            await taken_over_elsewhere(url, a, order_id)
            await emu.clear_faults()

            async def every_blocker_asked() -> bool:
                asked = (await emu.stats()).get_order_requests
                return all(asked.get(blocker) for blocker in blockers)

            await eventually(every_blocker_asked)
            await eventually(lambda: not a._orders[order_id].checking)  # its turn came
            await anyio.sleep(0.3)  # a request it sent would have arrived
            asked = (await emu.stats()).get_order_requests
    finally:
        await emu.clear_faults()
    assert not asked.get(order_id)


@on_databases
async def test_a_check_retrying_stops_once_another_instance_took_the_order_over(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """A check backing off through Xsolla's errors asks again only while its order is
    this instance's: the new owner's own check would otherwise have company for as
    long as the errors last."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    await emu.get_order_fault("error", order_id=order_id)
    try:
        async with instance(url, emu, user, fetch_details=False) as a:
            await owning(a, order_id)
            await eventually(lambda: a._orders[order_id].checking)
            await taken_over_elsewhere(url, a, order_id)
            before = len((await emu.stats()).get_order_requests.get(order_id, []))
            await anyio.sleep(4.0)  # backing off from 0.5 s: asked three times more
            after = len((await emu.stats()).get_order_requests.get(order_id, []))
            checking = a._orders[order_id].checking
    finally:
        await emu.clear_faults()
    assert after <= before + 1  # one already on its way, at most
    assert not checking


@on_databases
async def test_an_order_untracked_after_it_settled_hears_a_refund_of_meanwhile_when_tracked_again(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """Instance a untracks an order once paid; a refund reaches the fleet through b
    while a is not following; a tracks the order again: it reads the order's log
    again and is told the refund (once), not only what comes next."""
    url = url_for(backend, tmp_path)
    heard: list[Status] = []
    journal_only: dict[str, Any] = {"transports": ("journal",), "fetch_details": False}
    async with (
        instance(
            url, emu, until="paid", on_change=lambda c: heard.append(c.status), **journal_only
        ) as a,
        instance(url, emu, until="paid", **journal_only) as b,
    ):
        a.track(424242)
        b.track(424242)
        b.observe(Observation(424242, Status.PAID, source="webhook", at=anyio.current_time()))
        with anyio.fail_after(10):
            assert (await a.wait(424242)).status is Status.PAID
        a.untrack(424242)
        b.observe(Observation(424242, Status.CANCELED, source="webhook", at=anyio.current_time()))
        await anyio.sleep(0.5)  # the refund is in the journal; a, not following, drops it
        a.track(424242)
        await eventually(lambda: a.status(424242) is Status.CANCELED)
        await anyio.sleep(0.3)  # nothing more to tell
    assert heard == [Status.PAID, Status.CANCELED]


@on_databases
async def test_a_restarted_instance_resumes_what_was_not_settled(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    settled, pending = await emu.create_order(user), await emu.create_order(user)
    async with instance(url, emu, user, instance="shop-1", lease=30.0) as first:
        first.track(settled)
        first.track(pending)
        await emu.set_status(settled, "done")
        await first.wait(settled)
    # the process is gone; the order moved on meanwhile, where only Get order sees it
    await emu.set_status(pending, "done", publish=False)
    asked: list[tuple[int, str | None]] = []

    def token_for(order_id: int, user_id: str | None) -> str:
        asked.append((order_id, user_id))
        return user.token

    # The same instance again: its own orders at once, though their leases are live.
    async with instance(url, emu, None, token_for=token_for, instance="shop-1") as second:
        assert set(second._orders) == {pending}  # the settled one is not resumed
        with anyio.fail_after(10):
            result = await second.wait(pending)
    assert asked == [(pending, user.external_id)]
    assert (result.status, result.source) == (Status.DONE, "polling")
    assert not _tokens_in_database(url, user.token)


@on_databases
async def test_an_order_another_instance_gave_up_is_resumed_by_its_owner_restarted_under_its_name(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """b follows an order through Xsolla; a, which waited on it too, gives it up; b is
    stopped for a deploy before its next renewal and restarts under its name: it takes
    the order back (a's give-up had marked it tracked by nobody, so nobody followed it
    and its ``done``, which no webhook says, was never heard)."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    async with (
        instance(url, emu, transports=("journal",), fetch_details=False) as a,
        instance(url, emu, user, instance="shop-b", lease=30.0) as b,
    ):
        await owning(b, order_id)
        a.track(order_id)
        await anyio.sleep(0.3)  # a's track is written
        a.untrack(order_id)
        await anyio.sleep(0.3)  # and its give-up: then b stops, a with it
    async with instance(url, emu, user, instance="shop-b", token_for=lambda *_: user.token) as b:
        resumed = order_id in b._orders
        await emu.set_status(order_id, "done")
        with anyio.fail_after(10):
            result = await b.wait(order_id)
    assert resumed
    assert result.status is Status.DONE


@on_databases
async def test_a_starting_instance_takes_none_of_the_orders_a_live_one_holds(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """A follows two orders (its leases live, renewed); B starts with tokens for any
    order.  B used to resume every unsettled order of the journal: on every deploy,
    each instance took the whole fleet's orders and asked Get order for each, and
    tracked twice the orders live instances follow.  B takes none of A's, at its
    start or later, while A lives."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    orders = [await emu.create_order(user) for _ in range(2)]
    asked: list[int] = []

    def token_for(order_id: int, user_id: str | None) -> str:
        asked.append(order_id)
        return user.token

    async with instance(url, emu, user) as a:
        for order_id in orders:
            await owning(a, order_id)
        async with instance(url, emu, token_for=token_for) as b:
            assert b._orders == {}
            await anyio.sleep(2.5)  # past two leases (1 s here): A renews, B adopts nothing
            assert b._orders == {} and asked == []
        assert all(a._orders[order_id].owned for order_id in orders)


@on_databases
async def test_an_instance_following_only_the_journal_takes_over_no_order(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """The journal holds orders tracked and not settled, their owner gone (closed: its
    leases run out as after a SIGKILL).  An instance with no way to follow Xsolla (the
    journal alone) used to resume them all: orders it can only hear of, which its
    application never asked it for.  It tracks none, at start or once the leases ran
    out, and still follows what it is asked."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    left, asked = await emu.create_order(user), await emu.create_order(user)
    async with instance(url, emu, user) as a:
        for order_id in (left, asked):
            await owning(a, order_id)
    options: dict[str, Any] = {"transports": ("journal",), "fetch_details": False}
    async with instance(url, emu, until="paid", **options) as b, receiver_for(url, emu):
        assert b._orders == {}
        await anyio.sleep(1.5)  # past the gone owner's leases (1 s here)
        assert b._orders == {}
        b.track(asked)
        await emu.set_status(asked, "paid")
        with anyio.fail_after(10):
            assert (await b.wait(asked)).status is Status.PAID
        assert set(b._orders) == {asked}


async def test_trackers_on_one_sqlite_file_hold_distinct_names_a_closed_ones_is_reused(
    tmp_path: Path,
) -> None:
    """Without ``instance=``, a tracker on SQLite leases under a slot of the file: two
    live ones never share one (both would follow one order), and a closed one's slot
    is the next starter's, so a restarted app takes its own orders back at once."""
    url = str(tmp_path / "journal.sqlite3")
    options: dict[str, Any] = {"transports": ("journal",), "fetch_details": False}

    def name(t: Tracker) -> str:
        assert t.fleet is not None
        return t.fleet.log.owner

    async with Tracker(project_id=1, journal=url, **options) as one:
        async with Tracker(project_id=1, journal=url, **options) as two:
            names = [name(one), name(two)]
        async with Tracker(project_id=1, journal=url, **options) as three:
            again = name(three)
        async with Tracker(project_id=1, journal=url, instance="web-1", **options) as named:
            given = name(named)
    assert names == ["sqlite-slot-0", "sqlite-slot-1"] and again == "sqlite-slot-1"
    assert given == "web-1"


@on_databases
async def test_an_order_forgotten_then_tracked_again_stays_followed(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """Forgetting queues a "no longer tracked" mark, which waits a moment to be written
    with others; tracking the order again meanwhile must win over it, or the journal
    says nobody follows the order and the lease (so the socket and polling) is lost:
    the row must stay marked tracked, and the lease held throughout (its fence, which
    grows with each new take of the lease, the same)."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    # A renewal (every third of the lease) would mend a lost mark: none comes within the
    # test.  The lease asked on tracking again may mend it too, but with a new fence.
    async with instance(url, emu, user, lease=30.0) as a:
        assert a.fleet is not None
        log = a.fleet.log
        await owning(a, order_id)
        fence = (await log.orders([order_id]))[order_id].fence
        a.forget(order_id)
        a.track(order_id)
        assert await a.fleet.flush(5)  # both written
        assert (await log.orders([order_id]))[order_id].tracking
        await eventually(lambda: a._orders[order_id].owned)  # its lease, asked again
        assert (await log.orders([order_id]))[order_id].fence == fence
        assert await done_on_the_socket_reaches(a, emu, order_id)


@on_databases
async def test_one_instance_giving_an_order_up_leaves_the_others_following_it(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """B's waiter leaves (B untracks the order); A still waits on it and holds the
    lease: A must keep following it through Xsolla, not read "nobody tracks it"."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    async with instance(url, emu, user) as a, instance(url, emu, user) as b:
        await owning(a, order_id)
        b.track(order_id)
        await anyio.sleep(0.2)
        b.untrack(order_id)
        await anyio.sleep(1.5)  # past a lease period (1 s here): renewals went on
        assert await done_on_the_socket_reaches(a, emu, order_id)


@on_databases
async def test_an_instance_granting_on_payment_does_not_end_the_following_until_done(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """A follows Xsolla until ``done``; B, on the journal alone, waits for ``paid`` (a
    server granting on payment).  The order's row kept the goal of whoever tracked it
    last, so once ``paid`` was written it counted as settled: A's lease renewals were
    refused, nobody followed the order, and A never heard ``done`` (no webhook says
    it).  The row keeps the strictest goal asked."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    async with (
        instance(url, emu, user) as a,
        instance(url, emu, transports=("journal",), until="paid", fetch_details=False) as b,
    ):
        await owning(a, order_id)
        b.track(order_id)
        await emu.set_status(order_id, "paid")
        with anyio.fail_after(10):
            assert (await b.wait(order_id)).status is Status.PAID
        await anyio.sleep(2.5)  # past two lease renewals (1 s here) after "paid"
        assert await done_on_the_socket_reaches(a, emu, order_id)


@on_databases
async def test_an_order_given_up_by_its_owner_is_adopted_for_a_journal_only_waiter(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """A follows the order through Xsolla; B waits on it through the journal alone.
    A's waiter leaves (A untracks it): the row said nobody tracks the order, B holds
    no lease to say otherwise, so nobody adopted it and B never heard ``done``."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    async with (
        instance(url, emu, user) as a,
        instance(url, emu, transports=("journal",), fetch_details=False) as b,
    ):
        await owning(a, order_id)
        b.track(order_id)
        a.untrack(order_id)
        await eventually(lambda: order_id in a._orders and a._orders[order_id].owned, 15.0)
        await emu.set_status(order_id, "paid")
        await emu.set_status(order_id, "done")
        with anyio.fail_after(10):
            assert (await b.wait(order_id)).status is Status.DONE


async def test_a_write_the_database_refuses_does_not_hold_back_the_next(
    tmp_path: Path, emu: Emulator
) -> None:
    """PostgreSQL refuses a NUL in text (here a custom source's name).  The instance's
    writer retried that batch for ever, so nothing it learned afterwards reached the
    journal, and waiters on other instances never returned.  Now the refused item is
    dropped and logged, and what follows is written."""
    url = url_for("postgresql", tmp_path)
    bad, good = 9_100_001, 9_100_002
    async with (
        instance(url, emu, transports=("journal",), fetch_details=False) as a,
        instance(url, emu, transports=("journal",), until="paid", fetch_details=False) as b,
    ):
        for order_id in (bad, good):
            a.track(order_id, until="paid")
        b.track(good)
        now = anyio.current_time()
        a.observe(Observation(bad, Status.PAID, source="shop\x00bot", at=now))
        a.observe(Observation(good, Status.PAID, source="shop-bot", at=now))
        with anyio.fail_after(10):
            result = await b.wait(good)
    assert (result.status, result.source) == (Status.PAID, "shop-bot")


async def test_two_trackers_sharing_one_open_journal_each_hear_every_change(
    tmp_path: Path,
) -> None:
    """``Tracker(journal=...)`` takes an open journal, which an application may share.
    The trackers shared its one LISTENing connection, and the second wait on it raised
    ``RuntimeError`` out of the follower, ending the tracker.  Each has its own now."""
    url = url_for("postgresql", tmp_path)
    options: dict[str, Any] = {"transports": ("journal",), "fetch_details": False}
    async with (
        open_journal(url) as shared,
        Tracker(project_id=1, journal=shared, until="paid", **options) as one,
        Tracker(project_id=1, journal=shared, until="paid", **options) as two,
        open_journal(url) as elsewhere,
    ):
        for tracker in (one, two):
            for order_id in (9_200_001, 9_200_002):
                tracker.track(order_id)
        await anyio.sleep(0.5)  # both followers waiting on their connections
        await OrderLog(elsewhere).record(
            [Note(i, Status.PAID, "webhook", time.time()) for i in (9_200_001, 9_200_002)]
        )
        with anyio.fail_after(10):
            results = [await t.wait(i) for t in (one, two) for i in (9_200_001, 9_200_002)]
    assert [r.status for r in results] == [Status.PAID] * 4


@on_databases
@pytest.mark.parametrize("fault", ["raises", "bytes"])
async def test_a_token_for_that_raises_skips_that_order_not_the_start(
    backend: str, tmp_path: Path, emu: Emulator, fault: str
) -> None:
    """A restarted instance resumes its unsettled orders: one the application's ``token_for``
    fails on (a deleted player, say), or gives no token for (bytes from a Redis client,
    which ``track`` refuses), must not keep the whole fleet from starting."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    broken, fine = await emu.create_order(user), await emu.create_order(user)
    async with instance(url, emu, user, instance="shop-1") as first:
        await owning(first, broken)
        await owning(first, fine)
    await emu.set_status(fine, "done", publish=False)

    def token_for(order_id: int, user_id: str | None) -> str | bytes:
        if order_id == broken and fault == "raises":
            raise KeyError(f"no player {user_id}")
        return user.token.encode() if order_id == broken else user.token

    async with instance(url, emu, None, token_for=token_for, instance="shop-1") as second:
        assert set(second._orders) == {fine}
        with anyio.fail_after(10):
            result = await second.wait(fine)
    assert result.status is Status.DONE


@on_databases
async def test_an_order_only_a_closed_instance_tracked_is_adopted_by_one_other(
    backend: str, tmp_path: Path, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A alone tracks the orders, then goes (closed without giving them up: its leases
    run out as after a SIGKILL).  B and C, which never tracked them and need no
    restart, take the order over by themselves: one of them, with a Get order at once,
    to its settlement and one ``on_settled`` call; an order ``token_for`` fails on
    is skipped and logged."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    orphan, broken = await emu.create_order(user), await emu.create_order(user)
    calls: list[Settled] = []

    async def on_settled(event: Settled) -> None:
        calls.append(event)

    def token_for(order_id: int, user_id: str | None) -> str:
        if order_id == broken:
            raise KeyError(f"no player {user_id}")
        return user.token

    options: dict[str, Any] = {"lease": 3.0, "on_settled": on_settled, "token_for": token_for}
    async with instance(url, emu, **options) as b, instance(url, emu, **options) as c:
        async with instance(url, emu, user, lease=3.0) as a:
            await owning(a, orphan)
            await owning(a, broken)
        await emu.set_status(orphan, "done", publish=False)  # Get order alone knows
        await eventually(lambda: orphan in b._orders or orphan in c._orders, timeout=20)
        adopter, other = (b, c) if orphan in b._orders else (c, b)
        with anyio.fail_after(15):
            result = await adopter.wait(orphan)
        await eventually(lambda: calls, timeout=10)
        await anyio.sleep(1.0)  # time for a second adoption or call, which must not come
        assert orphan not in other._orders and adopter.status(orphan) is Status.DONE
        assert broken not in b._orders and broken not in c._orders
    assert (result.status, result.source) == (Status.DONE, "polling")
    assert [(e.order_id, e.status, e.succeeded) for e in calls] == [(orphan, Status.DONE, True)]
    assert f"not adopting order {broken}: token_for raised" in caplog.text


@on_databases
async def test_an_order_given_up_here_is_adopted_when_its_last_follower_dies(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """B's waiter left the order (B keeps its ended record of it); A still follows it,
    then goes.  The fleet still needs the order followed: B adopts it, tracking it anew,
    rather than holding its lease with nothing following it."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    async with instance(url, emu, lease=2.0, token_for=lambda o, u: user.token) as b:
        assert b.fleet is not None
        async with instance(url, emu, user, lease=2.0) as a:
            await owning(a, order_id)
            b.track(order_id, token=user.token)
            b.untrack(order_id)
            given_up = b._orders[order_id]
            assert await b.fleet.flush(5)  # "nobody tracks it" written; A's renewal says otherwise

            async def tracked() -> bool:
                assert b.fleet is not None
                return (await b.fleet.log.orders([order_id]))[order_id].tracking

            await eventually(tracked)
        await emu.set_status(order_id, "done", publish=False)
        await eventually(lambda: b._orders.get(order_id) is not given_up, timeout=20)
        with anyio.fail_after(15):
            result = await b.wait(order_id)
    assert (result.status, result.source) == (Status.DONE, "polling")


@on_databases
async def test_on_settled_runs_once_across_the_fleet(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    orders = [await emu.create_order(user) for _ in range(3)]
    calls: list[tuple[str, Settled]] = []
    failed_once: set[int] = set()

    def handler(name: str) -> Any:
        async def on_settled(event: Settled) -> None:
            if event.order_id not in failed_once:  # the first try fails: retried, by either
                failed_once.add(event.order_id)
                raise RuntimeError("the game's database hiccuped")
            calls.append((name, event))

        return on_settled

    async with (
        instance(url, emu, user, on_settled=handler("a")) as a,
        instance(url, emu, user, on_settled=handler("b")) as b,
        receiver_for(url, emu),  # after delivery, a refund comes by webhook only
    ):
        for order_id in orders:
            a.track(order_id)
            b.track(order_id)
        for order_id in orders:
            await emu.run_script(order_id, [(0.05, "paid"), (0.05, "done")])
        for order_id in orders:
            await a.wait(order_id)
            await b.wait(order_id)
        await eventually(lambda: len(calls) >= len(orders), timeout=20)
        await emu.set_status(orders[0], "canceled")  # a refund, later: once more
        await eventually(lambda: len(calls) >= len(orders) + 1, timeout=20)
        await anyio.sleep(0.5)  # time for a second call, which must not come
    events = sorted((e.order_id, e.status) for _, e in calls)
    expected = sorted([*((o, Status.DONE) for o in orders), (orders[0], Status.CANCELED)])
    assert events == expected
    refund = next(e for _, e in calls if e.status is Status.CANCELED)
    assert refund.later and not refund.succeeded


def _told_all(url: str, order_id: int) -> bool:
    """The order's row marks every call of its changes recorded (``settled_told``)."""
    db = connect(url)
    try:
        query = f"SELECT settled_told, version FROM orderfsm_orders WHERE order_id = {order_id}"
        row = db.execute(query).fetchone()
        return row is not None and row[0] == row[1]
    finally:
        db.close()


@on_databases
@pytest.mark.parametrize("pruned", [False, True])
async def test_an_order_tracked_again_after_its_calls_were_made_gets_none_again(
    backend: str, tmp_path: Path, emu: Emulator, pruned: bool
) -> None:
    """An order delivered, then refunded, both calls made; the app stops, and later a
    new instance of it tracks the order again, before or after the retention pruned
    the calls' claims (and every change but the refund).  It hears the order's status
    from the journal, and makes neither call again: the order's row, never pruned,
    records them for good.  (With the claims alone, the retention let the refund's
    call, the one change left, be made a second time.)"""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    calls: list[Settled] = []

    async def on_settled(event: Settled) -> None:
        calls.append(event)

    async with (
        instance(url, emu, user, on_settled=on_settled) as first,
        receiver_for(url, emu),  # the refund comes by webhook only
    ):
        first.track(order_id)
        await emu.run_script(order_id, [(0.05, "paid"), (0.05, "done")])
        await first.wait(order_id)
        await emu.set_status(order_id, "canceled")
        await eventually(lambda: len(calls) >= 2, timeout=20)
        await eventually(lambda: _told_all(url, order_id), timeout=20)
    if pruned:
        async with open_journal(url) as journal:
            weeks = journal.settings.retention + 3600
            journal.sync.clock = lambda: time.time() + weeks  # a prune weeks later
            await journal.prune()
            keys = [settled_key(order_id, Status.DONE), settled_key(order_id, Status.CANCELED)]
            assert not await journal.claims(keys)
        assert history(url, order_id) == ["canceled"]  # the latest
    async with instance(url, emu, user, on_settled=on_settled) as again:
        again.track(order_id)
        await eventually(lambda: again.status(order_id) is Status.CANCELED, timeout=15)
        assert again.fleet is not None
        swept = again.fleet.sweeps
        await eventually(lambda: again.fleet is not None and again.fleet.sweeps >= swept + 2)
    assert [(e.status, e.succeeded, e.later) for e in calls] == [
        (Status.DONE, True, False), (Status.CANCELED, False, True)
    ]  # fmt: skip


@on_databases
async def test_a_failed_on_settled_is_retried_by_the_instance_that_called_it(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """The handler fails once (the game's database hiccuped): the instance that called
    it calls it again within moments, alone, not leaving it to the sweep a lease
    period later (here longer than the test)."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    tries: list[Settled] = []

    async def on_settled(event: Settled) -> None:
        tries.append(event)
        if len(tries) == 1:
            raise RuntimeError("the game's database hiccuped")

    async with instance(url, emu, user, lease=30.0, on_settled=on_settled) as a:
        a.track(order_id)
        await emu.run_script(order_id, [(0.05, "paid"), (0.05, "done")])
        await a.wait(order_id)
        await eventually(lambda: len(tries) >= 2, timeout=5)
    assert [(e.order_id, e.status) for e in tries] == [(order_id, Status.DONE)] * 2


@on_databases
async def test_news_before_any_track_settles_a_paid_goal_at_once_and_calls_on_settled_once(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """A webhook tells ``paid`` before any instance tracks the order (it waits in its
    delivery).  Then B, granting on ``paid`` on the journal alone, and A, with the
    default goal, track it: B's result comes at once from the journal (its first
    track writes the delivery's news), judged by its own goal, and ``on_settled`` is
    called for it once across the fleet, not again for A's track nor by a sweep (by
    either instance: whichever claims it first)."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    calls: list[tuple[str, Settled]] = []

    def handler(name: str) -> Any:
        async def on_settled(event: Settled) -> None:
            calls.append((name, event))

        return on_settled

    async with receiver_for(url, emu):
        await emu.set_status(order_id, "paid")  # order_paid to the receiver
        await eventually(
            lambda: ("order_paid", 204) in [d[:2] for d in deliveries_of(url, order_id)]
        )
    paid_only = {"transports": ("journal",), "until": "paid", "fetch_details": False}
    async with (
        instance(url, emu, on_settled=handler("b"), **paid_only) as b,
        instance(url, emu, user, on_settled=handler("a")) as a,
    ):
        b.track(order_id)
        with anyio.fail_after(5):
            result = await b.wait(order_id)
        a.track(order_id)
        await eventually(lambda: len(calls) >= 1, timeout=10)
        await anyio.sleep(1.5)  # past a lease period (1 s here), a sweep: no second call
    assert (result.status, result.source, result.succeeded) == (Status.PAID, "webhook", True)
    # Either instance may make the call: B queues it on settling, and A's sweep at its
    # start can find it owed and claim it first.  Once, with B's goal, is the promise.
    assert [(e.order_id, e.status, e.until) for _, e in calls] == [
        (order_id, Status.PAID, Status.PAID)
    ]


def failing(tried: list[Settled]) -> Any:
    """An ``on_settled`` that never succeeds (the game's database is down), noting each try."""

    async def on_settled(event: Settled) -> None:
        tried.append(event)
        raise RuntimeError("the game's database is down")

    return on_settled


@on_databases
async def test_an_order_settled_as_expired_keeps_its_call_when_its_instance_dies(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """A settles the order as expired after its grace, but its ``on_settled`` fails until
    A dies.  The journal must not say "nobody needs this order" before the call is
    recorded: the sweep cannot tell an expired order's grace, so only an instance
    following the order (resuming it here) can make the call."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    policy = DefaultPolicy(poll_interval=0.05, deadline=30.0, expired_grace=0.3)
    tried: list[Settled] = []
    calls: list[Settled] = []

    async def on_settled(event: Settled) -> None:
        calls.append(event)

    async with instance(url, emu, user, policy=policy, on_settled=failing(tried)) as a:
        await owning(a, order_id)
        await emu.set_status(order_id, "expired")
        await eventually(lambda: tried)
    options: dict[str, Any] = {"policy": policy, "on_settled": on_settled}
    async with instance(url, emu, token_for=lambda o, u: user.token, **options):
        await eventually(lambda: calls, timeout=15)
        await anyio.sleep(0.5)  # time for a second call, which must not come
    assert tried[0].status is Status.EXPIRED
    assert [(e.order_id, e.status, e.succeeded, e.later) for e in calls] == [
        (order_id, Status.EXPIRED, False, False)
    ]


@on_databases
async def test_an_expired_call_whose_answer_was_fenced_is_made_again(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """While the expired call runs, another attempt takes its claim over (staged: that
    attempt then dies without answering).  The answer is fenced, so the call is not
    recorded: it must not be taken for recorded (the order would be untracked, and the
    sweep cannot judge a lapse, so nobody would ever make it); it is made again."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    key = settled_key(order_id, Status.EXPIRED)
    policy = DefaultPolicy(poll_interval=0.05, deadline=30.0, expired_grace=0.3)
    started: list[Settled] = []

    async def on_settled(event: Settled) -> None:
        started.append(event)
        if len(started) == 1:
            db = connect(url)
            try:
                db.execute(
                    "UPDATE orderfsm_claims SET attempt = attempt + 1, owner = 'other',"
                    f" lease_until = {time.time() + 1.0} WHERE key = '{key}'"
                )
            finally:
                db.close()

    async def answered() -> bool:
        claim = (await reader.claims([key])).get(key)
        return claim is not None and claim.state is ClaimState.ANSWERED

    async with (
        open_journal(url) as reader,
        instance(url, emu, user, policy=policy, on_settled=on_settled) as a,
    ):
        await owning(a, order_id)
        await emu.set_status(order_id, "expired")
        await eventually(answered, timeout=30)
    assert [e.status for e in started] == [Status.EXPIRED, Status.EXPIRED]


@on_databases
async def test_the_sweep_calls_what_a_live_instance_would_have(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """A's ``on_settled`` fails until A dies; the orders move on afterwards (refunds by
    webhook).  B, which follows none of them, sweeps: every call A owed, in order, with
    the flags A would have given: ``done`` then the refund (``later``) for one; for an
    order refunded before delivery, the refund is its settlement (not ``later``)."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    delivered, refunded = await emu.create_order(user), await emu.create_order(user)
    tried: list[Settled] = []
    calls: list[Settled] = []

    async def on_settled(event: Settled) -> None:
        calls.append(event)

    async with receiver_for(url, emu):
        async with instance(url, emu, user, on_settled=failing(tried)) as a:
            for order_id in (delivered, refunded):
                await owning(a, order_id)
            await emu.run_script(delivered, [(0.05, "paid"), (0.05, "done")])
            await emu.run_script(refunded, [(0.05, "paid"), (0.05, "canceled")])
            await eventually(lambda: len({e.order_id for e in tried}) == 2)
        await emu.set_status(delivered, "canceled")  # the refund, by webhook alone
        options: dict[str, Any] = {"transports": ("journal",), "fetch_details": False}
        async with instance(url, emu, on_settled=on_settled, lease=0.5, **options):
            await eventually(lambda: len(calls) >= 3, timeout=20)
            await anyio.sleep(1.0)  # time for another call, which must not come
    seen = [(e.order_id, e.status, e.succeeded, e.later) for e in calls]
    assert sorted(seen) == sorted([
        (delivered, Status.DONE, True, False),
        (delivered, Status.CANCELED, False, True),
        (refunded, Status.CANCELED, False, False),
    ])  # fmt: skip
    assert [s for o, s, _, _ in seen if o == delivered] == [Status.DONE, Status.CANCELED]


def _tokens_in_database(url: str, token: str) -> bool:
    from support_journal import connect

    db = connect(url)
    try:
        for table in ("orderfsm_orders", "orderfsm_changes", "orderfsm_claims"):
            for row in db.execute(f"SELECT * FROM {table}").fetchall():
                if any(token in str(value) for value in row):
                    return True
        return False
    finally:
        db.close()


async def test_postgres_restarted_every_listener_catches_up(emu: Emulator) -> None:
    """The database goes away under two instances and comes back: the one that heard
    statuses meanwhile writes them once it can, the other's listener reconnects and
    catches up; nothing is missed (every change, not only the last) and no instance
    is restarted."""
    from support_postgres import postgres_server

    from orderfsm.journal.config import JournalSettings

    server = postgres_server()
    url = server.url()
    user = await emu.create_user()
    orders = [await emu.create_order(user) for _ in range(3)]
    # A's journal calls give up after 0.5 s (not 2 s): the outage (over a second) fails
    # more than A's first write.  A's lease outlasts the test: its lapse would have A
    # adopt its own orders again and write their whole past anew, hiding a lost write.
    async with (
        open_journal(url, JournalSettings(wait=0.5)) as journal,
        instance(journal, emu, user, lease=60.0) as a,
        instance(url, emu, transports=("journal",), fetch_details=False) as b,
    ):
        for order_id in orders:
            a.track(order_id)
            b.track(order_id)
        await eventually(lambda: all(a._orders[o].owned for o in orders))
        await anyio.to_thread.run_sync(server.stop)
        try:
            for order_id in orders:  # a hears these over its socket; b only through the journal
                await emu.set_status(order_id, "paid")
                await emu.set_status(order_id, "done")
            await eventually(lambda: all(a._orders[o].settled for o in orders))
            await anyio.sleep(1.0)  # an outage, not a blip
        finally:
            await anyio.to_thread.run_sync(server.start)
        with anyio.fail_after(30):
            results = {t: [await t.wait(order_id) for order_id in orders] for t in (a, b)}
    for r in results[a] + results[b]:
        assert [c.status for c in r.changes] == [Status.NEW, Status.PAID, Status.DONE], r


async def test_without_listen_a_polling_instance_still_hears_the_webhook(emu: Emulator) -> None:
    """``journal_poll``: behind PgBouncer's transaction pooling a LISTEN hears nothing,
    so the instance reads the journal on a timer; no session of it LISTENs."""
    from support_postgres import postgres_server

    url = postgres_server().url()
    tag = f"no-listen-{secrets.token_hex(4)}"
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    options = {"transports": ("journal",), "until": "paid", "fetch_details": False}
    async with (
        instance(f"{url}&application_name={tag}", emu, journal_poll=0.2, **options) as b,
        receiver_for(url, emu),
        open_journal(url) as probe,
    ):
        b.track(order_id)
        await emu.set_status(order_id, "paid")
        with anyio.fail_after(10):
            result = await b.wait(order_id)

        def sessions_of_b(db: Any) -> tuple[int, int]:
            # Only B's sessions: other tests' trackers may still be closing theirs.
            found = db.execute(
                "SELECT count(*), count(*) FILTER (WHERE query ILIKE 'LISTEN%%')"
                " FROM pg_stat_activity WHERE application_name = %s",
                (tag,),
            ).fetchone()
            return int(found[0]), int(found[1])

        sessions, listeners = await anyio.to_thread.run_sync(
            probe.store.read,  # type: ignore[attr-defined]
            sessions_of_b,
            time.monotonic() + 5,
        )
    assert (result.status, result.source) == (Status.PAID, "webhook")
    assert sessions > 0, "the tag must find B's sessions, or the next check proves nothing"
    assert listeners == 0


@on_databases
async def test_the_owner_and_a_follower_agree_on_an_order_paid_as_its_grace_ends(
    backend: str, tmp_path: Path, emu: Emulator
) -> None:
    """The owner asks Get order once more when an expired order's grace ends and hears
    it was paid; a follower on the journal alone waits for that look to reach it
    instead of settling as expired by itself (it told the app 'expired', then
    on_settled got both a failure and a success, neither flagged 'later')."""
    url = url_for(backend, tmp_path)
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    policy = DefaultPolicy(
        poll_interval=0.05, deadline=30.0, expired_grace=1.5, expired_poll_interval=1.0
    )
    calls: list[tuple[str, bool]] = []

    async def on_settled(event: Settled) -> None:
        calls.append((event.status.value, event.succeeded))

    owner_kw: dict[str, Any] = {"transports": ("polling",), "on_settled": on_settled}
    follower_kw: dict[str, Any] = {"transports": ("journal",), "fetch_details": False}
    async with (
        instance(url, emu, user, policy=policy, lease=3.0, **owner_kw) as a,
        instance(url, emu, policy=policy, lease=3.0, on_settled=on_settled, **follower_kw) as b,
    ):
        a.track(order_id, until="paid")
        b.track(order_id, until="paid")
        await emu.set_status(order_id, "expired")
        await eventually(lambda: Status.EXPIRED == a.status(order_id) == b.status(order_id))
        await anyio.sleep(1.2)  # after the last slow poll, before the grace ends
        await emu.set_status(order_id, "paid")
        await emu.get_order_fault("slow", delay=0.15, order_id=order_id)
        try:
            with anyio.fail_after(20):
                results = [(await t.wait(order_id)).status for t in (a, b)]
            await eventually(lambda: calls, timeout=10)
        finally:
            await emu.clear_faults()
    assert results == [Status.PAID, Status.PAID] and calls == [("paid", True)]


async def test_a_start_the_journal_cannot_answer_still_starts_and_adopts_later(
    tmp_path: Path,
) -> None:
    """A database failing over during a deploy must not stop an instance from starting:
    the start's take-over is given up (logged), and the adopter takes the orders
    nobody follows at its next looks, once the journal answers again."""
    from support_journal import DatabaseHold

    from orderfsm.errors import OrderNotTracked
    from orderfsm.journal.config import JournalSettings

    path = str(tmp_path / "fleet.sqlite3")
    settings = JournalSettings(wait=0.5)
    order_id = 10_000_001
    async with open_journal(path, settings) as journal:
        db = connect(path)
        try:  # an order whose owner is gone: a start (or the adopter) takes it over
            now = time.time()
            db.execute(
                "INSERT INTO orderfsm_orders (order_id, status, version, until, user_id,"
                " tracking, tracked_at, owner, lease_until, fence, updated_at)"
                " VALUES (?, 'new', 1, 'done', 'player', 1, ?, 'gone', 0.0, 0, ?)",
                (order_id, now, now),
            )
            db.execute(
                "INSERT INTO orderfsm_changes (order_id, version, status, previous, source, at)"
                " VALUES (?, 1, 'new', NULL, 'websocket', ?)",
                (order_id, now),
            )
            db.commit()
        finally:
            db.close()
        hold: DatabaseHold | None = DatabaseHold(path, "")
        try:
            async with Tracker(
                project_id=1,
                transports=("polling",),
                api_url="http://127.0.0.1:9",
                journal=journal,
                token_for=lambda order_id, user_id: "token",
                fetch_details=False,
                lease=1.5,
            ) as tracker:
                assert hold is not None
                hold.release()
                hold = None

                def status() -> Status | None:
                    try:
                        return tracker.status(order_id)
                    except OrderNotTracked:
                        return None

                assert status() is None  # the start could not take it
                await eventually(lambda: status() is Status.NEW, timeout=20)
        finally:
            if hold is not None:
                hold.release()
