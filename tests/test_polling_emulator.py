"""Polling Get order on the emulator over loopback, on asyncio and trio."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator

import anyio
import pytest
from support_http import Request, free_port_url, http_response, loopback_server

from orderfsm.errors import OrderNotFound, ServiceUnavailable, TokenRejected
from orderfsm.interface import Health, HealthReport, TokenProvider
from orderfsm.testing import RecordingSink
from transports.emulator import Emulator, User
from transports.http import ConnectFailed, RequestTimeout
from transports.polling import (
    InvalidOrderAnswer,
    OrderDetails,
    PollConfig,
    ServerError,
    TokenProviderFailed,
    fetch_order,
    poll_order,
)
from transports.polling.driver import order_url

FAST = PollConfig(interval=0.05, jitter=0.1, request_timeout=2.0)


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(seed=7) as emulator:
        yield emulator


def token_of(user: User, calls: list[str] | None = None) -> TokenProvider:
    async def provide() -> str:
        if calls is not None:
            calls.append(user.token)
        return user.token

    return provide


def healths(sink: RecordingSink) -> list[Health]:
    return [r.health for r in sink.reports]


def degraded(sink: RecordingSink) -> list[HealthReport]:
    return [r for r in sink.reports if r.health is Health.DEGRADED]


async def new_order(emu: Emulator, name: str) -> tuple[User, int]:
    del name  # for reading only: the emulator picks unique ids
    user = await emu.create_user()
    return user, await emu.create_order(user)


async def poll(
    emu: Emulator,
    user: User,
    order_id: int,
    sink: RecordingSink,
    config: PollConfig = FAST,
    *,
    token: TokenProvider | None = None,
) -> OrderDetails:
    """Poll the user's order with the user's token, or with ``token`` (a callable under test)."""
    return await poll_order(
        order_id,
        project_id=emu.project_id,
        token=token_of(user) if token is None else token,
        sink=sink,
        api=emu.api_url,
        config=config,
    )


async def step_through(
    emu: Emulator, order_id: int, sink: RecordingSink, statuses: list[str], polls: int = 1
) -> None:
    """Move the order along once the poller has seen each status (and asked
    ``polls`` times in all, the first time): what it reports does not hang on
    how fast the machine is."""
    for status in statuses:
        await sink.wait_for(lambda s: bool(s.observations))
        with anyio.fail_after(10):
            while len((await emu.order(order_id))["get_order_requests"]) < polls:  # noqa: ASYNC110
                await anyio.sleep(0.01)  # the emulator's record, read until it holds
        polls = 0
        seen = len(sink.observations)
        await emu.set_status(order_id, status)
        await sink.wait_for(lambda s, n=seen: len(s.observations) > n)


async def poll_while(
    emu: Emulator,
    user: User,
    order_id: int,
    sink: RecordingSink,
    statuses: list[str],
    config: PollConfig = FAST,
    polls: int = 1,
) -> OrderDetails:
    """Poll the order while :func:`step_through` moves it through ``statuses``."""
    details: list[OrderDetails] = []

    async def run() -> None:
        details.append(await poll(emu, user, order_id, sink, config))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await step_through(emu, order_id, sink, statuses, polls)
    return details[0]


@pytest.mark.anyio
async def test_polling_follows_an_order_to_its_final_status(emu: Emulator) -> None:
    user, order_id = await new_order(emu, "follow")
    sink = RecordingSink()
    details = await poll_while(emu, user, order_id, sink, ["paid", "done"], polls=3)
    assert [o.status for o in sink.observations] == ["new", "paid", "done"]
    assert {o.source for o in sink.observations} == {"polling"}
    assert details.status == "done" and details.order_id == order_id
    assert details.items[0].sku == "com.xsolla.item_1" and details.price is not None
    assert healths(sink) == [Health.CONNECTING, Health.HEALTHY, Health.STOPPED]

    # Never overlapping, and spaced by the interval (less the jitter) after each answer.
    times = (await emu.order(order_id))["get_order_requests"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) >= 5
    assert min(gaps) >= FAST.interval * (1 - FAST.jitter) - 0.01


@pytest.mark.anyio
async def test_a_canceled_order_is_final_too(emu: Emulator) -> None:
    user, order_id = await new_order(emu, "cancel")
    sink = RecordingSink()
    details = await poll_while(emu, user, order_id, sink, ["canceled"])
    assert details.status == "canceled"
    assert [o.status for o in sink.observations] == ["new", "canceled"]


@pytest.mark.anyio
async def test_429_retry_after_is_honoured(emu: Emulator) -> None:
    user, order_id = await new_order(emu, "rate")
    await emu.get_order_fault("rate_limit", retry_after=1, count=1, order_id=order_id)
    sink = RecordingSink()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(poll, emu, user, order_id, sink)
            await sink.wait_for(lambda s: bool(s.observations))
            await emu.set_status(order_id, "done")
    times = (await emu.order(order_id))["get_order_requests"]
    assert times[1] - times[0] >= 1.0  # not the 0.05 s interval
    (report,) = degraded(sink)
    assert isinstance(report.error, ServerError) and report.error.status == 429
    assert healths(sink) == [Health.CONNECTING, Health.DEGRADED, Health.HEALTHY, Health.STOPPED]


@pytest.mark.anyio
async def test_a_retry_after_past_give_up_after_gives_up_then_not_after_it(emu: Emulator) -> None:
    """``give_up_after`` is a promise to the caller: an answer (ServiceUnavailable) by
    then.  A 429 asking for an hour cannot be outwaited in one second; the poller used
    to sleep the hour.  Nor is Get order asked again before the hour is up."""
    user, order_id = await new_order(emu, "long-retry-after")
    await emu.get_order_fault("rate_limit", retry_after=3600, order_id=order_id)
    sink = RecordingSink()
    config = PollConfig(interval=0.05, give_up_after=1.0)
    with anyio.fail_after(10), pytest.raises(ServiceUnavailable, match="past give_up_after"):
        await poll(emu, user, order_id, sink, config)
    assert len((await emu.order(order_id))["get_order_requests"]) == 1
    assert healths(sink) == [Health.CONNECTING, Health.FAILED]


@pytest.mark.anyio
@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_back_off_degraded_and_keep_going(emu: Emulator, status: int) -> None:
    user, order_id = await new_order(emu, f"5xx-{status}")
    await emu.get_order_fault("error", status=status, count=3, order_id=order_id)
    sink = RecordingSink()
    config = PollConfig(interval=0.05, jitter=0.0, backoff_max=0.15)
    async with anyio.create_task_group() as tg:
        tg.start_soon(poll, emu, user, order_id, sink, config)
        await sink.wait_for(lambda s: any(o.status == "new" for o in s.observations))
        await emu.set_status(order_id, "done")
    assert healths(sink)[:3] == [Health.CONNECTING, Health.DEGRADED, Health.HEALTHY]
    error = degraded(sink)[0].error
    assert isinstance(error, ServerError) and error.status == status
    times = (await emu.order(order_id))["get_order_requests"]
    gaps = [b - a for a, b in itertools.pairwise(times[:4])]
    assert gaps[0] >= 0.05 - 0.01 and gaps[1] >= 0.1 - 0.01 and gaps[2] >= 0.15 - 0.01


@pytest.mark.anyio
async def test_a_slow_answer_times_out_degraded_then_recovers(emu: Emulator) -> None:
    user, order_id = await new_order(emu, "slow")
    # The slow answer takes 10 s; the timeout is generous enough that no other
    # answer, on a loaded machine, is taken for a slow one.
    await emu.get_order_fault("slow", delay=10.0, count=1, order_id=order_id)
    sink = RecordingSink()
    config = PollConfig(interval=0.05, request_timeout=1.0)
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(poll, emu, user, order_id, sink, config)
            await sink.wait_for(lambda s: bool(s.observations))
            await emu.set_status(order_id, "done")
    assert isinstance(degraded(sink)[0].error, RequestTimeout)
    assert healths(sink) == [Health.CONNECTING, Health.DEGRADED, Health.HEALTHY, Health.STOPPED]


@pytest.mark.anyio
async def test_a_revoked_token_is_refreshed_and_the_request_retried(emu: Emulator) -> None:
    user, order_id = await new_order(emu, "refresh")
    await emu.set_status(order_id, "done")
    await emu.revoke_token(user.token)
    fresh = await emu.issue_token(user)
    handed_out: list[str] = []

    async def provider() -> str:
        handed_out.append(user.token if not handed_out else fresh)
        return handed_out[-1]

    sink = RecordingSink()
    with anyio.fail_after(10):
        details = await poll(emu, user, order_id, sink, token=provider)
    assert details.status == "done"
    assert handed_out == [user.token, fresh]
    assert Health.DEGRADED not in healths(sink)  # a refresh is routine, not a problem


@pytest.mark.anyio
@pytest.mark.parametrize("status", [401, 403])
async def test_a_token_rejected_twice_fails_with_token_rejected(emu: Emulator, status: int) -> None:
    user, order_id = await new_order(emu, f"rejected-{status}")
    await emu.get_order_fault("error", status=status, count=2, order_id=order_id)
    calls: list[str] = []
    sink = RecordingSink()
    with anyio.fail_after(10), pytest.raises(TokenRejected):
        await poll(emu, user, order_id, sink, token=token_of(user, calls))
    assert len(calls) == 2  # the first token, then one refresh
    assert len((await emu.order(order_id))["get_order_requests"]) == 2
    assert healths(sink)[-1] is Health.FAILED
    assert isinstance(sink.reports[-1].error, TokenRejected)


@pytest.mark.anyio
async def test_a_token_provider_that_keeps_failing_fails_the_poller_with_its_error(
    emu: Emulator,
) -> None:
    user, order_id = await new_order(emu, "no-token")

    async def broken() -> str:
        raise ConnectionError("login server down")

    sink = RecordingSink()
    with anyio.fail_after(10), pytest.raises(TokenProviderFailed, match="login server down"):
        await poll(emu, user, order_id, sink, PollConfig(interval=0.05), token=broken)
    assert healths(sink) == [Health.CONNECTING, Health.DEGRADED, Health.FAILED]


@pytest.mark.anyio
async def test_a_token_handed_over_in_the_wrong_type_stays_out_of_errors_and_logs(
    emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A token callable that returns the player's token as bytes (or inside its auth
    service's JSON) is refused without the token in what it says: errors and health
    reports end up in logs and error trackers, where a live session token must not."""
    user, order_id = await new_order(emu, "bytes-token")

    async def as_bytes() -> str:
        return user.token.encode()  # type: ignore[return-value]  # the mistake under test

    caplog.set_level(logging.DEBUG)
    sink = RecordingSink()
    with anyio.fail_after(10), pytest.raises(TokenProviderFailed, match="bytes") as raised:
        await poll(emu, user, order_id, sink, PollConfig(interval=0.05), token=as_bytes)
    said = [str(raised.value), caplog.text]
    said += [f"{r.reason} {r.error}" for r in sink.reports]
    assert [text for text in said if user.token in text] == []


