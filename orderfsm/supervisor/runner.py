"""The scheduler: carries out the policy's plans for every tracked order.

One task serves all orders.  An order is looked at again when a transport
wakes it (news, a health change, a gap) or when its plan's review time comes,
kept in a heap; in between it owns no task.  Tasks are spawned only for work
that waits on the network: a poller, a one-shot Get order check, a custom
transport, the details of a final order.  With ten thousand orders waiting on
their WebSockets, that is the difference between one task and ten thousand
(each with its task group, cancel scopes and events for the garbage collector
to walk).  The one-shot Get order requests (a check, an expired order's last
look) are :mod:`orderfsm.supervisor.checks`', a settled order's details
:mod:`orderfsm.supervisor.details`', and the pollers and custom transports
:mod:`orderfsm.supervisor.sources`'.
"""

from __future__ import annotations

import functools
import heapq
import logging
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from orderfsm.errors import (
    NoSourceLeft,
    OrderFsmError,
    TrackingTimeout,
)
from orderfsm.interface import Health
from orderfsm.metrics.counters import TrackerCounters
from orderfsm.supervisor.admission import STARTING_AT_ONCE, Admission
from orderfsm.supervisor.checks import CHECKS_AT_ONCE, GetOrderChecks
from orderfsm.supervisor.custom import CustomTransport
from orderfsm.supervisor.details import FetchesDetails
from orderfsm.supervisor.handover import HandsOver
from orderfsm.supervisor.order import TrackedOrder
from orderfsm.supervisor.order_result import closed_error
from orderfsm.supervisor.policy import Policy
from orderfsm.supervisor.sources import RunsSources
from orderfsm.supervisor.stragglers import Stragglers
from transports.backend import Wakeup, loop_clock

if TYPE_CHECKING:
    from transports.http import HttpClient

logger = logging.getLogger("orderfsm")


