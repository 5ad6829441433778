"""The promises a custom transport must keep, one check each."""

from __future__ import annotations

import anyio

from orderfsm.conformance.harness import Limits, Session
from orderfsm.conformance.world import UNKNOWN_STATUS, World
from orderfsm.supervisor.custom import CustomTransport

DEFAULT_LIMITS = Limits()
"""What the single checks use when not given limits (those of ``check_transport``)."""


async def check_transport(
    transport: CustomTransport,
    world: World,
    *,
    timeout: float = 5.0,  # noqa: ASYNC109 (a per-step limit, not the whole call's)
    settle: float = 0.2,
    cancel_within: float = 1.0,
    max_block: float = 0.5,
) -> None:
    """Run every check; the first broken promise raises ``AssertionError``."""
    limits = Limits(timeout, settle, cancel_within, max_block)
    await check_delivers_changes(transport, world, limits)
    await check_ignores_other_orders(transport, world, limits)
    await check_survives_junk(transport, world, limits)
    await check_stops_when_cancelled(transport, world, limits)


async def check_delivers_changes(
    transport: CustomTransport, world: World, limits: Limits = DEFAULT_LIMITS
) -> None:
    """``paid`` then ``canceled`` are each delivered as well-formed observations."""
    check = "delivers status changes"

    async def body(session: Session) -> None:
        run = session.start(await world.new_order())
        await anyio.sleep(limits.settle)
        for status in ("paid", "canceled"):
            await session.change(world, run, status)
            await session.wait_for(run, status)

    await Session.run(check, transport, limits, body)


async def check_ignores_other_orders(
    transport: CustomTransport, world: World, limits: Limits = DEFAULT_LIMITS
) -> None:
    """Two instances at once each report only their own order; a third order is silent."""
    check = "reports only its own order"

    async def body(session: Session) -> None:
        first = session.start(await world.new_order())
        second = session.start(await world.new_order())
        bystander = await world.new_order()
        await anyio.sleep(limits.settle)
        await world.set_status(bystander.order_id, "paid")
        await world.set_status(bystander.order_id, "canceled")
        await session.change(world, first, "paid")
        await session.change(world, second, "canceled")
        await session.wait_for(first, "paid")
        await session.wait_for(second, "canceled")
        await anyio.sleep(limits.settle)  # room for stragglers to show up

    await Session.run(check, transport, limits, body)


async def check_survives_junk(
    transport: CustomTransport, world: World, limits: Limits = DEFAULT_LIMITS
) -> None:
    """An unknown status and malformed data neither stop nor break the transport."""
    check = "survives junk"

    async def body(session: Session) -> None:
        run = session.start(await world.new_order())
        await anyio.sleep(limits.settle)
        await world.set_status(run.order_id, UNKNOWN_STATUS)
        await world.disturb(run.order_id)
        await anyio.sleep(limits.settle)
        await session.change(world, run, "paid")
        await session.wait_for(run, "paid")

    await Session.run(check, transport, limits, body)


async def check_stops_when_cancelled(
    transport: CustomTransport, world: World, limits: Limits = DEFAULT_LIMITS
) -> None:
    """Cancelled mid-flight, it returns within ``cancel_within`` and leaves no task behind."""

    async def body(session: Session) -> None:
        session.start(await world.new_order())
        await anyio.sleep(limits.settle)

    await Session.run("stops when cancelled", transport, limits, body)
