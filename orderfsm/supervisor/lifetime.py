"""A tracker's lifetime: what it opens as it enters, and closes as it leaves.

Kept apart from the tracking calls (:mod:`orderfsm.supervisor.tracker`)
because it is the tracker's wiring, not its API: the HTTP client, the
WebSocket pool, the journal and the link to the rest of the fleet, the
scheduler's task group and the host-sleep detector are opened in one exit
stack, and closed so that the journal knows what this instance knew and
every waiter learns that the tracker closed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from anyio.abc import TaskGroup

from orderfsm.interface import POLLING, WEBHOOK, WEBSOCKET, TokenProvider
from orderfsm.metrics.counters import TrackerCounters
from orderfsm.metrics.http import CountedHttp
from orderfsm.supervisor.custom import CustomTransport
from orderfsm.supervisor.early import DropLog
from orderfsm.supervisor.fleet import FleetLink
from orderfsm.supervisor.order import TrackedOrder
from orderfsm.supervisor.policy import Policy
from orderfsm.supervisor.records import User
from orderfsm.supervisor.runner import Scheduler
from orderfsm.supervisor.settled import SettledHandler, SettledInTransaction
from orderfsm.supervisor.sleep import SLEEP_CHECK_INTERVAL, SleepDetector

if TYPE_CHECKING:
    from orderfsm.journal.orders import OrderRow
    from transports.http import HttpClient
    from transports.journal import Journal

logger = logging.getLogger("orderfsm")
_T = TypeVar("_T", bound="TrackerLifetime")

FLUSH_ON_CLOSE = 5.0
"""Seconds a closing tracker waits for its journal writes (a database outage)."""


class TrackerLifetime:
    """The tracker's ``async with`` (mixed into ``Tracker``).

    A mixin rather than an object of its own: what it opens (the scheduler, the
    pool, the fleet link) is what the tracking calls use, so it sets the
    tracker's own state; what it uses of it is declared here.
    """

    project_id: int
    user: User | None
    ws_url: str
    api_url: str
    transports: frozenset[str]
    extra: tuple[CustomTransport, ...]
    policy: Policy
    fetch_details: bool
    details_timeout: float
    not_found_grace: float
    journal: str | os.PathLike[str] | Journal | None
    instance: str | None
    lease: float
    journal_poll: float | None
    on_settled: SettledHandler | None
    on_settled_transactional: SettledInTransaction | None
    token_for: Callable[[int, str | None], TokenProvider | str] | None
    fleet: FleetLink | None
    http: HttpClient | None
    _given_http: HttpClient | None
    _websocket_options: dict[str, Any]
    _sleep_clock: Callable[[], float]
    _counters: TrackerCounters
    _early_drops: DropLog
    _orders: dict[int, TrackedOrder]
    _stack: contextlib.AsyncExitStack | None
    _scheduler: Scheduler | None
    _wake: Callable[[TrackedOrder], None] | None
    _tg: TaskGroup | None
    _pool: Any

    if TYPE_CHECKING:

        async def _resume(self, fleet: FleetLink) -> None: ...

        def _adopt(self, rows: list[OrderRow]) -> None: ...

    async def __aenter__(self: _T) -> _T:
        if self._stack is not None:
            # Entered again while open: the first opening's sockets leaked, and its
            # exit met the second's state.
            raise RuntimeError("this Tracker is open already: enter it once at a time")
        async with contextlib.AsyncExitStack() as stack:
            if self._given_http is not None:
                self.http = self._given_http
            elif POLLING in self.transports or self.fetch_details or self.extra:
                from transports.http import open_http_client

                self.http = await stack.enter_async_context(open_http_client())
            if POLLING in self.transports or self.fetch_details:
                # Loaded now: importing it on the first failover would hold the
                # event loop (tens of ms) exactly when polling should start.
                import transports.polling  # noqa: F401
            if WEBSOCKET in self.transports:
                from transports.centrifuge import WebSocketPool

                pool = WebSocketPool(
                    project_id=self.project_id, url=self.ws_url, **self._websocket_options
                )
                self._pool = await stack.enter_async_context(pool)
            fleet = await self._join_fleet(stack)
            tg = self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._scheduler = Scheduler(
                tg,
                project_id=self.project_id,
                api_url=self.api_url,
                policy=self.policy,
                can_poll=POLLING in self.transports,
                webhooks=WEBHOOK in self.transports,
                journal=fleet is not None,
                leases=fleet is not None and fleet.follows_xsolla,
                extra=self.extra,
                fetch_details=self.fetch_details,
                details_timeout=self.details_timeout,
                not_found_grace=self.not_found_grace,
                http=self.http,
                get_order_http=None
                if self.http is None
                else CountedHttp(self.http, self._counters),
                pool=self._pool,
                counters=self._counters,
            )
            tg.start_soon(self._scheduler.run, name="orderfsm scheduler")
            tg.start_soon(self._notice_sleep, name="orderfsm sleep detector")
            if self.extra:
                tg.start_soon(self._scheduler.stragglers.run, name="orderfsm stragglers")
            self._wake = self._scheduler.wake  # one bound method, shared by every order
            if fleet is not None:
                tg.start_soon(fleet.run, name="orderfsm fleet")
                await self._resume(fleet)
            self._stack = stack.pop_all()
        return self

    async def _join_fleet(self, stack: contextlib.AsyncExitStack) -> FleetLink | None:
        """Open the journal, if any, and the link to the rest of the fleet."""
        if self.journal is None:
            return None
        from transports.journal import Journal, open_journal
        from transports.journal.instance import lease_name
        from transports.journal.order_log import OrderLog

        journal = self.journal
        if not isinstance(journal, Journal):
            journal = await stack.enter_async_context(open_journal(journal))
        name = await lease_name(
            journal, self.instance, stack, within=self.lease, sessions=self.journal_poll is None
        )
        self.fleet = FleetLink(
            OrderLog(journal, poll=self.journal_poll, owner=name.name, fresh=name.fresh),
            self._orders,
            follows_xsolla=bool(self.transports & {WEBSOCKET, POLLING}),
            on_settled=self.on_settled,
            on_settled_transactional=self.on_settled_transactional,
            lease=self.lease,
            adopt=None if self.token_for is None and self.user is None else self._adopt,
            keep_name=name.keep,
        )
        return self.fleet

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None and self._scheduler is not None
        if self.fleet is not None:
            with anyio.CancelScope(shield=True):
                await self.fleet.flush(FLUSH_ON_CLOSE)
        self._scheduler.close(list(self._orders.values()))
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        stack, self._stack, self._scheduler, self._tg = self._stack, None, None, None
        # The body's exception (a TrackingTimeout from wait(), say) propagates
        # as it is: told about it, the task group would wrap it in a group.
        try:
            await stack.__aexit__(None, None, None)
        finally:
            self._early_drops.flush()
        return None

    async def _notice_sleep(self) -> None:
        detector = SleepDetector()
        while True:
            slept = detector.sample(anyio.current_time(), self._sleep_clock())
            if slept is not None:
                self._counters.host_sleeps += 1
                logger.info(
                    "the host slept for %.1f s: reconnecting and checking orders",
                    slept,
                    extra={"event": "host.slept", "seconds": round(slept, 1)},
                )
                self.host_resumed()
            await anyio.sleep(SLEEP_CHECK_INTERVAL)

    def host_resumed(self) -> None:
        """The host woke from a sleep: reconnect now and ask Get order for every
        unsettled order.

        Called by the tracker itself when its clocks disagree; an application
        that hears of a resume from its platform (a power event) may call it
        first.
        """
        if self._pool is not None:
            self._pool.reconnect_all("the host slept")
        for order in self._orders.values():
            if not order.ended:
                order.doubt()
