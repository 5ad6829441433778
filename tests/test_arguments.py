"""Wrong arguments are refused where they are handed over, by name, and lose nothing.

Each of these was accepted once and failed far from its cause: an order id given as
a string followed until the deadline and never matched; a plain ``def`` as
``on_settled`` granted again and again (awaiting its ``None`` failed after the
grant, so the call was retried); an ``async def`` as a callback that is called
never ran, silently; a poll interval of 0 killed the tracker, every waiter with it,
at the first dropped socket; a webhook secret with a newline answered every
delivery 400 (a refund, with automatic refunds on).
"""

from __future__ import annotations

import asyncio
import math
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from orderfsm import blocking
from orderfsm.core import Status
from orderfsm.supervisor.fleet import Settled
from orderfsm.supervisor.policy import DefaultPolicy
from orderfsm.supervisor.tracker import Tracker
from orderfsm.testing import eventually
from transports.emulator import Emulator
from transports.webhook import WebhookReceiver

FAST = DefaultPolicy(poll_interval=0.05, deadline=30.0)


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(seed=71, ping_interval=2.0) as emulator:
        yield emulator


def tracker(emu: Emulator, **options: Any) -> Tracker:
    urls = {"ws_url": emu.ws_url, "api_url": emu.api_url}
    return Tracker(project_id=emu.project_id, policy=FAST, **{**urls, **options})


@pytest.mark.anyio
async def test_an_order_id_that_is_not_one_is_refused_and_the_order_is_still_followed(
    emu: Emulator,
) -> None:
    """A string, a bool, 0 or an id past 64 bits raise at ``track``; a ``user`` of the
    wrong type raises before anything is kept, so the same order tracked right
    afterwards is followed to ``done`` (it used to stay "already tracked")."""
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    async with tracker(emu, token=user.token, user_id=user.external_id) as t:
        wrong_ids = [(str(order_id), TypeError), (True, TypeError), (float(order_id), TypeError)]
        wrong_ids += [(0, ValueError), (-1, ValueError), (2**70, ValueError)]
        for wrong, error in wrong_ids:
            with pytest.raises(error, match="order id"):
                t.track(wrong)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="user must be a User"):
            t.track(order_id, user="p1")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="token must not be empty"):
            t.track(order_id, token=" ")
        await emu.run_script(order_id, [(0.05, "paid"), (0.05, "done")])
        with anyio.fail_after(20):
            result = await t.wait(order_id)
    assert result.status is Status.DONE


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"lease": 0}, ValueError, "lease"),
        ({"lease": math.nan}, ValueError, "lease"),
        ({"lease": "15"}, TypeError, "lease"),
        ({"token": 123}, TypeError, "token must be a str"),
        ({"token": ""}, ValueError, "token must not be empty"),
        ({"token_for": lambda order_id, user: "jwt"}, ValueError, "token_for needs journal=URL"),
        ({"instance": "shop-1"}, ValueError, "^instance needs journal=URL"),
        ({"instance": "shop-1", "journal_poll": 1}, ValueError, "instance and journal_poll need"),
        ({"on_settled": lambda result: None}, ValueError, "^on_settled needs journal=URL"),
        ({"on_settled_transactional": lambda r, c: None}, ValueError, "^on_settled_trans"),
        ({"transports": ("journal",)}, ValueError, "^the journal transport needs journal="),
        ({"journal_poll": 0}, ValueError, "journal_poll"),
        ({"ws_url": "not a url"}, ValueError, "ws_url must be a URL"),
        ({"api_url": "ftp://xsolla.example"}, ValueError, "api_url must be a URL"),
        ({"api_url": "store.xsolla.com/api"}, ValueError, "api_url must be a URL"),
        ({"journal": 123}, TypeError, "journal must be a URL"),
        ({"journal": ""}, ValueError, "journal must not be empty"),
    ],
)
def test_the_tracker_refuses_settings_that_would_fail_later(
    emu: Emulator, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        tracker(emu, **options)


@pytest.mark.anyio
async def test_a_tracker_open_already_is_not_entered_again(emu: Emulator) -> None:
    """Entered twice, the first opening's sockets leaked and the outer exit failed on an
    assertion; now the second entry raises, and the open tracker is left as it was."""
    async with tracker(emu, token="jwt") as t:
        with pytest.raises(RuntimeError, match="open already"):
            await t.__aenter__()
        assert t.stats() is not None  # still open, still answering


async def _async_callback(*_: Any) -> None:
    """The wrong kind where a callback is called, not awaited."""


@pytest.mark.parametrize("name", ["on_change", "on_report", "token_for"])
def test_an_async_def_where_a_callback_is_called_is_refused(
    emu: Emulator, tmp_path: Path, name: str
) -> None:
    with pytest.raises(TypeError, match=f"{name} must be a plain function"):
        tracker(emu, journal=str(tmp_path / "j.sqlite3"), **{name: _async_callback})


def test_an_async_def_as_the_transactional_on_settled_is_refused(
    emu: Emulator, tmp_path: Path
) -> None:
    """Its call was recorded as made (the coroutine never awaited), and never made."""
    journal = str(tmp_path / "j.sqlite3")
    with pytest.raises(TypeError, match="on_settled_transactional must be a plain function"):
        tracker(emu, journal=journal, on_settled_transactional=_async_callback)


@pytest.mark.anyio
async def test_a_plain_def_as_on_settled_is_called_once(emu: Emulator, tmp_path: Path) -> None:
    """A plain function's body ran, then awaiting its ``None`` failed: the call counted
    as failed and was made again every few seconds (a grant each time)."""
    user = await emu.create_user()
    order_id = await emu.create_order(user)
    calls: list[Settled] = []
    options: dict[str, Any] = {"token": user.token, "user_id": user.external_id}
    async with tracker(emu, journal=str(tmp_path / "j.sqlite3"), on_settled=calls.append,
                       **options) as t:  # fmt: skip
        t.track(order_id)
        await emu.run_script(order_id, [(0.05, "paid"), (0.05, "done")])
        await eventually(lambda: calls, timeout=20)
        await anyio.sleep(1.0)  # a retry's first wait is 0.1 s: one would have come
    assert [(e.order_id, e.status) for e in calls] == [(order_id, Status.DONE)]


@pytest.mark.parametrize(
    "field", ["poll_interval", "safety_poll_interval", "expired_poll_interval", "deadline"]
)
@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, "3"])
def test_a_policy_refuses_durations_that_are_not_any(field: str, value: object) -> None:
    with pytest.raises((TypeError, ValueError), match=field):
        DefaultPolicy(**{field: value})  # type: ignore[arg-type]


