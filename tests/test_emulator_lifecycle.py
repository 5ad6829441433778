"""The emulator's order life cycle as Xsolla documents it (xsolla.md §1), and the host suspend.

Limited items expire the user's earlier unpaid orders; ``pay`` / ``deliver`` /
``refund`` / ``expire`` are the checked moves (an expired order is paid only
within the purchase limit, else error 2002); ``suspend`` black-holes a user's
sockets.  Everything over real loopback sockets, on asyncio and trio.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support_webhook import Recorder, serve_receiver
from test_emulator_faults import expect_silence

from transports.emulator import Emulator, EmulatorClient, EmulatorError, User
from transports.emulator.raw import RawSocket, raw_socket
from transports.webhook import OrderCanceled, OrderPaid, WebhookReceiver

pytestmark = pytest.mark.anyio

SECRET = "lifecycle-secret"
SWORD = "com.example.sword"


def limited(limit: int = 1, sku: str = SWORD) -> list[dict[str, Any]]:
    return [{"sku": sku, "limit": limit}]


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(ping_interval=0, secret=SECRET, seed=13) as emulator:
        yield emulator


@pytest.fixture
async def webhooks(emu: Emulator) -> AsyncIterator[Recorder]:
    """The emulator's webhooks, verified by our receiver on loopback (ASGI: both loops)."""
    app = Recorder()
    async with serve_receiver(WebhookReceiver(SECRET, app), "asgi") as url:
        await emu.configure_webhooks(url, [0.05])
        yield app


async def until(check: Callable[[], Any]) -> None:
    """Poll the emulator until ``check()`` (an awaitable) is true."""
    with anyio.fail_after(5):
        while not await check():  # noqa: ASYNC110 (the condition is in the emulator)
            await anyio.sleep(0.02)


async def handled(app: Recorder, count: int) -> list[tuple[str, int]]:
    async def enough() -> bool:
        return len(app.handled) >= count

    await until(enough)
    return [(n.notification_type, n.order_id) for n in app.handled]  # type: ignore[union-attr]


async def get_order_status(emu: Emulator, user: User, order_id: int) -> str:
    async with httpx.AsyncClient() as http:
        response = await http.get(
            emu.get_order_url(emu.project_id, order_id),
            headers={"Authorization": f"Bearer {user.token}"},
        )
    assert response.status_code == 200
    return str(response.json()["status"])


async def statuses_pushed(ws: RawSocket, count: int) -> list[tuple[int, str]]:
    seen: list[tuple[int, str]] = []
    with anyio.fail_after(5):
        while len(seen) < count:
            for message in await ws.receive():
                data = message["push"]["pub"]["data"]
                seen.append((data["order_id"], data["status"]))
    return seen


async def test_a_limited_order_expires_the_earlier_unpaid_ones_without_a_webhook(
    emu: Emulator, webhooks: Recorder
) -> None:
    alice, bob = await emu.create_user("alice"), await emu.create_user("bob")
    async with raw_socket(emu.ws_url) as ws:
        await ws.connect(alice.token, emu.project_id)
        first = await emu.create_order(alice, items=limited())
        shield = await emu.create_order(alice, items=[{"sku": "shield"}])
        bobs = await emu.create_order(bob, items=limited())
        second = await emu.create_order(alice, items=limited())
        assert await statuses_pushed(ws, 4) == [
            (first, "new"),
            (shield, "new"),
            (second, "new"),
            (first, "expired"),
        ]
    assert await get_order_status(emu, alice, first) == "expired"
    assert await get_order_status(emu, alice, shield) == "new"
    assert await get_order_status(emu, bob, bobs) == "new"
    assert (await emu.order(second))["items"][0]["limit"] == 1
    # No notification for the expiry; the pay that follows does send one.
    await emu.pay(second)
    assert await handled(webhooks, 1) == [("order_paid", second)]
    assert [(e.notification_type, e.order_id) for e in await emu.events(alice)] == [
        ("order_paid", second)
    ]
    assert {a.order_id for a in await emu.webhook_deliveries()} == {second}


async def test_pay_deliver_then_refund_after_delivery_sends_order_canceled(
    emu: Emulator, webhooks: Recorder
) -> None:
    user = await emu.create_user()
    order = await emu.create_order(user)
    paid = await emu.pay(order)
    assert paid.data == {"order_id": order, "status": "paid"}
    assert (await emu.deliver(order)).data["status"] == "done"
    assert (await emu.refund(order)).data["status"] == "canceled"
    assert await handled(webhooks, 2) == [("order_paid", order), ("order_canceled", order)]
    assert isinstance(webhooks.handled[0], OrderPaid)
    assert isinstance(webhooks.handled[1], OrderCanceled)
    assert [p.data["status"] for p in await emu.publications(user)] == [
        "new",
        "paid",
        "done",
        "canceled",
    ]
    assert [e.notification_type for e in await emu.events(user)] == [
        "order_paid",
        "order_canceled",
    ]


