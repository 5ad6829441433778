"""The emulator's Event API: events per user, the cursor, auth, processed marks, faults."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import anyio
import httpx
import pytest

from transports.emulator import Emulator, EmulatorError, User

pytestmark = pytest.mark.anyio


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(ping_interval=0, seed=3) as emulator:
        yield emulator


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def get_events(
    http: httpx.AsyncClient, emu: Emulator, token: str | None, **query: Any
) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return await http.get(emu.events_url, headers=headers, params=query)


async def events_of(http: httpx.AsyncClient, emu: Emulator, user: User, **query: Any) -> list[Any]:
    response = await get_events(http, emu, user.token, **query)
    assert response.status_code == 200, response.text
    events: list[Any] = response.json()["events"]
    return events


async def test_paid_and_canceled_become_events_carrying_the_webhook_body(
    emu: Emulator, http: httpx.AsyncClient
) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user, amount="4.99", currency="EUR")
    await emu.set_status(order, "paid")
    await emu.set_status(order, "canceled")
    first, second = await events_of(http, emu, user, after_id=0)
    assert set(first) == {"id", "status", "created_at", "data"}
    assert first["id"] < second["id"]
    assert first["status"] == second["status"] == "new"
    assert datetime.fromisoformat(first["created_at"]).tzinfo is not None
    for event, kind, status in (
        (first, "order_paid", "paid"),
        (second, "order_canceled", "canceled"),
    ):
        data = event["data"]
        assert data["notification_type"] == kind
        assert data["order"]["id"] == order and data["order"]["status"] == status
        assert data["order"]["amount"] == "4.99" and data["order"]["currency"] == "EUR"
        assert data["user"]["external_id"] == "alice"
        assert data["items"][0]["sku"] == "com.xsolla.item_1"


async def test_the_event_data_is_byte_for_byte_the_webhook_sent(
    emu: Emulator, http: httpx.AsyncClient
) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    # nothing listens on port 9: the attempt is recorded with its exact body
    await emu.configure_webhooks("http://127.0.0.1:9/hook", retry_intervals=[])
    await emu.set_status(order, "paid")
    with anyio.fail_after(5):
        while not (deliveries := await emu.webhook_deliveries()):  # noqa: ASYNC110 (remote)
            await anyio.sleep(0.02)
    [event] = await events_of(http, emu, user)
    assert deliveries[0].body == json.dumps(event["data"], separators=(",", ":"))


async def test_no_event_for_other_statuses_or_when_notifications_are_off(
    emu: Emulator, http: httpx.AsyncClient
) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    for status in ("new", "done", "expired", "refunded"):
        await emu.set_status(order, status)
    await emu.set_status(order, "paid", webhook=False)
    assert await events_of(http, emu, user) == []
    await emu.set_status(order, "canceled")
    [event] = await events_of(http, emu, user)
    assert event["data"]["notification_type"] == "order_canceled"


async def test_each_user_sees_only_their_own_events_with_ids_increasing_across_users(
    emu: Emulator, http: httpx.AsyncClient
) -> None:
    alice, bob = await emu.create_user("alice"), await emu.create_user("bob")
    a1, b1, a2 = (
        await emu.create_order(alice),
        await emu.create_order(bob),
        await emu.create_order(alice),
    )
    for order in (a1, b1, a2):
        await emu.set_status(order, "paid")
    alice_events = await events_of(http, emu, alice)
    bob_events = await events_of(http, emu, bob)
    assert [e["data"]["order"]["id"] for e in alice_events] == [a1, a2]
    assert [e["data"]["order"]["id"] for e in bob_events] == [b1]
    assert alice_events[0]["id"] < bob_events[0]["id"] < alice_events[1]["id"]
    stored = await emu.events()
    assert [e.event_id for e in stored] == sorted(e.event_id for e in stored)
    assert [e.order_id for e in await emu.events(bob)] == [b1]


async def test_after_id_is_a_cursor_and_types_filter(
    emu: Emulator, http: httpx.AsyncClient
) -> None:
    user = await emu.create_user("alice")
    orders = [await emu.create_order(user) for _ in range(3)]
    for order in orders:
        await emu.set_status(order, "paid")
    await emu.set_status(orders[0], "canceled")
    every = await events_of(http, emu, user, after_id=0)
    ids = [e["id"] for e in every]
    assert len(ids) == 4 and ids == sorted(ids)
    assert [e["id"] for e in await events_of(http, emu, user, after_id=ids[1])] == ids[2:]
    assert await events_of(http, emu, user, after_id=ids[-1]) == []
    canceled = await events_of(http, emu, user, types="order_canceled")
    assert [e["id"] for e in canceled] == [ids[3]]
    both = await events_of(http, emu, user, types="order_paid, order_canceled", project_id=12345)
    assert [e["id"] for e in both] == ids
    assert await events_of(http, emu, user, types="payment") == []


async def test_a_page_holds_at_most_100_events(emu: Emulator, http: httpx.AsyncClient) -> None:
    user = await emu.create_user("alice")
    for i in range(105):
        await emu.add_event(user, {"notification_type": "order_paid", "order": {"id": i + 1}})
    page = await events_of(http, emu, user, limit=1000)
    assert len(page) == 100
    rest = await events_of(http, emu, user, after_id=page[-1]["id"])
    assert [e["data"]["order"]["id"] for e in rest] == [101, 102, 103, 104, 105]
    assert len(await events_of(http, emu, user, limit=3)) == 3


async def test_authentication_by_header_or_query_and_typed_errors(
    emu: Emulator, http: httpx.AsyncClient
) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    await emu.set_status(order, "paid")
    by_query = await http.get(emu.events_url, params={"token": user.token})
    assert by_query.status_code == 200 and len(by_query.json()["events"]) == 1
    for token in (None, "not-a-token"):
        response = await get_events(http, emu, token)
        assert response.status_code == 401 and response.json()["statusCode"] == 401
    await emu.revoke_token(user.token)
    assert (await get_events(http, emu, user.token)).status_code == 401
    fresh = await emu.issue_token(user)
    assert (await get_events(http, emu, fresh, project_id=999)).status_code == 404
    for bad in ("-1", "x", "1.5"):
        response = await get_events(http, emu, fresh, after_id=bad)
        assert response.status_code == 400 and "after_id" in response.json()["errorMessage"]


async def test_processed_marks_only_the_users_own_events(
    emu: Emulator, http: httpx.AsyncClient
) -> None:
    alice, bob = await emu.create_user("alice"), await emu.create_user("bob")
    order = await emu.create_order(alice)
    await emu.set_status(order, "paid")
    [event] = await events_of(http, emu, alice)
    url = f"{emu.events_url}/{event['id']}/processed"
    bob_tries = await http.post(url, headers={"Authorization": f"Bearer {bob.token}"})
    assert bob_tries.status_code == 404
    assert (await http.post(url)).status_code == 401
    marked = await http.post(url, headers={"Authorization": f"Bearer {alice.token}"})
    assert marked.status_code == 204
    [again] = await events_of(http, emu, alice)
    assert again["status"] == "processed" and again["id"] == event["id"]
    [stored] = await emu.events(alice)
    assert stored.status == "processed"
    unknown = await http.post(f"{emu.events_url}/999999/processed", params={"token": alice.token})
    assert unknown.status_code == 404


async def test_raw_events_for_client_tests(emu: Emulator, http: httpx.AsyncClient) -> None:
    user = await emu.create_user("alice")
    junk = [None, "text", [1, 2], {"notification_type": 7}, {"order": {"id": "12"}}]
    stored = [await emu.add_event(user, data) for data in junk]
    assert [s.notification_type for s in stored] == [""] * 5
    assert [s.order_id for s in stored] == [None] * 5
    assert [e["data"] for e in await events_of(http, emu, user)] == junk
    with pytest.raises(EmulatorError) as info:
        await emu.add_event("nobody", {})
    assert info.value.status == 404


async def test_faults_hit_the_service_they_name(emu: Emulator, http: httpx.AsyncClient) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    get_order_url = emu.get_order_url(emu.project_id, order)
    auth = {"Authorization": f"Bearer {user.token}"}

    async def codes() -> tuple[int, int]:
        events = await get_events(http, emu, user.token)
        get_order = await http.get(get_order_url, headers=auth)
        return events.status_code, get_order.status_code

    await emu.get_order_fault("error", status=503, count=1)  # Get order only, by default
    assert await codes() == (200, 503)
    await emu.get_order_fault("error", status=500, count=1, service="events")
    assert await codes() == (500, 200)
    await emu.get_order_fault("error", status=502, count=2, service="any")
    assert await codes() == (502, 502)
    assert await codes() == (200, 200)
    await emu.get_order_fault("error", status=500, order_id=order, service="any")
    assert await codes() == (200, 500)  # an order's fault never reaches /events
    await emu.clear_faults()
    await emu.get_order_fault("rate_limit", retry_after=4, count=1, service="events")
    limited = await get_events(http, emu, user.token)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "4"
    await emu.get_order_fault("slow", delay=0.3, count=1, service="events")
    start = anyio.current_time()
    assert (await get_events(http, emu, user.token)).status_code == 200
    assert anyio.current_time() - start >= 0.3
    assert (await emu.stats()).events_requests == 7
    with pytest.raises(EmulatorError) as info:
        await emu.get_order_fault("error", service="webhooks")
    assert info.value.status == 400


async def test_info_names_the_events_url(emu: Emulator) -> None:
    info = await emu.info()
    assert info["events_url"] == emu.events_url == emu.base_url + "/events"
