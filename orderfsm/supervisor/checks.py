"""Get order asked once for one order, beside whatever else follows it.

Two occasions: something may have been missed (tracking starts, a gap, a host
that slept, a lease taken over), and an ``expired`` order's grace is over (its
last look).  Both are one request that waits on the network, retried or bounded
in time, so they run as helper tasks; the scheduler's own loop only decides when
to start them.  Kept apart from that loop (:mod:`orderfsm.supervisor.runner`),
which every status change passes through, so each can be read, and changed,
without the other.
"""

from __future__ import annotations

import functools
import logging
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import anyio

from orderfsm.core import Observation
from orderfsm.errors import OrderFsmError, OrderNotFound, ProtocolError, TokenRejected
from orderfsm.interface import POLLING, Health, HealthReport
from orderfsm.supervisor.admission import Admission, Place

if TYPE_CHECKING:
    from orderfsm.metrics.counters import TrackerCounters
    from orderfsm.supervisor.order import TrackedOrder
    from transports.http import HttpClient

logger = logging.getLogger("orderfsm")

CHECK_RETRY_MIN, CHECK_RETRY_MAX = 0.5, 30.0
"""Backoff (seconds) of the Get order that follows a gap, while it fails."""
CHECK_RETRY_AFTER_MAX = 300.0
"""A Retry-After honoured up to this: a year's wait is a server's bug, and a check
asleep keeps every later doubt about the order from being checked."""
CHECKS_AT_ONCE = 32
"""Get order checks in flight at once that hold no place among the starting orders
(:mod:`orderfsm.supervisor.admission`): retries after a failure (but the first retry
after a 429, a 5xx or no answer, which keeps its place), an expired order's last
look.  Ten thousand orders whose Get order failed at once would otherwise retry as
ten thousand requests at once: a herd for Xsolla's API, and over a million objects
of half-done requests for our garbage collector to walk."""

LOOK_WRITTEN = 1.0
"""Seconds, beyond a ``details_timeout``, for a look's answer to reach the journal: part
of how long an instance waits at most for another's verdict on an expired order
(:mod:`orderfsm.supervisor.fleet_lapses`)."""