@pytest.mark.anyio
async def test_a_token_provider_that_fails_once_only_delays_the_poller(emu: Emulator) -> None:
    user, order_id = await new_order(emu, "blip")
    failures = [1]

    async def blinking() -> str:
        if failures[0]:
            failures[0] -= 1
            raise ConnectionError("login server down")
        return user.token

    await emu.run_script(order_id, [(0.2, "done")])
    sink = RecordingSink()
    with anyio.fail_after(10):
        details = await poll(emu, user, order_id, sink, PollConfig(interval=0.05), token=blinking)
    assert details.status == "done" and failures == [0]


@pytest.mark.anyio
async def test_404_is_polled_through_while_the_order_becomes_visible(emu: Emulator) -> None:
    user, order_id = await new_order(emu, "late")
    await emu.get_order_fault("error", status=404, count=3, order_id=order_id)
    await emu.run_script(order_id, [(0.3, "done")])
    sink = RecordingSink()
    with anyio.fail_after(10):
        details = await poll(
            emu, user, order_id, sink, PollConfig(interval=0.05, not_found_grace=5)
        )
    assert details.status == "done"
    assert Health.DEGRADED not in healths(sink)


@pytest.mark.anyio
async def test_404_past_the_grace_period_is_order_not_found(emu: Emulator) -> None:
    owner, order_id = await new_order(emu, "owner")
    stranger = await emu.create_user()  # someone else's order answers 404
    del owner
    sink = RecordingSink()
    start = anyio.current_time()
    with anyio.fail_after(10), pytest.raises(OrderNotFound) as caught:
        await poll(emu, stranger, order_id, sink, PollConfig(interval=0.05, not_found_grace=0.3))
    assert anyio.current_time() - start >= 0.3
    assert "Order not found" in str(caught.value)
    assert healths(sink)[-1] is Health.FAILED
    assert len((await emu.order(order_id))["get_order_requests"]) >= 2  # it asked again


