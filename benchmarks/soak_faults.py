"""Play a schedule on the emulator: each status step and each fault at its time.

The emulator is the truth: every status step it performs is recorded in the
order's path, and what the application received is judged against that.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence

import anyio
import attrs
from anyio.abc import TaskGroup
from soak_schedule import JUNK, WEBHOOK_FOR, Fault, Schedule, Step

from orderfsm.testing import SteppedClock
from transports.emulator import EmulatorClient, EmulatorError, User

INSUFFICIENT_STATE = 3010
"""The close code of a Centrifuge server whose positioned stream broke."""


@attrs.define
class Player:
    emu: EmulatorClient
    schedule: Schedule
    order_ids: Sequence[int]
    users: Sequence[User]
    paths: Sequence[list[str]]
    """Each order's statuses so far, as the emulator has them; appended to as steps happen."""
    start: float
    """The schedule's time zero, on the event loop's clock."""
    sleep_clock: SteppedClock
    """The tracker's clock for time asleep: a host suspend steps it."""
    sabotage: str | None = None
    applied: list[str] = attrs.Factory(list)
    """The kinds of the faults applied so far."""
    errors: list[str] = attrs.Factory(list)
    """Control calls the emulator refused (a bug of the harness)."""
    steps_played: anyio.Event = attrs.Factory(anyio.Event)
    """Every status step has happened (faults may still be pending)."""
    asked_at: dict[int, dict[str, float]] = attrs.Factory(dict)
    """By order index: when (event loop clock) the emulator was asked for each status:
    the earliest moment any transport could have seen it."""
    webhooked: dict[int, set[str]] = attrs.Factory(dict)
    """By order index: the statuses a real, well-signed webhook was sent for."""
    webhooks_sent: int = 0
    """Deliveries started, each answered at least once before the tracker may close."""

    async def play(self) -> None:
        events: list[Step | Fault] = sorted(
            [*self.schedule.steps, *self.schedule.faults],
            key=lambda e: (e.at, isinstance(e, Fault)),
        )
        if self.sabotage == "lost":
            events = [self._hidden(e) for e in events]
            await self.emu.get_order_fault("error", order_id=self.order_ids[0])
        last_step = max((e.at for e in events if isinstance(e, Step)), default=-1.0)
        if last_step < 0:
            self.steps_played.set()
        async with anyio.create_task_group() as later:
            for event in events:
                await anyio.sleep_until(self.start + event.at)
                try:
                    if isinstance(event, Step):
                        self.asked_at.setdefault(event.order, {})[event.status] = (
                            anyio.current_time()
                        )
                        await self.emu.set_status(
                            self.order_ids[event.order],
                            event.status,
                            publish=event.publish,
                            webhook=event.webhook,
                        )
                        self.paths[event.order].append(event.status)
                        if event.webhook and event.status in WEBHOOK_FOR:
                            self._announced(event.order, event.status, 1)
                    else:
                        await self._inject(event, later)
                        self.applied.append(event.kind)
                except EmulatorError as exc:
                    self.errors.append(f"{event!r}: {exc}")
                if isinstance(event, Step) and event.at == last_step:
                    self.steps_played.set()

    def _hidden(self, event: Step | Fault) -> Step | Fault:
        """The ``lost`` sabotage: order 0's statuses after ``new`` reach no transport."""
        if isinstance(event, Step) and event.order == 0:
            return attrs.evolve(event, publish=False, webhook=False)
        if isinstance(event, Fault) and event.order == 0 and event.kind == "webhook_copies":
            return attrs.evolve(event, kind="drop", user=self.schedule.orders[0].user)
        return event

    async def _inject(self, fault: Fault, later: TaskGroup) -> None:
        emu = self.emu
        user = None if fault.user is None else self.users[fault.user]
        order_id = None if fault.order is None else self.order_ids[fault.order]
        kind = fault.kind
        if kind == "suspend":
            assert fault.seconds is not None
            later.start_soon(self._suspend, fault.seconds)
        elif kind == "close":
            assert user is not None and fault.code is not None
            await emu.close_connections(user, fault.code, "soak")
        elif kind == "drop":
            assert user is not None
            await emu.drop_connections(user)
        elif kind == "stall":
            assert user is not None
            await emu.stall_connections(user, fault.seconds)
        elif kind == "pings_off":
            assert user is not None and fault.seconds is not None
            await emu.set_pings(False, user)
            later.start_soon(_after, fault.seconds, lambda: emu.set_pings(True, user))
        elif kind == "duplicate":
            assert user is not None and fault.count is not None
            await emu.duplicate_publications(user, fault.count)
        elif kind == "reorder":
            assert user is not None and fault.count is not None
            await emu.reorder_publications(user, fault.count)
        elif kind == "new_epoch":
            assert user is not None
            await emu.new_epoch(user)
            # What Centrifuge does when a positioned subscription's stream breaks
            # (the emulator leaves that to us): without it, live pushes of the new
            # epoch carry offsets the client already passed and are dropped as old.
            await emu.close_connections(user, INSUFFICIENT_STATE, "insufficient state")
        elif kind == "get_order_error":
            await emu.get_order_fault(
                "error", status=fault.code or 500, seconds=fault.seconds, order_id=order_id
            )
        elif kind == "get_order_rate_limit":
            await emu.get_order_fault(
                "rate_limit", retry_after=fault.code or 0, seconds=fault.seconds, order_id=order_id
            )
        elif kind == "get_order_slow":
            await emu.get_order_fault(
                "slow", delay=fault.delay or 0.1, seconds=fault.seconds, order_id=order_id
            )
        elif kind == "webhook_copies":
            assert order_id is not None and fault.order is not None
            copies = fault.count or 2
            await emu.send_webhook(order_id, fault.notification, copies=copies)
            status = next(s for s, n in WEBHOOK_FOR.items() if n == fault.notification)
            self._announced(fault.order, status, copies)
        elif kind == "webhook_bad_signature":
            assert order_id is not None
            await emu.send_webhook(order_id, fault.notification, bad_signature=True)
            self.webhooks_sent += 1
        elif kind == "flush":
            assert user is not None and fault.count is not None
            for _ in range(fault.count):
                await emu.publish_raw(user, {"order_id": 1, "status": "flushing"})
        elif kind == "junk_publication":
            assert user is not None and order_id is not None and fault.count is not None
            junk = JUNK[fault.count]
            if isinstance(junk, dict):
                junk = {k: order_id if v == "ORDER" else v for k, v in junk.items()}
            await emu.publish_raw(user, junk)
        else:
            raise ValueError(f"unknown fault kind {kind!r}")

    def _announced(self, order: int, status: str, deliveries: int) -> None:
        self.webhooked.setdefault(order, set()).add(status)
        self.webhooks_sent += deliveries

    async def _suspend(self, seconds: float) -> None:
        """The host sleeps: every socket goes silent, then it wakes with its clock ahead."""
        for user in self.users:
            await self.emu.suspend(user)
        await anyio.sleep(seconds)
        for user in self.users:
            await self.emu.resume(user)
        self.sleep_clock.step(30.0)  # the loop never saw those 30 s: the host was asleep


async def _after(seconds: float, action: Callable[[], Awaitable[object]]) -> None:
    await anyio.sleep(seconds)
    with contextlib.suppress(EmulatorError):
        await action()
