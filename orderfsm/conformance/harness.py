"""Runs a custom transport for an order and records what it does.

Every call into the sink is checked as it happens; the session judges the
end: how the transport stopped, what it left behind, how long it blocked the
event loop.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
import attrs
from anyio.abc import TaskGroup

from orderfsm.conformance.resources import LeftOpen
from orderfsm.conformance.stalls import ProcessStalls, run_queue_wait
from orderfsm.core import Observation
from orderfsm.errors import OrderFsmError
from orderfsm.interface import BUILT_IN, Health, HealthReport
from orderfsm.supervisor.custom import CustomTransport, OrderContext

if TYPE_CHECKING:
    from orderfsm.conformance.world import World

logger = logging.getLogger("orderfsm.conformance")


@attrs.frozen
class Limits:
    timeout: float = 5.0
    """Longest wait for one expected observation."""
    settle: float = 0.2
    """Time a transport gets to start up before the first status change."""
    cancel_within: float = 1.0
    """Longest time from cancellation to the transport's return."""
    max_block: float = 0.5
    """Longest time the event loop may go without running other tasks."""


class Run:
    """One transport instance for one order, with a sink that checks every call."""

    def __init__(self, session: Session, context: OrderContext) -> None:
        self.session = session
        self.context = context
        self.order_id = context.order_id
        self.allowed = {"new"}
        self.observations: list[Observation] = []
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.started_at = anyio.current_time()
        self.ended_at: float | None = None
        self.ended_mono = 0.0
        """When it ended, on ``time.monotonic()`` (the clock of :class:`ProcessStalls`)."""
        self.returned = False
        self.error: OrderFsmError | None = None
        self.crash: BaseException | None = None

    async def main(self, transport: CustomTransport) -> None:
        try:
            with self.scope:
                await transport(self.context, self)
                self.returned = True
        except OrderFsmError as exc:
            self.error = exc
        except Exception as exc:  # what the checks are for
            self.crash = exc
        finally:
            self.ended_at = anyio.current_time()
            self.ended_mono = time.monotonic()
            self.done.set()
            self.session.wake()

    def ending(self) -> str:
        if self.crash is not None:
            return f"crashed with {self.crash!r} (only OrderFsmError may escape a transport)"
        if self.error is not None:
            return f"gave up with {self.error!r}"
        return "returned" if self.returned else "stopped"

    # --- the sink -----------------------------------------------------------

    def observe(self, observation: Observation, /) -> None:
        now = self._now("observe")
        if now is None:
            return
        if not isinstance(observation, Observation):
            self._violate(f"observe() got {observation!r}, not an orderfsm Observation")
        elif observation.order_id != self.order_id:
            self._violate(
                f"the transport for order {self.order_id} reported order "
                f"{observation.order_id} ({observation.status})"
            )
        elif observation.source in BUILT_IN:
            self._violate(_built_in_name("an observation", observation.source))
        elif observation.status.value not in self.allowed:
            self._violate(
                f"order {self.order_id} was reported {observation.status} but never had "
                f"that status (another order's news?)"
            )
        else:
            self._check_time("observation", observation.at, now)
            self.observations.append(observation)
        self.session.wake()

    def report(self, report: HealthReport, /) -> None:
        now = self._now("report")
        if now is None:
            return
        if not isinstance(report, HealthReport) or not isinstance(report.health, Health):
            self._violate(f"report() got {report!r}, not a HealthReport with a Health")
        elif not isinstance(report.source, str) or not report.source:
            self._violate(f"health report with source {report.source!r}: name the transport")
        elif report.source in BUILT_IN:
            self._violate(_built_in_name("a health report", report.source))
        elif report.health is Health.FAILED and report.error is None:
            self._violate("a FAILED health report must carry the error that ended it")
        else:
            self._check_time("health report", report.at, now)
        self.session.wake()

    def _now(self, method: str) -> float | None:
        try:
            return anyio.current_time()
        except Exception:
            self.session.violations.append(
                f"{method}() was called outside the event loop's thread; "
                f"sinks are not thread-safe (use anyio.from_thread)"
            )
            return None

    def _check_time(self, what: str, at: object, now: float) -> None:
        if not isinstance(at, (int, float)) or not math.isfinite(at):
            self._violate(f"{what} has at={at!r}, not a finite number")
        elif at > now or at < self.started_at:
            self._violate(
                f"{what} has at={at:.3f}, but anyio.current_time() was {self.started_at:.3f} "
                f"at the start and {now:.3f} now: take `at` from anyio.current_time()"
            )

    def _violate(self, message: str) -> None:
        self.session.violations.append(message)


def _built_in_name(what: str, source: str) -> str:
    return (
        f"{what} with source {source!r}, the name of one of the tracker's own transports: "
        f"name yours otherwise (on_report, results and stats tell them apart by it)"
    )


