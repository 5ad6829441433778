"""The scheduler: carries out the policy's plans for every tracked order.

One task serves all orders.  An order is looked at again when a transport
wakes it (news, a health change, a gap) or when its plan's review time comes,
kept in a heap; in between it owns no task.  Tasks are spawned only for work
that waits on the network: a poller, a one-shot Get order check, a custom
transport, the details of a final order.  With ten thousand orders waiting on
their WebSockets, that is the difference between one task and ten thousand
(each with its task group, cancel scopes and events for the garbage collector
to walk).
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from orderfsm.core import Observation
from orderfsm.errors import (
    NoSourceLeft,
    OrderFsmError,
    OrderNotFound,
    TokenRejected,
    TrackerClosed,
    TrackingTimeout,
    TransportError,
)
from orderfsm.interface import POLLING, Health, HealthReport
from orderfsm.metrics.counters import TrackerCounters
from orderfsm.supervisor.custom import CustomTransport, OrderContext
from orderfsm.supervisor.order import SourceSink, TrackedOrder
from orderfsm.supervisor.policy import Policy
from orderfsm.supervisor.records import FinalResult
from transports.backend import Wakeup, loop_clock

if TYPE_CHECKING:
    from transports.http import HttpClient

logger = logging.getLogger("orderfsm")

CHECK_RETRY_MIN, CHECK_RETRY_MAX = 0.5, 30.0
"""Backoff (seconds) of the Get order that follows a gap, while it fails."""
CHECKS_AT_ONCE = 32
"""One-shot Get order checks in flight at once; the rest wait their turn.  Ten
thousand orders tracked at once (a backend resuming after a restart) would
otherwise be ten thousand requests at once: a herd for Xsolla's API, and over a
million objects of half-done requests for our garbage collector to walk."""


class Scheduler:
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

    # --- what the tracker calls -------------------------------------------------------

    def start(self, order: TrackedOrder) -> None:
        for transport in self.extra:
            order.custom_running += 1  # counted now, so no check runs before it starts
            self._spawn_helper(self._run_custom, order, transport)
        self._live += 1
        # One Get order at once, beside the WebSocket: a status from before the
        # socket's history, and a wrong order id, are known in seconds.
        order.check_once = self.can_poll
        self.wake(order)

    def wake(self, order: TrackedOrder) -> None:
        if not order.ended:
            self._dirty[order.order_id] = order
            self._kick.set()

    def stop(self, order: TrackedOrder, error: OrderFsmError) -> None:
        """End tracking now (untracked, timed out, no source, no such order): unsettled,
        or, when a settling status came before the end did, with that status (its
        details may still have been on their way)."""
        if not order.ended:
            self._end(order)
            if order.settled is None:
                order.finish(None, error)
            else:
                order.finish(_result(order, None), None)

    def close(self, orders: Iterable[TrackedOrder]) -> None:
        """The tracker is closing: whoever still waits learns it now.

        An order already settled gets its result, without the details still on
        their way: a settled status, once seen, is never dropped.
        """
        for order in orders:
            order.release()
            order.fleet = None  # closing is not giving up: a journal keeps it to resume
            if order.is_finished:
                continue
            self._end(order)
            closed = TrackerClosed(f"order {order.order_id}: the tracker closed")
            if order.settled is None:
                order.finish(None, closed)
            else:
                order.finish(_result(order, closed), None)

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
        if len(due) > 2 * self._live + 64:
            # Orders that ended or moved their review leave entries behind;
            # dropped in bulk so the heap does not keep old orders alive.
            due[:] = [entry for entry in due if entry[2].review_at == entry[0]]
            heapq.heapify(due)
        return due[0][0] if due else math.inf

    # --- one order ------------------------------------------------------------------

    def _step(self, order: TrackedOrder, now: float) -> None:
        """Bring the order's transports in line with the policy's current plan."""
        if order.settled is None:
            plan = self.policy.plan(order.situation(self.can_poll), now)
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
            self._end(order)
            if order.details is None and self.fetch_details:
                self._spawn(self._finish, order)
            else:  # nothing to wait for: no task
                order.finish(_result(order, None), None)
            return
        if plan.websocket and order.attachment is None and order.websocket is not None:
            order.attachment = self._pool.attach(
                order.order_id,
                order,  # the pool delivers only this order's news: no filter needed
                token=order.user.token,
                user_id=order.user.external_id,
                user_key=order.user,
            )
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
            self._spawn(self._poll, order, plan.poll_interval, scope)
        if order.check_once and not order.checking:
            order.check_once = False
            if self.can_poll and order.owned:
                # Even beside a poller: the poller stops as soon as the socket
                # is healthy again, perhaps before a good answer.
                order.checking = True
                self._spawn_helper(self._check_once, order)
        if order.attachment is None and order.poller is None:
            error = self._no_source_error(order)
            if error is not None:
                self.stop(order, error)
                return
        if plan.review_at != order.review_at:
            order.review_at = plan.review_at
            if plan.review_at is not None:
                self._pushed += 1
                heapq.heappush(self._due, (plan.review_at, self._pushed, order))

    def _looking_last(self, order: TrackedOrder) -> bool:
        """Whether an ``expired`` order whose grace is over waits for a last Get order:
        during the grace the order is polled slowly (if at all), so a payment in its
        last seconds would be heard by nobody.  It settles as expired only once Get
        order says so still (or could not say within ``details_timeout``).  In a
        fleet, an instance that only follows the journal waits as long for the
        owner's look to arrive there, so that both tell the application the same."""
        if order.last_look:
            return False
        looks = self.can_poll and order.polling_error is None and order.owned
        if not looks and not self.journal:
            return False
        if order.last_look is None:
            order.last_look = False
            self._spawn_helper(self._look_last, order, looks)
        return True

    async def _look_last(self, order: TrackedOrder, looks: bool) -> None:
        try:
            if looks:
                with anyio.move_on_after(self.details_timeout):
                    await self._check_once(order)
            else:  # another instance looks: its answer comes through the journal
                await anyio.sleep(self.details_timeout + LOOK_ARRIVES)
        finally:
            order.last_look = True
            self.wake(order)

    def _end(self, order: TrackedOrder) -> None:
        if order.ended:
            return  # a closing tracker meets orders whose details are on their way
        order.ended = True
        if order.fleet is not None:
            order.fleet.ended(order)
        order.review_at = None
        self._live -= 1
        self._dirty.pop(order.order_id, None)
        if order.attachment is not None:
            order.attachment.detach()
            order.attachment = None
        if order.poller is not None:
            order.poller[0].cancel()
            order.poller = None
        for scope in tuple(order.helpers or ()):
            scope.cancel()

    def _no_source_error(self, order: TrackedOrder) -> OrderFsmError | None:
        """Fail now rather than at the deadline when nothing can deliver news."""
        if self.webhooks or self.journal or order.custom_running or order.last_look is False:
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

    async def _poll(self, order: TrackedOrder, interval: float, scope: anyio.CancelScope) -> None:
        from transports.polling import PollConfig, poll_order

        healthy = order.websocket is Health.HEALTHY
        config = PollConfig(
            interval=interval,
            first_delay=interval if healthy else 0.0,
            not_found_grace=self.not_found_grace,
            until=order.until,
        )
        self._counters.polling += 1
        with scope:
            try:
                await poll_order(
                    order.order_id,
                    project_id=self.project_id,
                    token=order.user.token,
                    sink=SourceSink(order),
                    http=self.get_order_http,
                    api=self.api_url,
                    config=config,
                )
            except OrderFsmError as exc:
                if order.settled is None:
                    order.polling_error = exc
            finally:
                self._counters.polling -= 1
                if order.poller is not None and order.poller[0] is scope:
                    order.poller = None
                self.wake(order)

    async def _check_once(self, order: TrackedOrder) -> None:
        """Get order once, because something may have been missed.

        Asked again, backing off, until one good answer: after a failed request
        the doubt would stay with nothing else looking (soak seed 257).  A 404
        for an order nothing has been seen of is asked again until the
        not-found grace (from the start of tracking) is over, then it ends the
        tracking: a wrong order id is named in seconds, not after the socket's
        five minutes; sooner still when the WebSocket refused the token that Get
        order accepted (a wrong project id).  An answer that asking again cannot
        change (a page that is not Xsolla's: a wrong API URL) ends polling for the
        order, reported as failed.
        """
        from transports.http.errors import TokenProviderFailed
        from transports.http.shell import first_then, get_token
        from transports.polling import UnexpectedAnswer, fetch_order

        delay = CHECK_RETRY_MIN
        self._counters.checks += 1
        logger.debug(
            "order %s: asking Get order once",
            order.order_id,
            extra={"event": "get_order.check", "order_id": order.order_id},
        )
        try:
            while order.settled is None:
                try:
                    # The token first, outside the slots shared with every other
                    # order: a slow token callable must not hold one.
                    token = first_then(await get_token(order.user.token), order.user.token)
                    async with self._checks_at_once:
                        details = await fetch_order(
                            order.order_id,
                            project_id=self.project_id,
                            token=token,
                            http=self.get_order_http,
                            api=self.api_url,
                        )
                except OrderNotFound as exc:
                    if order.book.status(order.order_id) is not None:
                        return  # visible elsewhere already: Get order lags behind
                    refused = order.websocket_error
                    if isinstance(refused, TokenRejected):
                        self.stop(order, self._elsewhere(order, exc, refused))
                        return
                    left = order.started_at + self.not_found_grace - anyio.current_time()
                    if left <= 0:
                        self.stop(order, exc)
                        return
                    await anyio.sleep(min(delay, left))
                    delay = min(2 * delay, CHECK_RETRY_MAX)
                    continue
                except TokenProviderFailed:
                    await anyio.sleep(delay)  # the app's token callable: a passing failure
                    delay = min(2 * delay, CHECK_RETRY_MAX)
                    continue
                except TokenRejected:
                    # Refused twice, a fresh token the second time.  The poller, if one
                    # is needed, finds out for itself: one check's 401s (a blip of the
                    # token service) must not end polling for good.
                    return
                except UnexpectedAnswer as exc:
                    order.polling_error = exc
                    now = anyio.current_time()
                    order.report(HealthReport(POLLING, Health.FAILED, now, str(exc), exc))
                    return
                except OrderFsmError:
                    await anyio.sleep(delay)
                    delay = min(2 * delay, CHECK_RETRY_MAX)
                    continue
                if details.known_status is not None:
                    order.observe(
                        Observation(
                            order.order_id,
                            details.known_status,
                            source=POLLING,
                            at=anyio.current_time(),
                            raw=details,
                        )
                    )
                return
        finally:
            order.checking = False
            self.wake(order)  # a doubt raised meanwhile is checked next

    def _elsewhere(
        self, order: TrackedOrder, missing: OrderNotFound, refused: TokenRejected
    ) -> OrderNotFound:
        """Get order took the token and knows no such order, the WebSocket refused the
        token for this project: the two agree only if the project id is wrong (or the
        order is someone else's).  Polling on could only repeat the 404."""
        error = OrderNotFound(
            f"{missing}; the WebSocket refused the same token for project "
            f"{self.project_id} ({refused}) though Get order accepted it: "
            "the project id is probably wrong"
        )
        error.__cause__ = missing
        return error

    async def _run_custom(self, order: TrackedOrder, transport: CustomTransport) -> None:
        context = OrderContext(
            order_id=order.order_id,
            project_id=self.project_id,
            user=order.user,
            api_url=self.api_url,
            http=self.http,
        )
        try:
            await transport(context, SourceSink(order))
        except OrderFsmError as exc:
            order.custom_error = order.custom_error or exc
        except Exception as exc:  # a bug in user code (or an exception group) must not end tracking
            logger.exception(
                "custom transport %r failed",
                transport,
                extra={"event": "transport.failed", "order_id": order.order_id},
            )
            error = TransportError(f"custom transport failed: {exc!r}")
            order.custom_error = order.custom_error or error
        finally:
            order.custom_running -= 1
            self.wake(order)

    async def _finish(self, order: TrackedOrder) -> None:
        """Get order once for the details of a settled order, then finish it.

        The answer is news too: a status that moved on meanwhile (a refund
        already, a payment after the expired grace) reaches the listeners as
        the change it is.
        """
        from transports.polling import fetch_order

        details_error: OrderFsmError | None = None
        with anyio.move_on_after(self.details_timeout) as timeout:
            try:
                details = order.details = await fetch_order(
                    order.order_id,
                    project_id=self.project_id,
                    token=order.user.token,
                    http=self.get_order_http,
                    api=self.api_url,
                    timeout=self.details_timeout,
                )
            except OrderFsmError as exc:
                details_error = exc
            else:
                if details.known_status is not None:
                    at = anyio.current_time()
                    order.observe(
                        Observation(order.order_id, details.known_status, POLLING, at, raw=details)
                    )
        if timeout.cancelled_caught:
            details_error = TrackingTimeout("order details did not arrive in time")
        if not order.is_finished:  # else the tracker closed while the details were coming
            order.finish(_result(order, details_error), None)


LOOK_ARRIVES = 1.0
"""Seconds, beyond the owner's ``details_timeout``, a follower gives the owner's last
look of an expired order to reach it through the journal."""


def _result(order: TrackedOrder, details_error: OrderFsmError | None) -> FinalResult:
    settled = order.settled
    assert settled is not None
    return FinalResult(
        order_id=order.order_id,
        status=settled.status,
        source=settled.source,
        at=settled.at,
        changes=tuple(order.changes(order.settled_count)),
        conflicts=tuple(order.conflicts),
        details=order.details,
        details_error=details_error,
        until=order.until,
    )
