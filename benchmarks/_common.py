"""What the WebSocket benchmarks share: emulator set-up, schedules, figures, output.

Every benchmark drives an emulator in its own process (``EmulatorProcess``),
so the emulator's work and pauses never share a GIL with the client being
measured, and reads publish times from the emulator's own records
(``published_at``, wall clock) to compare with the wall clock at which the
application received each status.
"""

from __future__ import annotations

import inspect
import json
import math
import platform
import sys
import time
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Hashable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import attrs

from orderfsm.interface import Health, HealthReport
from orderfsm.supervisor.records import Change
from orderfsm.supervisor.tracker import Tracker
from transports.emulator import EmulatorClient, Publication, User

Floors = Mapping[str, tuple[str, float]]
Key = tuple[int, str]
"""(order id, status): one publication, as both clients see it."""

SCHEDULE_MARGIN = 0.5
"""Seconds between sending the last script and the first scheduled publication."""
SCRIPT_SEND_S = 0.0015
"""A generous time to send one script (measured: about 0.8 ms)."""
SCHEDULE_CONCURRENCY = 4
CONNECT_TIMEOUT = 120.0
"""How long connecting and catching up every client may take."""


@attrs.frozen
class Orders:
    """Orders created for one run, grouped by their owner."""

    users: tuple[User, ...]
    by_user: Mapping[str, tuple[int, ...]]

    @property
    def ids(self) -> list[int]:
        """Order ids interleaved across users (user 0's first, user 1's first, ...)."""
        columns = [self.by_user[u.external_id] for u in self.users]
        depth = max((len(c) for c in columns), default=0)
        return [c[i] for i in range(depth) for c in columns if i < len(c)]

    def owner(self) -> dict[int, User]:
        return {oid: u for u in self.users for oid in self.by_user[u.external_id]}


async def gather(
    call: Callable[..., Coroutine[Any, Any, Any]], arguments: Iterable[tuple[Any, ...]]
) -> None:
    """``call(*args)`` for each, concurrently (the client's thread limiter bounds them)."""
    async with anyio.create_task_group() as tg:
        for args in arguments:
            tg.start_soon(call, *args)


async def create_orders(
    emu: EmulatorClient, prefix: str, users: int, per_user: int, *, publish: bool = True
) -> Orders:
    """``users`` fresh users with ``per_user`` orders each, status ``new``."""
    made: list[User] = []

    async def user(i: int) -> None:
        made.append(await emu.create_user(f"{prefix}-{i}"))

    await gather(user, ((i,) for i in range(users)))
    made.sort(key=lambda u: u.external_id)
    by_user: dict[str, list[int]] = {u.external_id: [] for u in made}

    async def order(u: User) -> None:
        by_user[u.external_id].append(await emu.create_order(u, publish=publish))

    await gather(order, ((u,) for u in made for _ in range(per_user)))
    return Orders(tuple(made), {k: tuple(sorted(v)) for k, v in by_user.items()})


def even_schedule(
    order_ids: Sequence[int], statuses: Sequence[str], rate: float, start: float
) -> dict[int, list[tuple[float, str]]]:
    """Publication times (wall clock) spreading every status of every order evenly.

    Slot ``k`` is at ``start + k / rate``; the first status of every order
    comes first, in ``order_ids`` order, then the second, and so on, so each
    order advances once per round and rounds follow each other.
    """
    plan: dict[int, list[tuple[float, str]]] = {oid: [] for oid in order_ids}
    slot = 0
    for status in statuses:
        for oid in order_ids:
            plan[oid].append((start + slot / rate, status))
            slot += 1
    return plan


async def run_schedule(
    emu: EmulatorClient,
    plan: Mapping[int, Sequence[tuple[float, str]]],
    concurrency: int = SCHEDULE_CONCURRENCY,
) -> float:
    """Hand each order's timed statuses to the emulator as a script.

    Script delays are relative, so the first one is computed just before its
    request leaves; the slack between that and the emulator starting the
    script is one control request's latency (about a millisecond on loopback:
    few requests are in flight at once, so none waits long in a queue).
    Returns how many seconds after the first publication was due the last
    script went out (0 when all were sent in time, as they should be).
    """
    limiter = anyio.CapacityLimiter(concurrency)

    async def send(oid: int, steps: Sequence[tuple[float, str]]) -> None:
        async with limiter:
            previous = time.time()
            script = []
            for at, status in steps:
                script.append((max(at - previous, 0.0), status))
                previous = max(at, previous)
            await emu.run_script(oid, script)

    await gather(send, plan.items())
    first_due = min(at for steps in plan.values() for at, _ in steps[:1])
    return max(time.time() - first_due, 0.0)