@pytest.mark.anyio
async def test_unknown_statuses_do_not_stop_the_poller(
    emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    user, order_id = await new_order(emu, "weird")
    sink = RecordingSink()
    details: list[OrderDetails] = []

    async def run() -> None:
        details.append(await poll(emu, user, order_id, sink))

    with caplog.at_level(logging.WARNING, "orderfsm.polling"), anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await sink.wait_for(lambda s: bool(s.observations))
            await emu.set_status(order_id, "on_hold")
            while not any("on_hold" in r.getMessage() for r in caplog.records):  # noqa: ASYNC110
                await anyio.sleep(0.01)  # until the poller has met it and logged it
            await emu.set_status(order_id, "done")
    assert details[0].status == "done"
    assert [o.status for o in sink.observations] == ["new", "done"]


@pytest.mark.anyio
async def test_cancelling_the_poller_reports_stopped(emu: Emulator) -> None:
    user, order_id = await new_order(emu, "cancelled-poller")
    sink = RecordingSink()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(poll, emu, user, order_id, sink)
            await sink.wait_for(lambda s: Health.HEALTHY in healths(s))
            tg.cancel_scope.cancel()
    assert healths(sink) == [Health.CONNECTING, Health.HEALTHY, Health.STOPPED]
    assert sink.reports[-1].reason == "cancelled"


@pytest.mark.anyio
async def test_an_unreachable_api_is_degraded_and_can_give_up() -> None:
    sink = RecordingSink()

    async def token() -> str:
        return "t"

    config = PollConfig(interval=0.05, backoff_max=0.1, give_up_after=0.4)
    with anyio.fail_after(10), pytest.raises(ServiceUnavailable):
        await poll_order(
            1, project_id=1, token=token, sink=sink, api=await free_port_url(), config=config
        )
    assert healths(sink) == [Health.CONNECTING, Health.DEGRADED, Health.FAILED]
    assert isinstance(degraded(sink)[0].error, ConnectFailed)


@pytest.mark.anyio
async def test_a_broken_200_is_degraded_not_fatal() -> None:
    answers = [http_response(200, "<html>proxy page</html>")]
    answers.append(http_response(200, {"order_id": 5, "status": "done", "content": {}}))

    async def handler(request: Request) -> bytes:
        assert request.target == "/api/v2/project/9/order/5"
        return answers.pop(0)

    sink = RecordingSink()

    async def token() -> str:
        return "t"

    async with loopback_server(handler) as server:
        with anyio.fail_after(10):
            details = await poll_order(
                5, project_id=9, token=token, sink=sink, api=server.url + "/api", config=FAST
            )
    assert details.status == "done" and details.items == ()
    assert isinstance(degraded(sink)[0].error, InvalidOrderAnswer)
    assert server.requests[0].headers["authorization"] == "Bearer t"


# --- fetch_order --------------------------------------------------------------------


@pytest.mark.anyio
async def test_fetch_order_gets_the_details_once(emu: Emulator) -> None:
    user = await emu.create_user()
    order_id = await emu.create_order(
        user,
        items=[{"sku": "sword", "quantity": 2, "amount": "5"}],
        amount="10",
        currency="EUR",
        status="done",
    )
    details = await fetch_order(
        order_id,
        project_id=emu.project_id,
        token=token_of(user),
        api=emu.api_url,
    )
    assert details.status == "done"
    assert details.price is not None and (details.price.amount, details.price.currency) == (
        "10",
        "EUR",
    )
    (item,) = details.items
    assert (item.sku, item.quantity) == ("sword", 2)
    assert len((await emu.order(order_id))["get_order_requests"]) == 1


@pytest.mark.anyio
async def test_fetch_order_refreshes_a_rejected_token_once(emu: Emulator) -> None:
    user, order_id = await new_order(emu, "fetch-refresh")
    await emu.get_order_fault("error", status=401, count=1, order_id=order_id)
    calls: list[str] = []
    details = await fetch_order(
        order_id,
        project_id=emu.project_id,
        token=token_of(user, calls),
        api=emu.api_url,
    )
    assert details.status == "new" and len(calls) == 2

    await emu.get_order_fault("error", status=401, count=2, order_id=order_id)
    with pytest.raises(TokenRejected):
        await fetch_order(
            order_id,
            project_id=emu.project_id,
            token=token_of(user),
            api=emu.api_url,
        )


@pytest.mark.anyio
async def test_fetch_order_raises_typed_errors_at_once(emu: Emulator) -> None:
    user, order_id = await new_order(emu, "fetch-errors")
    token = token_of(user)
    with pytest.raises(OrderNotFound):
        await fetch_order(
            order_id + 10_000, project_id=emu.project_id, token=token, api=emu.api_url
        )
    await emu.get_order_fault("error", status=503, count=1, order_id=order_id)
    with pytest.raises(ServerError) as caught:
        await fetch_order(order_id, project_id=emu.project_id, token=token, api=emu.api_url)
    assert caught.value.status == 503
    await emu.get_order_fault("slow", delay=1.0, count=1, order_id=order_id)
    with pytest.raises(RequestTimeout):
        await fetch_order(
            order_id,
            project_id=emu.project_id,
            token=token,
            api=emu.api_url,
            timeout=0.2,
        )


def test_the_url_is_the_documented_one() -> None:
    assert (
        order_url("https://store.xsolla.com/api/", 12345, 656)
        == "https://store.xsolla.com/api/v2/project/12345/order/656"
    )