class GetOrderChecks:
    """The scheduler's one-shot Get order requests (mixed into ``Scheduler``).

    A mixin rather than an object of its own: the checks start, wake and stop
    orders exactly as the scheduler does, with its settings, so they share its
    state; what they use of it is declared here.
    """

    project_id: int
    api_url: str
    can_poll: bool
    fetch_details: bool
    journal: bool
    leases: bool
    details_timeout: float
    not_found_grace: float
    get_order_http: HttpClient | None
    _counters: TrackerCounters
    _checks_at_once: anyio.Semaphore
    _admission: Admission
    taken_over: set[int]

    if TYPE_CHECKING:

        def wake(self, order: TrackedOrder) -> None: ...

        def stop(self, order: TrackedOrder, error: OrderFsmError) -> None: ...

        def _spawn_helper(self, func: Any, order: TrackedOrder, *args: Any) -> None: ...

    def _looking_last(self, order: TrackedOrder) -> bool:
        """Whether an ``expired`` order whose grace is over waits for a last Get order:
        during the grace the order is polled slowly (if at all), so a payment in its
        last seconds would be heard by nobody.  It settles as expired only once Get
        order says so still (or could not say within ``details_timeout``).  In a
        fleet, an instance that does not look waits for the verdict of the one that
        does (:mod:`orderfsm.supervisor.fleet_lapses`), so that both tell their
        applications the same.  A tracker that does not poll but fetches details (on
        the WebSocket, or fed by webhooks and the application's own sources) looks
        too: its details' Get order would come next anyway, too late to change the
        answer."""
        if order.last_look:
            return False
        looks = self._looks(order)
        if not looks and not self.journal:
            return False
        if order.last_look is None:
            order.last_look = False
            self._spawn_helper(self._look_last, order, looks)
        return True

    def _looks(self, order: TrackedOrder) -> bool:
        """Whether this instance asks Get order for the order's last look: the owner.  One
        that let the order go looks too, unless another took it over: no instance may
        poll it.  In a fleet, only a lease makes the owner (an instance following only
        the journal calls every order its own: it has no other to follow)."""
        return self._can_look(order) and (self._owns(order) or order.let_go)

    def _owns(self, order: TrackedOrder) -> bool:
        """Whether this instance is the order's owner: a lease makes it in a fleet."""
        return order.owned and (self.leases or not self.journal)

    def _can_look(self, order: TrackedOrder) -> bool:
        """Whether this instance could ask Get order for the order's last look, owning it."""
        return (self.can_poll or self.fetch_details) and order.polling_error is None

    def _looking_before_giving_up(self, order: TrackedOrder) -> bool:
        """Whether an order nothing follows any more (a socket-only tracker's socket
        given up at its lifespan's end, or failed) waits for one last Get order before
        it ends with :class:`~orderfsm.errors.NoSourceLeft`: a payment whose
        publication the socket missed would otherwise never reach the application.
        Asked where the last look of an expired order's grace would be."""
        if order.last_look is not None or not self.fetch_details:
            return False
        if order.polling_error is not None or not order.owned:
            return False
        order.last_look = False
        self._spawn_helper(self._look_last, order, True)
        return True

    async def _look_last(self, order: TrackedOrder, looks: bool) -> None:
        try:
            fleet = order.fleet
            if fleet is not None and not self._owns(order):
                # Not the owner: the owner's verdict comes through the journal.  This
                # instance may take the order over meanwhile (its owner went): then it
                # looks itself, but never after a verdict is in.
                look_takes = self.details_timeout + LOOK_WRITTEN
                asked = await fleet.await_lapse_verdict(order.order_id, look_takes, looks)
                looks = asked and self._can_look(order)
            if looks:
                with anyio.move_on_after(self.details_timeout):
                    await self._check_once(order)
        finally:
            order.last_look = True
            self.wake(order)

    def _queue_check(self, order: TrackedOrder) -> None:
        """Check ``order`` once its turn comes (at once, while few orders are starting)."""
        order.checking = True
        start = functools.partial(self._start_check, order)
        self._admission.queue(start, later=order.order_id in self.taken_over)

    def _start_check(self, order: TrackedOrder, place: Place) -> bool:
        if order.ended or not order.owned:
            # Settled or stopped while it waited: no look.  Or another instance took
            # the order over meanwhile: that one checks it (a take-over is a doubt).
            order.checking = False
            return False
        self._spawn_helper(self._check_once, order, place)
        return True

    async def _check_once(self, order: TrackedOrder, place: Place | None = None) -> None:
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
        from transports.http.errors import ServerError, TokenProviderFailed
        from transports.http.shell import first_then, get_token
        from transports.polling import UnexpectedAnswer, fetch_order

        delay = CHECK_RETRY_MIN

        async def pause(seconds: float, busy: bool = False) -> None:
            """``busy``: the service's own trouble (a 429, a 5xx, no answer), which the
            next order's first request would meet as well: the place stays taken
            through the first such pause (:meth:`Place.answered`).  Otherwise a check
            that backs off holds back no other order."""
            if place is not None:
                place.answered(seconds if busy else None)
            await anyio.sleep(seconds)

        self._counters.checks += 1
        logger.debug(
            "order %s: asking Get order once",
            order.order_id,
            extra={"event": "get_order.check", "order_id": order.order_id},
        )
        try:
            # A queued check asks while this instance owns the order; a last look
            # (no place) finishes what its owner started, as followers wait for it.
            while order.settled is None and (order.owned or place is None):
                try:
                    # The token first, outside the slots shared with every other
                    # order: a slow token callable must not hold one.  A first try
                    # is bounded by its place among the starting orders already (and
                    # so is the retry after a first pause for the service's trouble);
                    # the slots bound the other retries and last looks, which have none.
                    token = first_then(await get_token(order.user.token), order.user.token)
                    slot = nullcontext() if place is not None and place.held else None
                    async with slot or self._checks_at_once:
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
                    await pause(min(delay, left))
                    delay = min(2 * delay, CHECK_RETRY_MAX)
                    continue
                except TokenProviderFailed:
                    await pause(delay)  # the app's token callable: a passing failure
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
                except OrderFsmError as exc:
                    # A 429 or 5xx's Retry-After is honoured, as the poller does: after a
                    # host sleep, thousands of checks would ignore a rate limit at once.
                    asked = exc.retry_after if isinstance(exc, ServerError) else None
                    # A malformed answer is more likely the order's own trouble than Xsolla's.
                    busy = not isinstance(exc, ProtocolError)
                    await pause(max(delay, min(asked or 0.0, CHECK_RETRY_AFTER_MAX)), busy=busy)
                    delay = min(2 * delay, CHECK_RETRY_MAX)
                    continue
                except Exception:  # a bug (ours, or an app's HttpClient): this check only
                    logger.exception(
                        "order %s: the Get order check failed",
                        order.order_id,
                        extra={"event": "transport.failed", "order_id": order.order_id},
                    )
                    return
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
                    lapsed = order.lapsed
                    if lapsed is not None and lapsed.status is details.known_status:
                        # Still expired: the details it may settle with, not asked again.
                        order.details = details
                return
        finally:
            if place is not None:  # a queued check's, not a last look's
                place.give_back()
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