def publish_start(orders: int) -> float:
    """When to schedule the first publication: after every script has been sent."""
    return time.time() + SCHEDULE_MARGIN + orders * SCRIPT_SEND_S


async def publications_of(emu: EmulatorClient, order_ids: Iterable[int]) -> dict[Key, Publication]:
    wanted = set(order_ids)
    found: dict[Key, Publication] = {}
    for pub in await emu.publications():
        data = pub.data
        if isinstance(data, dict) and data.get("order_id") in wanted:
            found.setdefault((data["order_id"], data["status"]), pub)
    return found


def latencies_ms(
    pubs: Mapping[Key, Publication], received: Mapping[Key, float], keys: Iterable[Key]
) -> tuple[list[float], int]:
    """Publish -> receive for each key, and how many never arrived."""
    values, lost = [], 0
    for key in keys:
        at = received.get(key)
        if at is None:
            lost += 1
        else:
            values.append((at - pubs[key].published_at) * 1000.0)
    return values, lost


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def publish_rate(pubs: Iterable[Publication]) -> float:
    """Publications per second actually achieved by the emulator."""
    times = sorted(p.published_at for p in pubs)
    if len(times) < 2 or times[-1] <= times[0]:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0])


class Countdown:
    """Set once ``expected`` distinct keys were hit; hits after that are kept too."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.keys: set[Hashable] = set()
        self.done = anyio.Event()
        if expected <= 0:
            self.done.set()

    def hit(self, key: Hashable) -> None:
        self.keys.add(key)
        if len(self.keys) >= self.expected:
            self.done.set()

    async def wait(self, seconds: float, what: str = "keys") -> None:
        with anyio.move_on_after(seconds):
            await self.done.wait()
        if not self.done.is_set():
            missing = self.expected - len(self.keys)
            raise TimeoutError(
                f"{missing} of {self.expected} {what} still missing after {seconds} s"
            )


class HealthBoard:
    """The tracker's ``on_report``: counts orders whose WebSocket is healthy."""

    def __init__(self, order_ids: Iterable[int]) -> None:
        self.healthy = Countdown(len(set(order_ids)))

    def __call__(self, order_id: int, report: HealthReport) -> None:
        if report.source == "websocket" and report.health is Health.HEALTHY:
            self.healthy.hit(order_id)

    async def wait(self, seconds: float = 60.0) -> None:
        """Until every order's connection has been healthy (connected and caught up)."""
        await self.healthy.wait(seconds, "orders connected and caught up")


@asynccontextmanager
async def following(
    emu: EmulatorClient,
    project_id: int,
    owner: Mapping[int, User],
    on_change: Callable[[Change], None],
    *,
    via_watch: bool,
) -> AsyncIterator[Tracker]:
    """Our tracker following every order of ``owner`` over WebSocket, news to ``on_change``.

    Either the tracker calls ``on_change`` itself, or (``via_watch``) one task
    per order iterates ``tracker.watch`` and calls it, as an application
    waiting on each order would.  Entered once every order's connection is
    healthy (connected and caught up) and its one-shot Get order answered;
    ``fetch_details=False``, as the other client fetches nothing.
    """
    board = HealthBoard(owner)
    async with Tracker(
        project_id=project_id,
        ws_url=emu.ws_url,
        api_url=emu.api_url,
        fetch_details=False,
        on_change=None if via_watch else on_change,
        on_report=board,
    ) as tracker:

        async def watch(order_id: int, user: User) -> None:
            async for change in tracker.watch(order_id, token=user.token, user_id=user.external_id):
                on_change(change)

        async with anyio.create_task_group() as tg:
            for order_id, user in owner.items():
                if via_watch:
                    tg.start_soon(watch, order_id, user)
                else:
                    tracker.track(order_id, token=user.token, user_id=user.external_id)
            await board.wait(CONNECT_TIMEOUT)
            await _checked(tracker, len(owner))
            yield tracker
            tg.cancel_scope.cancel()


async def _checked(tracker: Tracker, orders: int) -> None:
    """Until every order's one-shot Get order check has its answer: a start-up cost
    (one request per order, a few at a time), not part of any change's cost."""
    with anyio.fail_after(CONNECT_TIMEOUT):
        while sum(tracker.stats().get_order.values()) < orders:  # noqa: ASYNC110 (a count)
            await anyio.sleep(0.05)