def test_a_policy_takes_zero_where_zero_means_something() -> None:
    policy = DefaultPolicy(websocket_lifespan=0, connect_grace=0, expired_grace=0, deadline=None)
    assert policy.websocket_lifespan == policy.connect_grace == policy.expired_grace == 0


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"on_change": _async_callback}, TypeError, "on_change must be a plain function"),
        ({"queue": []}, TypeError, "queue must be a queue.Queue"),
        ({"queue": asyncio.Queue()}, TypeError, "not thread-safe"),
    ],
)
def test_the_blocking_tracker_refuses_callbacks_and_queues_that_never_deliver(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        blocking.Tracker(project_id=1, token="jwt", **options)


def test_the_blocking_tracker_takes_a_queue_queue() -> None:
    with blocking.Tracker(project_id=1, token="jwt", queue=queue.Queue(), transports=()) as t:
        assert t.queue is not None


@pytest.mark.parametrize(
    ("secret", "options", "match"),
    [
        (" secret\n", {}, "whitespace around it"),
        ("   ", {}, "must not be empty"),
        (123, {}, "str or bytes"),
        ("secret", {"max_body_size": 0}, "max_body_size"),
        ("secret", {"sink": 42}, "sink must have observe"),
    ],
)
def test_a_receiver_refuses_settings_that_would_answer_every_delivery_4xx(
    secret: Any, options: dict[str, Any], match: str
) -> None:
    with pytest.raises((TypeError, ValueError), match=match):
        WebhookReceiver(secret, **options)


def test_what_stands_for_a_number_is_taken() -> None:
    """An ``IntEnum`` or numpy integer stands for an order id (``operator.index``), and any
    real number for seconds (numpy's floats too): refused only what is not a number."""
    from enum import IntEnum
    from fractions import Fraction

    from orderfsm.supervisor import arguments

    class Known(IntEnum):
        TEST_ORDER = 59614241

    assert arguments.order_id(Known.TEST_ORDER) == 59614241
    assert type(arguments.order_id(Known.TEST_ORDER)) is int
    assert DefaultPolicy(poll_interval=Fraction(1, 2)).poll_interval == Fraction(1, 2)  # type: ignore[arg-type]
