"""Conformance checks for custom transports, shipped for users' tests too.

In the spirit of ``trio.testing.check_one_way_stream``: one call runs a
transport through everything the tracker relies on, and fails with an
``AssertionError`` that says which promise was broken::

    @pytest.mark.anyio
    async def test_my_transport_conforms() -> None:
        async with Emulator() as emu:
            await check_transport(my_transport, EmulatorWorld(emu))

The transport is driven through a :class:`World`: something that creates
orders and changes their statuses in whatever the transport reads.
:class:`EmulatorWorld` is one for transports that read the emulator.

The package: :mod:`.world` (what the checks drive), :mod:`.checks` (the
promises), :mod:`.harness` (runs a transport and records what it does),
:mod:`.resources` (what it left open).
"""

from __future__ import annotations

from orderfsm.conformance.checks import (
    check_delivers_changes,
    check_ignores_other_orders,
    check_stops_when_cancelled,
    check_survives_junk,
    check_transport,
)
from orderfsm.conformance.harness import Limits
from orderfsm.conformance.world import UNKNOWN_STATUS, EmulatorWorld, World

__all__ = [
    "UNKNOWN_STATUS",
    "EmulatorWorld",
    "Limits",
    "World",
    "check_delivers_changes",
    "check_ignores_other_orders",
    "check_stops_when_cancelled",
    "check_survives_junk",
    "check_transport",
]
