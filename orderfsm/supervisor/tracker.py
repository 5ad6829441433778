"""The tracker: what applications call to follow orders to their final status.

One ``Tracker`` owns the shared resources (the WebSocket connections, one per
user, and an HTTP client) and one scheduler (``runner.Scheduler``) that
carries out the policy's plan for every tracked order.  Every observation
goes through one ``OrderBook``, so each status change reaches the application
exactly once, whichever transport saw it first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from orderfsm.core import Observation, OrderBook, Status
from orderfsm.core.settle import check_goal
from orderfsm.errors import TrackerClosed, TransportError
from orderfsm.interface import (
    POLLING,
    WEBHOOK,
    WEBSOCKET,
    TokenProvider,
    token_provider,
)
from orderfsm.journal.orders import instance_name
from orderfsm.metrics.counters import Listener, TrackerCounters
from orderfsm.metrics.records import TrackerStats
from orderfsm.supervisor import arguments
from orderfsm.supervisor.custom import CustomTransport
from orderfsm.supervisor.early import DropLog, KeepsEarlyNews
from orderfsm.supervisor.fleet import LEASE, FleetLink
from orderfsm.supervisor.lifetime import TrackerLifetime
from orderfsm.supervisor.order import ChangeHook, ReportHook, TrackedOrder, given_up
from orderfsm.supervisor.policy import DefaultPolicy, Policy
from orderfsm.supervisor.records import Change, FinalResult, User
from orderfsm.supervisor.runner import Scheduler
from orderfsm.supervisor.settled import SettledHandler, SettledInTransaction
from orderfsm.supervisor.sleep import default_sleep_clock
from orderfsm.supervisor.takeover import TakesOverOrders

if TYPE_CHECKING:
    from transports.http import HttpClient
    from transports.journal import Journal

logger = logging.getLogger("orderfsm")

DEFAULT_WS_URL = "wss://ws-store.xsolla.com/connection/websocket"
DEFAULT_API_URL = "https://store.xsolla.com/api"


class Tracker(TrackerLifetime, TakesOverOrders, KeepsEarlyNews):
    """Follow Xsolla orders to their final status, on asyncio or trio.

    ::

        async with Tracker(project_id=P, token=jwt) as tracker:
            result = await tracker.wait(order_id)

    ``transports`` picks the built-in ways to learn statuses (``websocket``,
    ``polling``, ``webhook``: the last means "accept :meth:`observe` calls
    from a webhook receiver and keep waiting for them"); ``extra`` adds custom
    ones (see :class:`~orderfsm.supervisor.custom.CustomTransport`).
    ``on_change(change)`` is called with every status change and conflict of
    every order as it is applied, before any ``wait`` or ``watch`` resumes: the
    way to route all orders' news to one place (a UI, a queue) with no task
    per order.  ``on_report(order_id, report)`` sees every health report of
    every order's transports, for logs and dashboards.  Neither may block.

    ``until`` is what settles an order as a success: ``done`` (delivered, what
    Xsolla's client SDKs wait for) or ``paid`` (the item may be granted: what a
    server granting on ``order_paid`` waits for; no webhook ever says ``done``).
    ``canceled`` settles it as a failure, and ``expired`` does once the
    policy's grace is over.  ``sleep_clock`` is a clock that keeps counting
    while the host sleeps, compared with the event loop's to notice a suspend
    (see :mod:`orderfsm.supervisor.sleep`); tests pass one they can step.

    ``journal`` (a SQLite path or URL, a PostgreSQL URL, or an open
    ``Journal``) makes the tracker one of a fleet (:mod:`orderfsm.supervisor.fleet`):
    what any instance or webhook receiver learns reaches every instance's
    waiters, one instance follows each order through Xsolla under a lease,
    and an order only a dead instance followed is adopted by a live one that
    can follow Xsolla, each with the token ``token_for(order_id, user_id)``
    gives (no token is ever written to the journal).  At its start such an
    instance takes back its own previous life's orders (``instance`` names it
    across restarts; on SQLite a slot of the file does by default) and adopts
    the orders nobody follows, never one a live instance holds; an instance
    following only the journal takes over nothing (see
    :mod:`orderfsm.supervisor.takeover`).  Resumed and adopted orders are tracked like the
    application's own (``status``, ``wait``, ``watch``, ``on_change``).
    ``on_settled`` is then called once per settled order (and later
    refund) across the fleet, until it returns without raising;
    ``on_settled_transactional(event, connection)`` instead writes the
    application's effect in the same transaction that records the call, so it
    happens exactly once whatever instant a process dies.  ``journal_poll``
    (seconds) reads the journal that often instead of LISTENing on PostgreSQL,
    for a connection through PgBouncer in transaction pooling mode.
    """

    def __init__(
        self,
        *,
        project_id: int,
        token: TokenProvider | str | None = None,
        user_id: str | None = None,
        ws_url: str = DEFAULT_WS_URL,
        api_url: str = DEFAULT_API_URL,
        transports: Sequence[str] = (WEBSOCKET, POLLING),
        extra: Sequence[CustomTransport] = (),
        policy: Policy | None = None,
        fetch_details: bool = True,
        details_timeout: float = 10.0,
        websocket_options: dict[str, Any] | None = None,
        http: HttpClient | None = None,
        on_change: ChangeHook | None = None,
        on_report: ReportHook | None = None,
        until: Status | str = Status.DONE,
        not_found_grace: float = 60.0,
        sleep_clock: Callable[[], float] | None = None,
        journal: str | os.PathLike[str] | Journal | None = None,
        on_settled: SettledHandler | None = None,
        on_settled_transactional: SettledInTransaction | None = None,
        token_for: Callable[[int, str | None], TokenProvider | str] | None = None,
        lease: float = LEASE,
        journal_poll: float | None = None,
        instance: str | None = None,
    ) -> None:
        arguments.tracker_options(
            transports=transports,
            ws_url=ws_url,
            api_url=api_url,
            token_given=token,
            on_change=on_change,
            on_report=on_report,
            on_settled=on_settled,
            on_settled_transactional=on_settled_transactional,
            token_for=token_for,
            lease=lease,
            journal=journal,
            instance=instance,
            journal_poll=journal_poll,
        )
        self.journal = journal
        self.on_settled = on_settled
        self.on_settled_transactional = on_settled_transactional
        self.token_for = token_for
        self.lease = lease
        self.journal_poll = journal_poll
        self.instance = None if instance is None else instance_name(instance)
        self.fleet: FleetLink | None = None
        self.until = check_goal(until)
        if set(transports) <= {WEBHOOK} and not extra and self.until is Status.DONE:
            logger.warning(
                "no webhook says 'done' and no other transport is given: orders end at the "
                "deadline unless observe() brings 'done'; did you mean until='paid'?",
                extra={"event": "tracker.no_done_source"},
            )
        self.not_found_grace = not_found_grace
        self._sleep_clock = sleep_clock or default_sleep_clock()
        self.project_id = project_id
        self.user = None if token is None else User(token_provider(token), user_id)
        self.ws_url = ws_url
        self.api_url = api_url
        self.transports = frozenset(transports)
        self.extra = tuple(extra)
        self.policy: Policy = policy or DefaultPolicy()
        self.fetch_details = fetch_details
        self.details_timeout = details_timeout
        self._websocket_options = websocket_options or {}
        self._given_http = http
        self.on_change = on_change
        self.on_report = on_report
        self._book = OrderBook()
        self._counters = TrackerCounters()
        self._users: weakref.WeakValueDictionary[tuple[TokenProvider | str, str | None], User]
        self._users = weakref.WeakValueDictionary()
        """Gone with the last order that holds it: each player's token rotates, so a
        long-lived backend would otherwise keep every token it was ever given."""
        self._orders: dict[int, TrackedOrder] = {}
        self._no_token: set[int] = set()
        self._early: OrderedDict[int, list[Observation]] = OrderedDict()
        self._early_drops = DropLog()
        self._stack: contextlib.AsyncExitStack | None = None
        self._scheduler: Scheduler | None = None
        self._wake: Callable[[TrackedOrder], None] | None = None
        self._tg: TaskGroup | None = None
        self._pool: Any = None
        self.http: HttpClient | None = None

    # --- tracking ---------------------------------------------------------------

    def track(
        self,
        order_id: int,
        *,
        token: TokenProvider | str | None = None,
        user_id: str | None = None,
        user: User | None = None,
        until: Status | str | None = None,
    ) -> None:
        """Start following an order (if it already is, it is kept until :meth:`untrack`;
        one untracked after it settled is followed again); returns at once.

        ``until`` overrides the tracker's goal for this order.  An order has one
        goal while it is tracked: naming another for it raises ``ValueError``.
        Followed until :meth:`untrack` (a ``wait()`` given up on does not stop it).
        """
        self._follow(order_id, token=token, user_id=user_id, user=user, until=until).kept = True

    def _follow(
        self,
        order_id: int,
        *,
        token: TokenProvider | str | None = None,
        user_id: str | None = None,
        user: User | None = None,
        until: Status | str | None = None,
    ) -> TrackedOrder:
        order_id = arguments.order_id(order_id)
        scheduler = self._scheduler
        if scheduler is None:
            raise RuntimeError("use the Tracker inside 'async with'")
        goal = self.until if until is None else check_goal(until)
        arguments.token(token)
        if user is not None and not isinstance(user, User):
            raise TypeError(f"user must be a User (or give token= and user_id=), got {user!r}")
        existing = self._orders.get(order_id)
        if existing is not None and given_up(existing):
            # Untracked before it settled (a wait() given up on, say), and wanted
            # again: followed afresh, as after forget(); its status is told again.
            self.forget(order_id)
            existing = None
        if existing is not None:
            if until is not None and goal is not existing.until:
                raise ValueError(
                    f"order {order_id} is tracked until {existing.until}, not {goal}; "
                    "watch() and on_change show every change either way"
                )
            scheduler.taken_over.discard(order_id)  # the app's own now: its checks go first
            if existing.released:
                self._reopen(existing)
            return existing
        if user is None and token is not None:
            user = self._user_for(token, user_id)
        user = user or self.user
        if user is None and (self.transports & {WEBSOCKET, POLLING} or self.fetch_details):
            raise ValueError("a token is needed: pass token= to Tracker() or track()")
        self._book.track(order_id)
        order = TrackedOrder(
            order_id,
            user or _ANONYMOUS,
            self._book,
            anyio.current_time(),
            websocket=WEBSOCKET in self.transports,
            until=goal,
            wake=self._wake,
            on_change=self.on_change,
            on_report=self.on_report,
            counters=self._counters,
        )
        self._counters.order_tracked(order_id)
        logger.debug(
            "tracking order %s until %s",
            order_id,
            goal,
            extra={
                "event": "order.tracked",
                "order_id": order_id,
                "user": order.user.external_id,
                "status": goal.value,
            },
        )
        self._orders[order_id] = order
        if self.fleet is not None:
            order.fleet = self.fleet
            self.fleet.tracked(order)
        scheduler.start(order)
        for observation in self._early.pop(order_id, ()):
            order.observe(observation)
        return order

    def _reopen(self, order: TrackedOrder) -> None:
        """An order untracked after it settled, wanted again: what comes later (a
        refund) is applied and told again, and what came meanwhile is applied now:
        what was observed here (kept as news of an order not tracked), and the
        journal's log, read again (the core drops what is known)."""
        order.released = False
        for observation in self._early.pop(order.order_id, ()):
            order.observe(observation)
        if self.fleet is not None:
            self.fleet.reread(order.order_id)

    def _user_for(self, token: TokenProvider | str, user_id: str | None) -> User:
        """The same ``User`` for the same token, so a player's orders share one socket."""
        key = (token, user_id)
        user = self._users.get(key)
        if user is None:
            user = self._users[key] = User(token_provider(token), user_id)
        return user

    async def wait(self, order_id: int, **track_kwargs: Any) -> FinalResult:
        """Track the order if needed (see :meth:`track`) and return how it settled.

        Raises ``TrackingTimeout`` past the policy's deadline, the transports'
        typed error when none of them can go on, ``TrackerClosed`` when the
        tracker closes first.  Cancelling the last ``wait`` on an order stops its
        tracking, unless it settled meanwhile (its later news, a refund, still
        counts) or something else follows it: a ``watch()`` under way, or a
        :meth:`track` call (which keeps it until :meth:`untrack`).
        """
        order = self._follow(order_id, **track_kwargs)
        order.followers += 1
        try:
            await order.finished()
        finally:
            order.followers -= 1
            given_up = not order.is_finished and order.settled is None
            if given_up and not order.kept and not order.followers:
                self.untrack(order_id)
        if order.error is not None:
            raise order.error
        assert order.result is not None
        return order.result

    async def watch(
        self, order_id: int, *, follow: bool = False, **track_kwargs: Any
    ) -> AsyncIterator[Change]:
        """Each status change (and conflict) of the order, from the first one seen.

        Ends once the order is settled, or raises like :meth:`wait`.  With
        ``follow=True`` it goes on past the settlement with what comes later (a
        refund after ``done``, a payment after the expired grace; by then only
        webhooks and :meth:`observe` bring news) until the order is ``canceled``
        or untracked, or the tracker closes.
        """
        order = self._follow(order_id, **track_kwargs)
        order.followers += 1
        try:
            log, seen = order.log, 0
            while True:
                settled = order.settled_count
                end = len(log) if follow or settled is None else settled
                while seen < end:
                    seen += 1
                    yield log[seen - 1]
                if settled is not None and not follow:
                    break
                if order.released or (
                    order.is_finished and (order.error is not None or order.book.is_final(order_id))
                ):
                    break
                await order.news_after(seen)
            await order.finished()  # an unsettled order that was released has its error
        finally:
            order.followers -= 1
        if order.error is not None:
            raise order.error

    def untrack(self, order_id: int) -> None:
        """Stop following an order; its waiters get ``TrackerClosed`` if it was not settled."""
        order = self._orders.get(order_id)
        if order is not None and self._scheduler is not None:
            error = TrackerClosed(f"order {order_id} was untracked before it settled")
            self._scheduler.stop(order, error)
            order.release()

    def forget(self, order_id: int) -> None:
        """Untrack and drop everything known about a finished order."""
        self.untrack(order_id)
        if self._orders.pop(order_id, None) is not None:
            self._book.forget(order_id)
            if self.fleet is not None:
                self.fleet.forget(order_id)

    def status(self, order_id: int) -> Status | None:
        return self._book.status(order_id)

    def stats(self) -> TrackerStats:
        """What the tracker has done since it opened, and its connections now.

        Built when called from counts kept as things happen, so calling it
        (a metrics scrape) costs the tracked orders nothing; it also works
        after the tracker closed.
        """
        return self._counters.snapshot(None if self._pool is None else self._pool.stats())

    def instrument(self, listener: Listener | None) -> None:
        """Tell ``listener`` when each order's tracking starts and ends, and about each
        Get order request (what :mod:`orderfsm.metrics.otel` makes spans of); ``None``
        stops it.  One listener at a time; its calls come from the loop and must not block."""
        self._counters.listener = listener


async def _no_token() -> str:
    raise TransportError("no token was given for this order")


_ANONYMOUS = User(_no_token)
"""The user of orders tracked without a token (webhooks and custom transports only)."""
