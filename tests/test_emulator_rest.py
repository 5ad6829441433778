"""Get order: the documented 200 body, errors in the Store shape, injected faults."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import pytest

from transports.emulator import Emulator, User

pytestmark = pytest.mark.anyio


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(ping_interval=0, seed=1) as emulator:
        yield emulator


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def get_order(
    http: httpx.AsyncClient,
    emu: Emulator,
    order_id: int | str,
    token: str | None,
    project_id: int | None = None,
) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    pid = emu.project_id if project_id is None else project_id
    return await http.get(f"{emu.api_url}/v2/project/{pid}/order/{order_id}", headers=headers)


async def test_200_body_has_items_and_prices(emu: Emulator, http: httpx.AsyncClient) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(
        user,
        items=[{"sku": "sword", "quantity": 2, "amount": "9.98"}, {"sku": "shield"}],
        amount="39.98",
        currency="EUR",
    )
    await emu.set_status(order, "paid")
    response = await get_order(http, emu, order, user.token)
    assert response.status_code == 200
    assert response.json() == {
        "order_id": order,
        "status": "paid",
        "content": {
            "price": {"amount": "39.98", "amount_without_discount": "39.98", "currency": "EUR"},
            "is_free": False,
            "items": [
                {
                    "sku": "sword",
                    "quantity": 2,
                    "is_free": False,
                    "price": {
                        "amount": "9.98",
                        "amount_without_discount": "9.98",
                        "currency": "EUR",
                    },
                },
                {
                    "sku": "shield",
                    "quantity": 1,
                    "is_free": False,
                    "price": {"amount": "30", "amount_without_discount": "30", "currency": "EUR"},
                },
            ],
        },
    }


async def test_status_changes_show_up(emu: Emulator, http: httpx.AsyncClient) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    seen = []
    for status in ["new", "paid", "done"]:
        if status != "new":
            await emu.set_status(order, status, publish=False)
        seen.append((await get_order(http, emu, order, user.token)).json()["status"])
    assert seen == ["new", "paid", "done"]


@pytest.mark.parametrize("token", [None, "garbage", "revoked"])
async def test_401_for_a_bad_token(
    emu: Emulator, http: httpx.AsyncClient, token: str | None
) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    if token == "revoked":
        token = user.token
        await emu.revoke_token(token)
    response = await get_order(http, emu, order, token)
    assert response.status_code == 401
    body = response.json()
    assert body["statusCode"] == 401 and isinstance(body["errorCode"], int)
    assert isinstance(body["errorMessage"], str)


async def test_404_in_the_store_error_shape(emu: Emulator, http: httpx.AsyncClient) -> None:
    alice: User = await emu.create_user("alice")
    bob = await emu.create_user("bob")
    order = await emu.create_order(alice)
    expected = {
        "statusCode": 404,
        "errorCode": 9001,
        "errorMessage": "[0401-9001]: Order not found",
    }
    cases: list[tuple[int | str, str, int | None]] = [
        (999, alice.token, None),  # unknown order
        ("abc", alice.token, None),  # not a number
        (order, bob.token, None),  # someone else's order
        (order, alice.token, 777),  # another project
    ]
    for order_id, token, project in cases:
        response = await get_order(http, emu, order_id, token, project)
        assert response.status_code == 404 and response.json() == expected


async def test_429_with_retry_after_for_n_requests(emu: Emulator, http: httpx.AsyncClient) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    await emu.get_order_fault("rate_limit", retry_after=7, count=2)
    codes = []
    for _ in range(3):
        response = await get_order(http, emu, order, user.token)
        codes.append(response.status_code)
        if response.status_code == 429:
            assert response.headers["Retry-After"] == "7"
            assert response.json()["statusCode"] == 429
    assert codes == [429, 429, 200]


async def test_500_for_a_while(emu: Emulator, http: httpx.AsyncClient) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    set_at = anyio.current_time()
    await emu.get_order_fault("error", status=500, seconds=1.0)
    first = await get_order(http, emu, order, user.token)
    assert first.status_code == 500 and first.json()["statusCode"] == 500
    codes = []
    with anyio.fail_after(10):
        while not codes or codes[-1] != 200:
            codes.append((await get_order(http, emu, order, user.token)).status_code)
            await anyio.sleep(0.05)
    assert set(codes[:-1]) <= {500}  # 500 until the fault ends, then 200
    assert anyio.current_time() - set_at >= 1.0


async def test_slow_answers(emu: Emulator, http: httpx.AsyncClient) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    await emu.get_order_fault("slow", delay=1.0, count=1)
    start = anyio.current_time()
    assert (await get_order(http, emu, order, user.token)).status_code == 200
    assert anyio.current_time() - start >= 1.0
    start = anyio.current_time()
    assert (await get_order(http, emu, order, user.token)).status_code == 200
    assert anyio.current_time() - start < 1.0  # count=1: only the first was slowed


async def test_faults_can_target_one_order_and_be_cleared(
    emu: Emulator, http: httpx.AsyncClient
) -> None:
    user = await emu.create_user("alice")
    hit, spared = await emu.create_order(user), await emu.create_order(user)
    await emu.get_order_fault("error", status=503, order_id=hit)
    assert (await get_order(http, emu, hit, user.token)).status_code == 503
    assert (await get_order(http, emu, spared, user.token)).status_code == 200
    await emu.clear_faults()
    assert (await get_order(http, emu, hit, user.token)).status_code == 200


async def test_requests_are_counted_per_order(emu: Emulator, http: httpx.AsyncClient) -> None:
    user = await emu.create_user("alice")
    order = await emu.create_order(user)
    for _ in range(3):
        await get_order(http, emu, order, user.token)
    await get_order(http, emu, 424242, user.token)
    stats = await emu.stats()
    assert len(stats.get_order_requests[order]) == 3 and stats.get_order_total == 4
    times = stats.get_order_requests[order]
    assert times == sorted(times)
