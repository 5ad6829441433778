"""One soak schedule, drawn from one seed: who, which orders, what goes wrong and when.

Pure: a ``random.Random(seed)`` decides everything, so a failing seed names the
whole plan (users, each order's true path, every fault and its time) and
``soak.py --seed N`` replays it.  Only the timing of the real sockets and
threads differs between runs.

Times are seconds from the schedule's start.  The plan is made so that every
final status *can* reach the application: faults end, tokens stay valid,
and a final status hidden from one transport is always visible to another
(Get order always answers the truth once its fault period is over).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import attrs

from orderfsm.core import Status, verdict

PATHS: tuple[tuple[str, ...], ...] = (
    ("new", "paid", "done"),
    ("new", "paid", "canceled"),
    ("new", "expired"),
    ("new", "expired", "paid", "done"),
    ("new", "paid", "done", "canceled"),
    ("new", "expired", "paid", "canceled"),
)
"""Xsolla's life cycles (xsolla.md §1): delivered, refunded before delivery, expired
for good, expired then paid after all, refunded after delivery."""

WEBHOOK_FOR = {"paid": "order_paid", "canceled": "order_canceled"}
"""Statuses Xsolla sends a webhook for (and the notification type)."""

RECONNECT_CODES = (3000, 3001, 3004, 3005, 3011, 3012, 3013, 3014, 3499, 4000, 4250, 4499)
"""Close codes after which a Centrifuge client reconnects (3005: with a fresh token,
3014: the server says the stream state is gone).  The emulator sends 3000-4999;
transport-level loss (1006) is the ``drop`` fault."""
TERMINAL_CODES = (3500, 3501, 3502, 3503, 3999, 4500, 4999)
"""Close codes after which it gives up for good: polling must carry the orders."""

HORIZON = 1.0
"""Statuses and faults happen within this many seconds of the start."""

FAULT_KINDS = (
    "suspend",
    "close",
    "drop",
    "stall",
    "pings_off",
    "duplicate",
    "reorder",
    "new_epoch",
    "get_order_error",
    "get_order_rate_limit",
    "get_order_slow",
    "webhook_copies",
    "webhook_bad_signature",
    "junk_publication",
)
"""Drawn at random; ``flush`` (junk publications that release held ones) ends
WebSocket-strict schedules."""

GOALS = ("done", "done", "done", "paid")
"""What the tracker waits for (``until``): mostly delivery, as a client does; some
schedules are a server granting on payment."""
EXPIRED_GRACE = 1.6
"""Longer than every status step takes (``HORIZON``): a payment after expiry
always comes inside the grace, so an order settles ``expired`` only when that
is how it ends."""
STRICT_SHARE = 0.35
"""The share of WebSocket-strict schedules (see :func:`make_schedule`)."""
FLUSH = 4
"""Junk publications per user that end a strict schedule: more than a reorder holds."""

JUNK: tuple[object, ...] = (
    {"order_id": "ORDER", "status": "refunded"},
    {"order_id": "ORDER"},
    {"order_id": "ORDER", "status": 7},
    {"status": "done"},
    {"order_id": -5, "status": "done"},
    {"order_id": None, "status": "canceled"},
    "not an object",
    [1, 2, 3],
    42,
)
"""Publications a client must skip (``"ORDER"`` stands for the order's id): an
unknown status, missing or mistyped fields, bodies that are not objects."""


@attrs.frozen
class OrderPlan:
    user: int
    """Index into the schedule's users."""
    path: tuple[str, ...]
    """The true statuses, in order; the last one is final."""
    publish_new: bool
    """Whether creating the order publishes ``new`` on the WebSocket."""
    track_at: float
    """When the application starts tracking it (and starts ``watch`` and ``wait``)."""
    late_watch_at: float
    """When a second ``watch`` starts, to check the replay of what happened before it."""


@attrs.frozen
class Step:
    """The emulator moves an order to its next true status."""

    at: float
    order: int
    status: str
    publish: bool
    """Pushed on the user's WebSocket channel (and kept in its history)."""
    webhook: bool
    """Notified by webhook (only ``paid`` and ``canceled`` have one)."""


@attrs.frozen
class Fault:
    """One injected fault; which fields matter depends on ``kind``."""

    at: float
    kind: str
    user: int | None = None
    order: int | None = None
    code: int | None = None
    """Close code (``close``) or HTTP status (``get_order_error``)."""
    seconds: float | None = None
    """How long it lasts (suspend, stall, pings off, Get order faults)."""
    count: int | None = None
    """How many publications are duplicated / reordered, webhook copies; the
    index into :data:`JUNK` of a junk publication."""
    delay: float | None = None
    """Answer delay of a slow Get order."""
    notification: str | None = None
    """Webhook notification type (webhook faults)."""


@attrs.frozen
class Timings:
    """The tracker's knobs for this schedule (fast, so a schedule lasts about a second)."""

    deadline: float
    websocket_lifespan: float | None
    safety_poll_interval: float | None
    """``None`` in a WebSocket-strict schedule."""
    until: str = "done"
    poll_interval: float = 0.05
    connect_grace: float = 0.3
    expired_grace: float = EXPIRED_GRACE
    expired_poll_interval: float = 0.1


@attrs.frozen
class Schedule:
    seed: int
    users: int
    orders: tuple[OrderPlan, ...]
    steps: tuple[Step, ...]
    faults: tuple[Fault, ...]
    timings: Timings

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def make_schedule(seed: int) -> Schedule:
    """The schedule for ``seed``; the same seed always gives the same schedule.

    About a third of the schedules are *WebSocket-strict*: no safety poll, and
    the statuses that settle an order are published and sent by no webhook, so
    while the WebSocket says it is healthy it alone must deliver them (Get
    order is asked only when tracking starts and after an outage the socket
    reported); a publication it loses without noticing becomes a lost order
    instead of being papered over by polling.  Statuses the emulator holds back
    for a reorder are flushed at the end (a real server never holds them forever).
    """
    rng = random.Random(seed)
    strict = rng.random() < STRICT_SHARE
    until = rng.choice(GOALS)
    users = rng.randint(1, 3)
    orders: list[OrderPlan] = []
    steps: list[Step] = []
    for index in range(rng.randint(users, users + 3)):
        path = rng.choice(PATHS)
        track_at = round(rng.uniform(0.0, 0.4), 3)
        orders.append(
            OrderPlan(
                user=index % users,
                path=path,
                publish_new=rng.random() < 0.8,
                track_at=track_at,
                late_watch_at=round(track_at + rng.uniform(0.1, 2.0), 3),
            )
        )
        times = sorted(round(rng.uniform(0.02, HORIZON), 3) for _ in path[1:])
        for i, (at, status) in enumerate(zip(times, path[1:], strict=True), start=1):
            # In a strict schedule what settles the order, and where it ends
            # (an expiry for good), is the WebSocket's alone to tell.
            hide = strict and (settles(status, until) or i == len(path) - 1)
            steps.append(
                Step(
                    at=at,
                    order=index,
                    status=status,
                    # a status seen first (or only) by polling or a webhook
                    publish=hide or rng.random() < 0.8,
                    webhook=not hide and status in WEBHOOK_FOR and rng.random() < 0.7,
                )
            )
    steps.sort(key=lambda s: s.at)
    faults = _no_reorder_across_epochs(
        [_fault(rng, users, orders, steps) for _ in range(rng.randint(0, 6))]
    )
    if strict:
        faults = [_strict(f, orders) for f in faults]
        faults += [Fault(HORIZON + 0.05, "flush", user=u, count=FLUSH) for u in range(users)]
    faults.sort(key=lambda f: f.at)
    timings = Timings(
        deadline=8.0,
        websocket_lifespan=round(rng.uniform(0.3, 1.5), 3) if rng.random() < 0.15 else None,
        safety_poll_interval=None if strict else rng.choice((0.2, 0.3)),
        until=until,
    )
    return Schedule(seed, users, tuple(orders), tuple(steps), tuple(faults), timings)


def settles(status: str, until: str) -> bool:
    """Whether ``status`` answers the tracker's question (its goal reached, or a refund)."""
    return verdict(Status(status), Status(until)).settled


def _no_reorder_across_epochs(faults: list[Fault]) -> list[Fault]:
    """A reorder before a user's epoch reset becomes a duplicate.

    The emulator keeps publications held for a reorder across ``new_epoch``
    and pushes them into the new stream later, with their old offsets: no
    server does that (the old stream is gone), and a client cannot tell such a
    push from a real one, so it would only test the emulator.
    """
    last_reset = {f.user: f.at for f in sorted(faults, key=lambda f: f.at) if f.kind == "new_epoch"}
    return [
        attrs.evolve(f, kind="duplicate")
        if f.kind == "reorder" and f.at <= last_reset.get(f.user, -1.0)
        else f
        for f in faults
    ]


def _strict(fault: Fault, orders: Sequence[OrderPlan]) -> Fault:
    """In a WebSocket-strict schedule no webhook may bring a final status."""
    if fault.kind == "webhook_copies" and fault.notification == "order_canceled":
        assert fault.order is not None
        return Fault(fault.at, "drop", user=orders[fault.order].user)
    return fault


def _fault(rng: random.Random, users: int, orders: Sequence[OrderPlan], steps: list[Step]) -> Fault:
    kind = rng.choice(FAULT_KINDS)
    at = round(rng.uniform(0.0, HORIZON), 3)
    user = rng.randrange(users)
    order = rng.randrange(len(orders))
    if kind == "suspend":
        # The host (every user's socket at once) sleeps this long, then wakes
        # with its sleep-counting clock that much ahead.
        return Fault(at, kind, seconds=round(rng.uniform(0.1, 0.8), 3))
    if kind == "close":
        codes = TERMINAL_CODES if rng.random() < 0.25 else RECONNECT_CODES
        return Fault(at, kind, user=user, code=rng.choice(codes))
    if kind in ("drop", "new_epoch"):
        return Fault(at, kind, user=user)
    if kind in ("stall", "pings_off"):
        return Fault(at, kind, user=user, seconds=round(rng.uniform(0.3, 1.2), 3))
    if kind == "junk_publication":
        return Fault(at, kind, user=orders[order].user, order=order, count=rng.randrange(len(JUNK)))
    if kind in ("duplicate", "reorder"):
        return Fault(at, kind, user=user, count=rng.randint(1, 3) + (kind == "reorder"))
    if kind == "get_order_error":
        return Fault(
            at,
            kind,
            order=order,
            code=rng.choice((500, 502, 503)),
            seconds=round(rng.uniform(0.1, 1.0), 3),
        )
    if kind == "get_order_rate_limit":
        # Retry-After in whole seconds: mostly 0, sometimes a real 1 s pause
        return Fault(
            at,
            kind,
            order=order,
            code=rng.choice((0, 0, 1)),
            seconds=round(rng.uniform(0.1, 0.6), 3),
        )
    if kind == "get_order_slow":
        return Fault(
            at,
            kind,
            order=order,
            seconds=round(rng.uniform(0.1, 0.8), 3),
            delay=round(rng.uniform(0.05, 0.5), 3),
        )
    # Webhooks: copies re-send a notification the order really had by then;
    # a badly signed one may carry any status, even a lie, and must be refused.
    if kind == "webhook_copies":
        had = [s for s in steps if s.order == order and s.status in WEBHOOK_FOR]
        if not had:
            return Fault(at, "drop", user=user)
        step = rng.choice(had)
        at = round(step.at + rng.uniform(0.0, 0.3), 3)
        return Fault(
            at, kind, order=order, count=rng.randint(2, 3), notification=WEBHOOK_FOR[step.status]
        )
    notification = rng.choice(sorted(WEBHOOK_FOR.values()))
    first = min((s.at for s in steps if s.order == order), default=0.0)
    return Fault(max(at, first), kind, order=order, notification=notification)
