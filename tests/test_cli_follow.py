"""How ``watch``/``demo`` end the orders they follow when the command ends early.

``--json`` promises a program one last line per order; the "Ctrl-C or SIGTERM"
one is for a signal only.  These run :func:`follow` as the demo does, inside
the CLI's :func:`unless_interrupted`, on a real tracker and emulator."""

from __future__ import annotations

import io
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import pytest
from support_tracker import emulator_tracker

from orderfsm.cli.failures import CommandError, describe
from orderfsm.cli.follow import Misconfiguration, follow
from orderfsm.cli.interrupts import unless_interrupted
from orderfsm.cli.timeline import Timeline
from transports.emulator import Emulator

pytestmark = pytest.mark.anyio


async def follow_one(
    around: Callable[[Callable[[], Awaitable[int]]], Awaitable[int]],
    alongside: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> tuple[BaseException, list[dict[str, Any]]]:
    """Follow a new order that never settles, through ``around``; what ended it, and
    the JSON lines printed."""
    out = io.StringIO()
    async with Emulator(seed=7) as emu:
        user = await emu.create_user()
        order_id = await emu.create_order(user)
        async with emulator_tracker(emu, user) as tracker:
            view = Timeline(as_json=True, orders=[order_id], out=out)

            async def work() -> int:
                misconfigured = Misconfiguration(view)
                if alongside is None:
                    return await follow(tracker, [order_id], view, misconfigured)
                return await follow(tracker, [order_id], view, misconfigured, alongside)

            with pytest.raises(Exception) as ended:
                await unless_interrupted(lambda: around(work))
    return ended.value, [json.loads(line) for line in out.getvalue().splitlines()]


async def stalled_story() -> None:
    await anyio.sleep(0.3)
    raise CommandError("the story stalled")


async def as_is(work: Callable[[], Awaitable[int]]) -> int:
    return await work()


async def test_a_failing_story_ends_the_order_naming_its_error_not_a_signal() -> None:
    """The demo's story fails (its ``fail_after``): the order's last line names that
    error; it used to say "stopped (Ctrl-C or SIGTERM)", which no one did."""
    ended, lines = await follow_one(as_is, alongside=stalled_story)
    assert describe(ended) == ("the story stalled",)  # what the command prints on stderr
    assert [x for x in lines if "final" in x] == [
        {
            "order_id": lines[-1]["order_id"],
            "final": False,
            "error": "CommandFailed",
            "message": "the command ended before the order settled: the story stalled",
        }
    ]


async def test_a_failure_beside_follow_ends_the_order_without_naming_a_signal() -> None:
    """Cancelled by a failure around it (a server of ``watch`` beside the orders),
    ``follow`` cannot name the error, which the command prints on stderr; the order
    still gets its last line, without "Ctrl-C or SIGTERM"."""

    async def beside_a_failure(work: Callable[[], Awaitable[int]]) -> int:
        async with anyio.create_task_group() as tg:
            tg.start_soon(stalled_story)
            return await work()
        raise AssertionError("unreachable")  # the story fails before the order settles

    ended, lines = await follow_one(beside_a_failure)
    assert describe(ended) == ("the story stalled",)
    finals = [x for x in lines if "final" in x]
    assert [(x["final"], x["error"]) for x in finals] == [(False, "CommandFailed")]
    assert finals[0]["message"] == "the command ended on an error before the order settled"