class CentrifugeFleet:
    """The official client the naive way: one ``centrifuge.Client`` per user.

    Connects with Xsolla's connect data (the channel is a server-side
    subscription) and calls plain functions on its events; entering waits
    until every client is subscribed, leaving disconnects them all.
    """

    def __init__(
        self,
        emu: EmulatorClient,
        project_id: int,
        users: Sequence[User],
        *,
        on_publication: Callable[[dict[str, Any]], None] | None = None,
        on_connecting: Callable[[str, int], None] | None = None,
        **client_options: Any,
    ) -> None:
        from centrifuge import Client, ClientEventHandler  # type: ignore[import-untyped]

        subscribed = self.subscribed = Countdown(len(users))

        class Handler(ClientEventHandler):  # type: ignore[misc]
            def __init__(self, user: str) -> None:
                self.user = user

            async def on_subscribed(self, ctx: Any) -> None:
                subscribed.hit(self.user)

            async def on_publication(self, ctx: Any) -> None:
                if on_publication is not None:
                    on_publication(ctx.pub.data)

            async def on_connecting(self, ctx: Any) -> None:
                if on_connecting is not None:
                    on_connecting(self.user, ctx.code)

        self.clients = [
            Client(
                emu.ws_url,
                events=Handler(u.external_id),
                data={"auth": u.token, "project_id": project_id},
                proxy=None,
                **client_options,
            )
            for u in users
        ]

    async def __aenter__(self) -> CentrifugeFleet:
        try:
            for client in self.clients:
                await client.connect()
            await self.subscribed.wait(CONNECT_TIMEOUT, "centrifuge-python clients subscribed")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self.clients:
            await client.disconnect()


class FrameClock:
    """When each WebSocket frame reached the client library, for the in-process split.

    Wraps what hands a client the frame's text (``cls.name``: the other
    client's receive coroutine; for ours, the static method that reads the
    message aiohttp's own receive returned) so the time is taken as the frame
    is handed over, the same way for ours and for the other client; the frames
    are kept and parsed only after the run, so the split is not charged for it.
    Enter it before the sockets open: ours looks the method up once per socket.
    """

    def __init__(self) -> None:
        self.frames: list[tuple[float, Any]] = []

    @contextmanager
    def watching(self, cls: type, name: str) -> Iterator[None]:
        original = inspect.getattr_static(cls, name)
        frames = self.frames
        clock = time.perf_counter
        replacement: Any
        if isinstance(original, staticmethod):
            read = original.__func__

            def timed_read(*args: Any) -> Any:
                data = read(*args)
                frames.append((clock(), data))
                return data

            replacement = staticmethod(timed_read)
        else:

            async def timed(receiver: Any, *args: Any, **kwargs: Any) -> Any:
                data = await original(receiver, *args, **kwargs)
                frames.append((clock(), data))
                return data

            replacement = timed
        setattr(cls, name, replacement)
        try:
            yield
        finally:
            setattr(cls, name, original)

    def read_at(self) -> dict[Key, float]:
        """The first time each (order id, status) publication arrived in a frame."""
        first: dict[Key, float] = {}
        for at, data in self.frames:
            text = data.decode() if isinstance(data, bytes) else str(data)
            for line in text.split("\n"):
                try:
                    pub = json.loads(line)["push"]["pub"]["data"]
                    key = (pub["order_id"], pub["status"])
                except (ValueError, KeyError, TypeError):
                    continue
                first.setdefault(key, at)
        return first


def ms(value: float) -> float:
    return round(value, 3)


def floors_met(result: Mapping[str, Any], floors: Floors) -> dict[str, bool]:
    return {
        key: bool(result[key] >= bound if op == ">=" else result[key] <= bound)
        for key, (op, bound) in floors.items()
    }


HONEST = ("lost", "duplicated", "wrong")
"""Counts that must be 0 at any size: a ``--quick`` run fails on them too."""
PEERS = ("centrifuge_python_", "transitions_", "statemachine_")
"""Prefixes of the alternatives' figures: reported, but theirs to answer for."""


def honest_failures(result: Mapping[str, Any]) -> dict[str, Any]:
    """Every count of ours (``lost``, ``watch_lost``, ``duplicated``, ...) that is not 0."""
    return {
        key: value
        for key, value in result.items()
        if any(key == h or key.endswith("_" + h) for h in HONEST)
        and not key.startswith(PEERS)
        and value != 0
    }


def emit(result: dict[str, Any], floors: Floors, quick: bool) -> int:
    """Print the one JSON line and return the exit code.

    Any run fails when something was lost, duplicated or wrong (what a small
    run measures honestly); a full run also fails on a missed floor (speed,
    which a ``--quick`` run is too small to judge).
    """
    result["python"] = platform.python_version()
    result["floors"] = {k: f"{op} {bound}" for k, (op, bound) in floors.items()}
    result["floors_met"] = floors_met(result, floors)
    result["honest_failures"] = honest_failures(result)
    print(json.dumps(result), flush=True)
    if result["honest_failures"]:
        return 1
    return 0 if quick or all(result["floors_met"].values()) else 1


def run(main: Callable[[list[str] | None], Any]) -> None:
    sys.exit(main(None))