async def test_an_expired_order_is_paid_while_the_limit_allows(emu: Emulator) -> None:
    user = await emu.create_user()
    first = await emu.create_order(user, items=limited(limit=2))
    second = await emu.create_order(user, items=limited(limit=2))
    assert (await emu.order(first))["status"] == "expired"
    await emu.pay(second)
    # The user was already paying the first one: it goes through, one below the limit.
    assert (await emu.pay(first)).data == {"order_id": first, "status": "paid"}
    assert [p.data["status"] for p in await emu.publications(user)] == [
        "new",
        "new",
        "expired",
        "paid",
        "paid",
    ]


async def test_paying_an_expired_order_over_the_limit_fails_with_2002(emu: Emulator) -> None:
    user = await emu.create_user()
    first = await emu.create_order(user, items=limited())
    second = await emu.create_order(user, items=limited())
    await emu.pay(second)
    before = await emu.publications(user)
    with pytest.raises(EmulatorError) as refused:
        await EmulatorClient(emu.base_url).pay(first)
    assert refused.value.status == 422 and refused.value.error_code == 2002
    assert "limit" in refused.value.message
    async with httpx.AsyncClient() as http:
        raw = await http.post(f"{emu.control_url}/orders/{first}/pay", json={})
    assert raw.status_code == 422 and raw.json()["errorCode"] == 2002
    assert (await emu.order(first))["status"] == "expired"
    assert await emu.publications(user) == before
    assert [e.order_id for e in await emu.events(user)] == [second]
    # A refund frees the limit: now the expired order can be paid.
    await emu.refund(second)
    assert (await emu.pay(first)).data["status"] == "paid"


async def test_a_new_order_over_the_limit_is_refused_too(emu: Emulator) -> None:
    user = await emu.create_user()
    first = await emu.create_order(user, items=limited())
    second = await emu.create_order(user, items=limited())
    await emu.pay(first)  # expired, but within the limit
    with pytest.raises(EmulatorError) as refused:
        await emu.pay(second)
    assert refused.value.error_code == 2002
    assert (await emu.order(second))["status"] == "new"


@pytest.mark.parametrize(
    ("steps", "action", "status"),
    [
        ([], "deliver", "new"),
        ([], "refund", "new"),
        (["paid"], "expire", "paid"),
        (["paid"], "pay", "paid"),
        (["paid", "done"], "deliver", "done"),
        (["canceled"], "pay", "canceled"),
        (["canceled"], "refund", "canceled"),
    ],
)
async def test_an_illegal_move_is_refused_and_changes_nothing(
    emu: Emulator, steps: list[str], action: str, status: str
) -> None:
    user = await emu.create_user()
    order = await emu.create_order(user)
    for step in steps:
        await emu.set_status(order, step)  # the raw tool still moves anything
    before = await emu.publications(user)
    with pytest.raises(EmulatorError) as refused:
        await getattr(emu, action)(order)
    assert refused.value.status == 409 and refused.value.error_code is None
    assert f"cannot {action} order {order}" in refused.value.message
    assert repr(status) in refused.value.message
    assert (await emu.order(order))["status"] == status
    assert await emu.publications(user) == before


async def test_bad_limits_and_unknown_orders_are_clear_errors(emu: Emulator) -> None:
    user = await emu.create_user()
    for bad in (0, -1, "1", True):
        with pytest.raises(EmulatorError) as refused:
            await emu.create_order(user, items=[{"sku": SWORD, "limit": bad}])
        assert refused.value.status == 400 and "limit" in refused.value.message
    with pytest.raises(EmulatorError) as unknown:
        await emu.pay(1)
    assert unknown.value.status == 404


async def test_a_script_runs_checked_moves_and_stops_at_a_refused_one(emu: Emulator) -> None:
    user = await emu.create_user()
    order = await emu.create_order(user)
    await emu.run_script(order, [(0, "expire"), (0.02, "pay"), (0.02, "deliver"), (0, "refund")])
    stuck = await emu.create_order(user)
    await emu.run_script(stuck, [(0, "deliver"), (0, "paid")])

    async def both_over() -> bool:
        return (await emu.order(order))["status"] == "canceled" and bool(
            (await emu.order(stuck))["script_errors"]
        )

    await until(both_over)
    statuses = [(p.data["order_id"], p.data["status"]) for p in await emu.publications(user)]
    assert [s for o, s in statuses if o == order] == ["new", "expired", "paid", "done", "canceled"]
    view = await emu.order(stuck)
    assert view["status"] == "new" and [s for o, s in statuses if o == stuck] == ["new"]
    assert view["script_errors"] == [view["script_errors"][0]]
    assert f"cannot deliver order {stuck}" in view["script_errors"][0]


