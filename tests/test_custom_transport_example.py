"""The README's custom transport, run as written: conformance and a real tracker."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import anyio
import pytest

from orderfsm import Observation, OrderFsmError, Status
from orderfsm.conformance import EmulatorWorld, check_transport
from orderfsm.errors import TokenRejected
from orderfsm.interface import ObservationSink
from orderfsm.supervisor.custom import OrderContext
from orderfsm.supervisor.tracker import Tracker
from transports.emulator import Emulator
from transports.http import HttpError, open_http_client

# --- the example, as in the README ---------------------------------------------------


async def get_order_poller(order: OrderContext, sink: ObservationSink) -> None:
    """Ask Get order every 0.2 s and report each status once."""
    url = f"{order.api_url}/v2/project/{order.project_id}/order/{order.order_id}"
    last = None
    async with contextlib.AsyncExitStack() as stack:
        http = order.http
        if http is None:  # running outside a tracker: bring a client
            http = await stack.enter_async_context(open_http_client())
        while True:
            headers = {"Authorization": f"Bearer {await order.user.token()}"}
            try:
                answer = await http.request("GET", url, headers=headers, timeout=5)
            except HttpError:
                answer = None  # no answer this time: ask again next round
            if answer is not None and answer.status == 401:
                raise TokenRejected("Get order refused the token")  # ends this transport
            if answer is not None and answer.status == 200:
                try:
                    status = json.loads(answer.body)["status"]
                    seen = Observation(order.order_id, status, "my-poller", anyio.current_time())
                except (ValueError, KeyError, TypeError, OrderFsmError):
                    seen = None  # junk, or a status outside the graph: skip it
                if seen is not None and status != last:
                    last = status
                    sink.observe(seen)
            await anyio.sleep(0.2)


# --- the tests -------------------------------------------------------------------------

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(ping_interval=0, seed=31) as emulator:
        yield emulator


async def test_the_example_passes_the_conformance_suite(emu: Emulator) -> None:
    await check_transport(get_order_poller, EmulatorWorld(emu))


async def test_the_example_follows_an_order_in_the_tracker(emu: Emulator) -> None:
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    async with Tracker(
        project_id=emu.project_id,
        token=user.token,
        api_url=emu.api_url,
        transports=(),
        extra=[get_order_poller],
        fetch_details=False,
    ) as tracker:
        await emu.run_script(order_id, [(0.3, "paid"), (0.5, "done")])
        with anyio.fail_after(10):
            result = await tracker.wait(order_id)
    assert result.status is Status.DONE and result.source == "my-poller"
    assert [c.status for c in result.changes] == [Status.NEW, Status.PAID, Status.DONE]


async def test_the_example_gives_up_on_a_revoked_token(emu: Emulator) -> None:
    world = EmulatorWorld(emu)
    order = await world.new_order()
    await emu.revoke_token(await order.user.token())
    with anyio.fail_after(5), pytest.raises(TokenRejected):
        await get_order_poller(order, _NullSink())


class _NullSink:
    def observe(self, observation: Observation, /) -> None:
        raise AssertionError(f"nothing should be observed, got {observation}")

    def report(self, report: object, /) -> None:
        pass