class Scheduler(GetOrderChecks, FetchesDetails, RunsSources, HandsOver):
    def __init__(
        self,
        tg: TaskGroup,
        *,
        project_id: int,
        api_url: str,
        policy: Policy,
        can_poll: bool,
        webhooks: bool,
        journal: bool,
        leases: bool,
        extra: Sequence[CustomTransport],
        fetch_details: bool,
        details_timeout: float,
        not_found_grace: float,
        http: HttpClient | None,
        get_order_http: HttpClient | None,
        pool: Any,
        counters: TrackerCounters,
    ) -> None:
        self._tg = tg
        self.project_id = project_id
        self.api_url = api_url
        self.policy = policy
        self.can_poll = can_poll
        self.webhooks = webhooks
        self.journal = journal
        """Orders also learn from a journal (the others of a fleet, its receivers)."""
        self.leases = leases
        """In a fleet, this instance leases the orders it can follow through Xsolla."""
        self.extra = tuple(extra)
        self.fetch_details = fetch_details
        self.details_timeout = details_timeout
        self.not_found_grace = not_found_grace
        self.http = http
        self.get_order_http = get_order_http
        """The same client, counting Get order's answers."""
        self._pool = pool
        self._counters = counters
        self._due: list[tuple[float, int, TrackedOrder]] = []
        self._pushed = 0
        self._live = 0
        """Orders started and not ended: each has one live entry in ``_due`` at most."""
        self._dirty: dict[int, TrackedOrder] = {}
        self._kick = Wakeup()
        self._checks_at_once = anyio.Semaphore(CHECKS_AT_ONCE)
        self._admission = Admission(STARTING_AT_ONCE)
        self.stragglers = Stragglers()
        self.taken_over: set[int] = set()
        """Orders the tracker took over from the journal (a resume, an adoption) and the
        application has not asked for since: their first Get orders go after others'."""

    # --- what the tracker calls -------------------------------------------------------

    def start(self, order: TrackedOrder) -> None:
        for transport in self.extra:
            self._start_custom(order, transport)
        self._live += 1
        # One Get order at once, beside the WebSocket: a status from before the
        # socket's history, and a wrong order id, are known in seconds.
        order.check_once = self.can_poll
        self.wake(order)

    def wake(self, order: TrackedOrder) -> None:
        if not order.ended:
            if order.settled is not None:
                # Settled: nothing in the plan is left to weigh, so it ends here and
                # now, not in a pass of the scheduler's task (a wake-up, a loop
                # iteration and a task step for nearly every settled order).
                self._settle(order)
                return
            self._dirty[order.order_id] = order
            self._kick.set()
        elif (
            order.is_finished
            and not order.has_result
            and order.settled is not None
            and not order.released
            and not order.settling_late
        ):
            # Ended unsettled, then settled after all: its result, with details as any.
            order.settling_late = True
            order.reopen()
            if order.details is None and self.fetch_details:
                self._spawn(self._finish_late, order)
            else:
                order.settle_late(order.make_result(None))

    def stop(self, order: TrackedOrder, error: OrderFsmError) -> None:
        """End tracking now (untracked, timed out, no source, no such order): unsettled,
        or, when a settling status came before the end did, with that status (its
        details may still have been on their way)."""
        if not order.ended:
            self._end(order)
            if order.settled is None:
                order.finish(None, error)
            else:
                order.finish(order.make_result(None), None)

    def close(self, orders: Iterable[TrackedOrder]) -> None:
        """The tracker is closing: whoever still waits learns it now.

        An order already settled gets its result, without the details still on
        their way: a settled status, once seen, is never dropped.
        """
        self._admission.clear()
        for order in orders:
            order.release()
            self._stop_customs(order)  # ended already, most of them: named if slow to return
            order.fleet = None  # closing is not giving up: a journal keeps it to resume
            if order.is_finished:
                continue
            self._end(order)
            closed = closed_error(order.order_id)
            if order.settling_late:  # counted once already: its result, not a second end
                order.settle_late(order.make_result(closed))
            elif order.settled is None:
                order.finish(None, closed)
            else:
                order.finish(order.make_result(closed), None)

    async def run(self) -> None:
        clock = loop_clock()
        kick = self._kick
        while True:
            # One cancel scope per review time reached, its deadline moved when the
            # earliest review moves (rarely: ended orders' entries stay until due),
            # not one per pass: a pass runs for nearly every settled order, and a
            # scope with a deadline and an event each time were most of its cost.
            with anyio.CancelScope() as timer:
                while True:
                    wake_at = self._pass(clock())
                    if timer.deadline != wake_at:
                        timer.deadline = wake_at
                    await kick.wait()

    def _pass(self, now: float) -> float:
        """Look at the orders woken and those whose review is due; the next review time."""
        due = self._due
        while due and due[0][0] <= now:
            at, _, order = heapq.heappop(due)
            if order.review_at == at:
                order.review_at = None  # in the heap no more
                self._dirty[order.order_id] = order
        dirty, self._dirty = self._dirty, {}
        for order in dirty.values():
            if not order.ended:
                self._step(order, now)
        self._drop_stale()
        return due[0][0] if due else math.inf

    def _drop_stale(self) -> None:
        """Orders that ended or moved their review leave entries behind in the heap;
        dropped in bulk (amortized: the heap must double past the live orders
        first) so it does not keep old orders alive."""
        due = self._due
        if len(due) > 2 * self._live + 64:
            due[:] = [entry for entry in due if entry[2].review_at == entry[0]]
            heapq.heapify(due)

    # --- one order ------------------------------------------------------------------

    def _step(self, order: TrackedOrder, now: float) -> None:
        """Bring the order's transports in line with the policy's current plan."""
        if order.settled is None:
            situation = order.situation(self.can_poll)
            plan = self.policy.plan(situation, now)
            if plan.lapsed and not self._looking_last(order):
                order.settle_lapsed()
            elif plan.timed_out:
                status = order.book.status(order.order_id)
                seen = "nothing seen yet" if status is None else f"last seen: {status}"
                self.stop(
                    order,
                    TrackingTimeout(
                        f"order {order.order_id}: not settled after "
                        f"{now - order.started_at:.1f} s ({seen})"
                    ),
                )
                return
        if order.settled is not None:
            self._settle(order)
            return
        if plan.websocket and order.attachment is None and order.websocket is not None:
            attachment = self._pool.attach(
                order.order_id,
                order,  # the pool delivers only this order's news: no filter needed
                token=order.user.token,
                user_id=order.user.external_id,
                user_key=order.user,
            )
            if order.ended:
                # The player's open socket replayed a settling status while attaching
                # and the order ended then, with no attachment yet to let go of: let
                # go of it here, or the socket stays open for the tracker's life.
                attachment.detach()
                return
            order.attachment = attachment
        elif not plan.websocket and order.attachment is not None:
            # The socket is given up (its lifespan is over, or it failed), not
            # done with: it closes now rather than lingering for a next order.
            order.attachment.detach(linger=False)
            order.attachment = None
        poller = order.poller
        if poller is not None and poller[1] != plan.poll_interval:
            poller[0].cancel()
            poller = order.poller = None
        if plan.poll_interval is not None and poller is None:
            scope = anyio.CancelScope()
            order.poller = (scope, plan.poll_interval)
            if order.websocket is Health.HEALTHY:  # a safety poll: its first one is later
                self._spawn(self._poll, order, plan.poll_interval, scope, None)
            else:
                start = functools.partial(self._start_poller, order, plan.poll_interval, scope)
                self._admission.queue(start, later=order.order_id in self.taken_over)
                if order.websocket is None:
                    # Polling is all it has, and polls until settled: its first
                    # request is the check (one Get order, not two, per order at a
                    # restart that resumes thousands).
                    order.check_once = False
        if order.check_once and not order.checking:
            order.check_once = False
            if self.can_poll and order.owned:
                # Even beside a poller: the poller stops as soon as the socket
                # is healthy again, perhaps before a good answer.
                self._queue_check(order)
        review_at = plan.review_at
        if self.leases:
            judge_at = self._judge_following(order, plan, situation, now)
            if judge_at is not None and (review_at is None or judge_at < review_at):
                review_at = judge_at
        elif order.attachment is None and order.poller is None:
            error = self._no_source_error(order)
            if error is not None:
                self.stop(order, error)
                return
        if review_at != order.review_at:
            order.review_at = review_at
            if review_at is not None:
                self._pushed += 1
                heapq.heappush(self._due, (review_at, self._pushed, order))

    def _settle(self, order: TrackedOrder) -> None:
        """End tracking a settled order: its result now, or once its details come."""
        self._end(order)
        if order.details is None and self.fetch_details:
            self._spawn(self._finish, order)
        else:  # nothing to wait for: no task
            order.finish_settled()

    def _end(self, order: TrackedOrder) -> None:
        if order.ended:
            return  # a closing tracker meets orders whose details are on their way
        order.ended = True
        self.taken_over.discard(order.order_id)
        if order.fleet is not None:
            order.fleet.ended(order)
        order.review_at = None
        self._live -= 1
        self._dirty.pop(order.order_id, None)
        if len(self._due) > 2 * self._live + 64:  # _drop_stale's test, without its call
            self._drop_stale()  # orders settle outside passes too (wake)
        if order.attachment is not None:
            order.attachment.detach()
            order.attachment = None
        if order.poller is not None:
            order.poller[0].cancel()
            order.poller = None
        for scope in tuple(order.helpers or ()):
            scope.cancel()
        self._stop_customs(order)

    def _no_source_error(self, order: TrackedOrder) -> OrderFsmError | None:
        """Fail now rather than at the deadline when nothing can deliver news."""
        if self.webhooks or self.journal or order.customs or order.last_look is False:
            return None
        if self._looking_before_giving_up(order):
            return None
        cause = order.polling_error or order.websocket_error or order.custom_error
        return cause or NoSourceLeft(f"order {order.order_id}: no transport left to follow it")

    # --- tasks ----------------------------------------------------------------------

    def _spawn(self, func: Any, order: TrackedOrder, *args: Any) -> None:
        name = f"orderfsm {func.__name__} {order.order_id}"
        self._tg.start_soon(func, order, *args, name=name)

    def _spawn_helper(self, func: Any, order: TrackedOrder, *args: Any) -> None:
        """Run ``func`` under the order's helper scope, cancelled when the order ends."""
        scope = anyio.CancelScope()
        helpers = order.helpers
        if helpers is None:
            helpers = order.helpers = set()
        helpers.add(scope)

        async def helper() -> None:
            try:
                with scope:
                    await func(order, *args)
            finally:
                helpers.discard(scope)
                if not helpers and order.helpers is helpers:
                    order.helpers = None  # one empty set per order adds up over thousands

        self._tg.start_soon(helper, name=f"orderfsm {func.__name__} {order.order_id}")