async def test_a_suspended_host_hears_nothing_and_is_not_closed() -> None:
    # Pings every 0.2 s with a 0.2 s pong timeout: a socket that were merely
    # unanswered would be closed 3012 within the silence below.
    async with Emulator(ping_interval=0.2, pong_timeout=0.2, seed=2) as emu:
        user = await emu.create_user("sleeper")
        order = await emu.create_order(user)
        async with raw_socket(emu.ws_url) as asleep:
            reply = (await asleep.connect(user.token, emu.project_id))["connect"]
            position = reply["subs"][user.channel]
            assert await emu.suspend(user) == 1
            await emu.pay(order)
            await asleep.send({"id": 2, "history": {"channel": user.channel, "limit": -1}})
            await asleep.send_text("{}")  # a pong nobody asked for, not punished either
            async with raw_socket(emu.ws_url) as opened_meanwhile:
                data = {"auth": user.token, "project_id": emu.project_id}
                await opened_meanwhile.send({"id": 1, "connect": {"data": data}})
                await expect_silence(asleep, 0.8)
                await expect_silence(opened_meanwhile, 0.1)
                states = [c.state for c in await emu.connections(user)]
                assert states == ["suspended", "suspended"]
                await emu.resume(user)
                # Sockets opened after the resume work, and recover what was published.
                async with raw_socket(emu.ws_url) as awake:
                    recover = {"recover": True, **position}
                    reply = await awake.connect(
                        user.token, emu.project_id, subs={user.channel: recover}
                    )
                    sub = reply["connect"]["subs"][user.channel]
                    assert sub["recovered"] is True
                    assert [p["data"] for p in sub["publications"]] == [
                        {"order_id": order, "status": "paid"}
                    ]
                await expect_silence(asleep, 0.3)  # the old ones stay dead
        # Once the client hangs up, the server lets the silenced sockets go.

        async def all_closed() -> bool:
            return all(c.state == "closed" for c in await emu.connections(user))

        await until(all_closed)
        assert (await emu.stats()).connects == 2  # not the one opened while suspended


# --- the invariant, for any sequence of operations ------------------------------------

OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.booleans()),
        st.tuples(st.sampled_from(["pay", "deliver", "refund"]), st.integers(0, 7)),
    ),
    max_size=12,
)


@pytest.fixture(scope="module")
def shared_emu() -> Iterator[Emulator]:
    with Emulator(ping_interval=0, seed=17) as emulator:
        yield emulator


async def attempt(emu: Emulator, action: str, order: int) -> EmulatorError | None:
    """Run a checked move; its refusal, if any."""
    try:
        await getattr(emu, action)(order)
    except EmulatorError as exc:
        return exc
    return None


def held(statuses: dict[int, str], limited_ids: set[int]) -> int:
    return sum(statuses[o] in ("paid", "done") for o in limited_ids)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(limit=st.integers(1, 2), operations=OPERATIONS)
async def test_the_purchase_limit_holds_and_only_superseded_new_orders_expire(
    shared_emu: Emulator, limit: int, operations: list[tuple[str, Any]]
) -> None:
    emu = shared_emu
    user = await emu.create_user()
    orders: list[int] = []
    limited_ids: set[int] = set()
    statuses: dict[int, str] = {}
    for op, arg in operations:
        before = dict(statuses)
        if op == "create":  # arg: with the limited sword, or an unrelated shield
            items = limited(limit) if arg else [{"sku": "shield"}]
            orders.append(await emu.create_order(user, items=items))
            if arg:
                limited_ids.add(orders[-1])
        elif orders:
            order = orders[arg % len(orders)]
            refused = await attempt(emu, op, order)
            legal = {"pay": ("new", "expired"), "deliver": ("paid",), "refund": ("paid", "done")}
            over = op == "pay" and order in limited_ids and held(before, limited_ids) >= limit
            if before[order] not in legal[op]:
                assert refused is not None and refused.status == 409
            elif over:
                assert refused is not None and refused.error_code == 2002
            else:
                assert refused is None
        for pub in await emu.publications(user):
            statuses[pub.data["order_id"]] = pub.data["status"]
        assert held(statuses, limited_ids) <= limit
        for order, status in statuses.items():
            if status == "expired" and before.get(order) != "expired":
                # expired just now: a new order, superseded by a newer limited one
                assert before[order] == "new" and order in limited_ids
                assert op == "create" and arg and orders[-1] > order