class Session:
    """One check: runs transports in a task group, watches the loop, judges the end."""

    def __init__(
        self, check: str, transport: CustomTransport, limits: Limits, stalls: ProcessStalls
    ) -> None:
        self.check = check
        self.transport = transport
        self.limits = limits
        self.stalls = stalls
        """Lateness of the whole process (a loaded machine): not charged to the transport."""
        self.runs: list[Run] = []
        self.violations: list[str] = []
        self.max_lag = 0.0
        self._changed = anyio.Event()
        self._tg: TaskGroup | None = None

    @classmethod
    async def run(
        cls,
        check: str,
        transport: CustomTransport,
        limits: Limits,
        body: Callable[[Session], Awaitable[None]],
    ) -> None:
        with ProcessStalls() as stalls, LeftOpen() as left_open:
            session = cls(check, transport, limits, stalls)
            failure: BaseException | None = None
            async with anyio.create_task_group() as tg:
                session._tg = tg
                tg.start_soon(session._watch_the_loop)
                baseline = {task.id for task in anyio.get_running_tasks()}
                try:
                    await body(session)
                    session.raise_violations()
                    await session._stop_all()
                except Exception as exc:  # raised after the task group, never wrapped in a group
                    failure = exc
                    await session._cancel(failure)
                tg.cancel_scope.cancel()
            if failure is None:
                failure = await session._leftovers(baseline)
            if failure is None and (left := left_open.found()):
                failure = session.fail(
                    f"left open after the transport ended: {left[0]} "
                    f"(close what it opens: async with, or try/finally)"
                )
        if failure is None and session.max_lag > limits.max_block:
            failure = session.fail(
                f"the event loop was blocked for {session.max_lag:.2f} s "
                f"(limit {limits.max_block:g} s): blocking I/O or CPU work in async code?"
            )
        if failure is not None:
            raise failure

    def fail(self, message: str) -> AssertionError:
        return AssertionError(f"check_transport: {self.check}: {message}")

    def start(self, context: OrderContext) -> Run:
        assert self._tg is not None
        run = Run(self, context)
        self.runs.append(run)
        self._tg.start_soon(run.main, self.transport, name=f"transport for {context.order_id}")
        return run

    def wake(self) -> None:
        self._changed.set()

    def raise_violations(self) -> None:
        if self.violations:
            raise self.fail(self.violations[0])

    async def change(self, world: World, run: Run, status: str) -> None:
        run.allowed.add(status)  # before the world acts: news may beat its return
        await world.set_status(run.order_id, status)

    async def wait_for(self, run: Run, status: str) -> None:
        what = f"'{status}' for order {run.order_id}"
        with anyio.move_on_after(self.limits.timeout):
            while True:
                self.raise_violations()
                if any(o.status.value == status for o in run.observations):
                    return
                if run.done.is_set():
                    raise self.fail(f"the transport {run.ending()} before reporting {what}")
                # bounded: a sink called from another thread cannot wake us
                with anyio.move_on_after(0.1):
                    await self._changed.wait()
                self._changed = anyio.Event()
        self.raise_violations()
        seen = [str(o.status) for o in run.observations]
        raise self.fail(
            f"no {what} within {self.limits.timeout:g} s (reported so far: {seen or 'nothing'})"
        )

    async def _stop_all(self) -> None:
        for run in self.runs:
            if run.crash is not None:
                raise self.fail(f"the transport for order {run.order_id} {run.ending()}")
        for run, took in await self._cancel():
            if run.crash is not None:
                raise self.fail(f"when cancelled, the transport {run.ending()}")
            if took > self.limits.cancel_within:
                raise self.fail(self._slow_stop(f"took {took:.2f} s to stop"))
        self.raise_violations()

    async def _cancel(self, failure: Exception | None = None) -> list[tuple[Run, float]]:
        """Cancel the runs still running and wait for each; how long each took to
        return, less what the machine stalled the process meanwhile.

        One not back within the limit is named in a warning (``conformance.stuck``),
        then waited for: structured concurrency cannot leave it behind, so the check
        can only fail once it returns; until then the warning says why it waits.
        """
        running = [run for run in self.runs if not run.done.is_set()]
        cancelled_at, cancelled_mono = anyio.current_time(), time.monotonic()
        waited_before = run_queue_wait()
        for run in running:
            run.scope.cancel()
        stops = []
        for run in running:
            named = False
            while True:
                with anyio.move_on_after(self.limits.cancel_within):
                    await run.done.wait()
                ended, ended_mono = run.ended_at, run.ended_mono
                if ended is None:
                    ended, ended_mono = anyio.current_time(), time.monotonic()
                waited = run_queue_wait() - waited_before
                stalled = max(self.stalls.during(cancelled_mono, ended_mono), waited)
                took = ended - cancelled_at - stalled
                if run.done.is_set():
                    break
                if not named and took > self.limits.cancel_within:
                    named = True
                    failing = "" if failure is None else f" (failing already: {failure})"
                    logger.warning(
                        "%s; it has not returned yet, and the check waits for it%s",
                        self.fail(self._slow_stop(f"has not stopped {took:.2f} s")),
                        failing,
                        extra={"event": "conformance.stuck", "order_id": run.order_id},
                    )
            stops.append((run, took))
        return stops

    def _slow_stop(self, took: str) -> str:
        return (
            f"the transport {took} after cancellation (limit {self.limits.cancel_within:g} s): "
            f"a shielded scope or a blocking call?"
        )

    async def _leftovers(self, baseline: set[int]) -> AssertionError | None:
        """Tasks started by the transport that outlived it (e.g. ``asyncio.create_task``)."""
        with anyio.move_on_after(self.limits.cancel_within):
            while True:
                extra = [t for t in anyio.get_running_tasks() if t.id not in baseline]
                if not extra:
                    return None
                await anyio.sleep(0.01)
        names = ", ".join(sorted(str(t.name) for t in extra))
        return self.fail(f"tasks left behind after the transport ended: {names}")

    async def _watch_the_loop(self) -> None:
        """The loop's lateness, less the time the machine did not let it run."""
        tick = 0.01
        while True:
            before, waited_before = time.monotonic(), run_queue_wait()
            await anyio.sleep(tick)
            after, waited = time.monotonic(), run_queue_wait() - waited_before
            stalled = max(self.stalls.during(before, after), waited)
            self.max_lag = max(self.max_lag, after - before - tick - stalled)
