"""The tracker: what applications call to follow orders to their final status.

One ``Tracker`` owns the shared resources (the WebSocket connections, one per
user, and an HTTP client) and one runner task per tracked order.  A runner
asks the policy what to use, carries the plan out (attach to the user's
WebSocket, start or stop a poller), and sleeps until a transport reports news
or the plan's review time comes.  Every observation goes through one
``OrderBook``, so each status change reaches the application exactly once,
whichever transport saw it first.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from orderfsm.core import Observation, OrderBook, Status
from orderfsm.errors import (
    NoSourceLeft,
    OrderFsmError,
    OrderNotFound,
    TokenRejected,
    TrackerClosed,
    TrackingTimeout,
    TransportError,
)
from orderfsm.interface import POLLING, WEBHOOK, WEBSOCKET, Health, HealthReport, TokenProvider
from orderfsm.supervisor.custom import CustomTransport, OrderContext
from orderfsm.supervisor.order import SourceSink, TrackedOrder
from orderfsm.supervisor.policy import DefaultPolicy, Policy
from orderfsm.supervisor.records import Change, FinalResult, User

if TYPE_CHECKING:
    from transports.http import HttpClient

logger = logging.getLogger("orderfsm")

DEFAULT_WS_URL = "wss://ws-store.xsolla.com/connection/websocket"
DEFAULT_API_URL = "https://store.xsolla.com/api"
KNOWN_TRANSPORTS = frozenset({WEBSOCKET, POLLING, WEBHOOK})
EARLY_OBSERVATIONS_KEPT = 10_000
CHECK_RETRY_MIN, CHECK_RETRY_MAX = 0.5, 30.0
"""Backoff (seconds) of the Get order that follows a gap, while it fails."""


def _as_provider(token: TokenProvider | str) -> TokenProvider:
    if isinstance(token, str):
        value = token

        async def fixed() -> str:
            return value

        return fixed
    return token


class Tracker:
    """Follow Xsolla orders to their final status, on asyncio or trio.

    ::

        async with Tracker(project_id=P, token=jwt) as tracker:
            result = await tracker.wait(order_id)

    ``transports`` picks the built-in ways to learn statuses (``websocket``,
    ``polling``, ``webhook``: the last means "accept :meth:`observe` calls
    from a webhook receiver and keep waiting for them"); ``extra`` adds custom
    ones (see :class:`~orderfsm.supervisor.custom.CustomTransport`).
    ``on_report(order_id, report)`` sees every health report of every order's
    transports, for logs and dashboards; it must not block.
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
        on_report: Callable[[int, HealthReport], None] | None = None,
    ) -> None:
        unknown = set(transports) - KNOWN_TRANSPORTS
        if unknown:
            raise ValueError(f"unknown transports: {', '.join(sorted(unknown))}")
        self.project_id = project_id
        self.user = None if token is None else User(_as_provider(token), user_id)
        self.ws_url = ws_url
        self.api_url = api_url
        self.transports = frozenset(transports)
        self.extra = tuple(extra)
        self.policy: Policy = policy or DefaultPolicy()
        self.fetch_details = fetch_details
        self.details_timeout = details_timeout
        self._websocket_options = websocket_options or {}
        self._given_http = http
        self.on_report = on_report
        self._book = OrderBook()
        self._users: dict[tuple[TokenProvider | str, str | None], User] = {}
        self._orders: dict[int, TrackedOrder] = {}
        self._early: OrderedDict[int, list[Observation]] = OrderedDict()
        self._stack: contextlib.AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        self._pool: Any = None
        self.http: HttpClient | None = None

    # --- lifetime -------------------------------------------------------------

    async def __aenter__(self) -> Tracker:
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
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None and self._tg is not None
        self._tg.cancel_scope.cancel()
        stack, self._stack, self._tg = self._stack, None, None
        # The body's exception (a TrackingTimeout from wait(), say) propagates
        # as it is: told about it, the task group would wrap it in a group.
        await stack.__aexit__(None, None, None)
        return None

    # --- tracking ---------------------------------------------------------------

    def track(
        self,
        order_id: int,
        *,
        token: TokenProvider | str | None = None,
        user_id: str | None = None,
        user: User | None = None,
        known_status: Status | None = None,
    ) -> None:
        """Start following an order (no-op if it already is); returns at once."""
        if self._tg is None:
            raise RuntimeError("use the Tracker inside 'async with'")
        if order_id in self._orders:
            return
        if user is None and token is not None:
            user = self._user_for(token, user_id)
        user = user or self.user
        if user is None and (self.transports & {WEBSOCKET, POLLING} or self.fetch_details):
            raise ValueError("a token is needed: pass token= to Tracker() or track()")
        self._book.track(order_id, known_status)
        order = TrackedOrder(
            order_id,
            user or User(_no_token),
            self._book,
            anyio.current_time(),
            websocket=WEBSOCKET in self.transports,
            on_report=self.on_report,
        )
        self._orders[order_id] = order
        self._tg.start_soon(self._run, order, name=f"orderfsm order {order_id}")
        for observation in self._early.pop(order_id, ()):
            order.observe(observation)

    def _user_for(self, token: TokenProvider | str, user_id: str | None) -> User:
        """The same ``User`` for the same token, so a player's orders share one socket."""
        key = (token, user_id)
        user = self._users.get(key)
        if user is None:
            user = self._users[key] = User(_as_provider(token), user_id)
        return user

    async def wait(self, order_id: int, **track_kwargs: Any) -> FinalResult:
        """Track the order if needed and return how it ended.

        Raises ``TrackingTimeout`` past the policy's deadline, the transports'
        typed error when none of them can go on, ``TrackerClosed`` when the
        tracker closes first.  Cancelling a ``wait`` that started the tracking
        stops it.
        """
        started_here = order_id not in self._orders
        self.track(order_id, **track_kwargs)
        order = self._orders[order_id]
        try:
            await order.finished.wait()
        except BaseException:
            if started_here and not order.finished.is_set():
                self.untrack(order_id)
            raise
        if order.error is not None:
            raise order.error
        assert order.result is not None
        return order.result

    async def watch(self, order_id: int, **track_kwargs: Any) -> AsyncIterator[Change]:
        """Each status change (and conflict) of the order, from the first one seen.

        Ends after the final status, or raises like :meth:`wait`.
        """
        self.track(order_id, **track_kwargs)
        order = self._orders[order_id]
        log, seen = order.log, 0
        while True:
            while seen < len(log):
                seen += 1
                yield log[seen - 1]
            if order.finished.is_set():
                break
            await order.news_after(seen)
        if order.error is not None:
            raise order.error

    def untrack(self, order_id: int) -> None:
        """Stop following an order; its waiters get ``TrackerClosed``."""
        order = self._orders.get(order_id)
        if order is not None:
            order.scope.cancel()

    def forget(self, order_id: int) -> None:
        """Untrack and drop everything known about a finished order."""
        self.untrack(order_id)
        if self._orders.pop(order_id, None) is not None:
            self._book.forget(order_id)

    def status(self, order_id: int) -> Status | None:
        return self._book.status(order_id)

    # --- a sink for webhooks and other process-wide sources ---------------------

    def observe(self, observation: Observation, /) -> None:
        """Accept an observation from outside (e.g. a webhook receiver).

        One for an order not tracked yet is kept (the last
        ``EARLY_OBSERVATIONS_KEPT`` orders) and replayed when tracking starts:
        a webhook can beat the application's call to ``track``.
        """
        order = self._orders.get(observation.order_id)
        if order is not None:
            order.observe(observation)
            return
        self._early.setdefault(observation.order_id, []).append(observation)
        self._early.move_to_end(observation.order_id)
        while len(self._early) > EARLY_OBSERVATIONS_KEPT:
            self._early.popitem(last=False)

    def report(self, report: HealthReport, /) -> None:
        """Health of process-wide sources does not steer any one order."""

    # --- one order's runner -------------------------------------------------------

    async def _run(self, order: TrackedOrder) -> None:
        error: OrderFsmError | None = None
        try:
            with order.scope:
                await self._follow(order)
        except OrderFsmError as exc:
            error = exc
        if order.final is None and error is None:
            error = TrackerClosed(f"order {order.order_id} was untracked before a final status")
        if order.final is None:
            order.finish(None, error)
            return
        await self._finish(order)

    async def _follow(self, order: TrackedOrder) -> None:
        """Carry out the policy's plans until the order is final or must give up.

        Errors are raised after the task group has closed, so that callers see
        the typed error itself rather than an exception group.
        """
        can_poll = POLLING in self.transports
        attachment: Any = None
        poller: tuple[anyio.CancelScope, float] | None = None
        error: OrderFsmError | None = None
        unseen_checked = False
        async with anyio.create_task_group() as tg:
            for transport in self.extra:
                order.custom_running += 1  # counted now, so no check runs before it starts
                tg.start_soon(self._run_custom, transport, order)
            try:
                while order.final is None:
                    now = anyio.current_time()
                    plan = self.policy.plan(order.situation(can_poll), now)
                    if plan.timed_out:
                        error = TrackingTimeout(
                            f"order {order.order_id}: no final status after "
                            f"{now - order.started_at:.1f} s "
                            f"(last seen: {self._book.status(order.order_id)})"
                        )
                        break
                    if plan.websocket and attachment is None and order.websocket is not None:
                        attachment = self._attach(order)
                    elif not plan.websocket and attachment is not None:
                        attachment.detach()
                        attachment = None
                    if poller is not None and poller[1] != plan.poll_interval:
                        poller[0].cancel()
                        poller = None
                    if plan.poll_interval is not None and poller is None:
                        scope = anyio.CancelScope()
                        tg.start_soon(self._poll, order, plan.poll_interval, scope)
                        poller = (scope, plan.poll_interval)
                    if (
                        attachment is not None
                        and order.websocket is Health.HEALTHY
                        and not order.seen_on_websocket
                        and not unseen_checked
                    ):
                        # Caught up, yet the socket has no record of the order: its
                        # statuses may predate what the history still holds.
                        unseen_checked = order.check_once = True
                    if order.check_once:
                        order.check_once = False
                        if can_poll:
                            # Even beside a poller: the poller stops as soon as the
                            # socket is healthy again, perhaps before a good answer.
                            tg.start_soon(self._check_once, order)
                    if attachment is None and poller is None:
                        error = self._no_source_error(order)
                        if error is not None:
                            break
                    await order.sleep_until_news(plan.review_at)
            finally:
                if attachment is not None:
                    attachment.detach()
                tg.cancel_scope.cancel()
        if error is not None:
            raise error

    def _attach(self, order: TrackedOrder) -> Any:
        return self._pool.attach(
            order.order_id,
            SourceSink(order),
            token=order.user.token,
            user_id=order.user.external_id,
            user_key=order.user,
        )

    def _no_source_error(self, order: TrackedOrder) -> OrderFsmError | None:
        """Fail now rather than at the deadline when nothing can deliver news."""
        if WEBHOOK in self.transports or order.custom_running:
            return None
        cause = order.polling_error or order.websocket_error
        if cause is None and order.custom_errors:
            cause = order.custom_errors[0]
        return cause or NoSourceLeft(f"order {order.order_id}: no transport left to follow it")

    async def _poll(self, order: TrackedOrder, interval: float, scope: anyio.CancelScope) -> None:
        from transports.polling import PollConfig, poll_order

        healthy = order.websocket is Health.HEALTHY
        config = PollConfig(interval=interval, first_delay=interval if healthy else 0.0)
        with scope:
            try:
                await poll_order(
                    order.order_id,
                    project_id=self.project_id,
                    token=order.user.token,
                    sink=SourceSink(order),
                    http=self.http,
                    api=self.api_url,
                    config=config,
                )
            except OrderFsmError as exc:
                if order.final is None:
                    order.polling_error = exc
                    order.wake()

    async def _check_once(self, order: TrackedOrder) -> None:
        """Get order after a source admitted it may have missed something.

        Asked again, backing off, until one good answer: after a failed request
        the gap would stay open with nothing else looking (soak seed 257).
        """
        from transports.polling import fetch_order

        delay = CHECK_RETRY_MIN
        while order.final is None:
            try:
                details = await fetch_order(
                    order.order_id,
                    project_id=self.project_id,
                    token=order.user.token,
                    http=self.http,
                    api=self.api_url,
                )
            except (TokenRejected, OrderNotFound):
                return  # will not get better; the poller or the deadline says so
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

    async def _run_custom(self, transport: CustomTransport, order: TrackedOrder) -> None:
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
            order.custom_errors.append(exc)
        except Exception as exc:  # a bug in user code (or an exception group) must not end tracking
            logger.exception("custom transport %r failed", transport)
            order.custom_errors.append(TransportError(f"custom transport failed: {exc!r}"))
        finally:
            order.custom_running -= 1
            order.wake()

    async def _finish(self, order: TrackedOrder) -> None:
        final = order.final
        assert final is not None
        details_error: OrderFsmError | None = None
        if order.details is None and self.fetch_details:
            from transports.polling import fetch_order

            with anyio.move_on_after(self.details_timeout) as timeout:
                try:
                    order.details = await fetch_order(
                        order.order_id,
                        project_id=self.project_id,
                        token=order.user.token,
                        http=self.http,
                        api=self.api_url,
                        timeout=self.details_timeout,
                    )
                except OrderFsmError as exc:
                    details_error = exc
            if timeout.cancelled_caught:
                details_error = TrackingTimeout("order details did not arrive in time")
        result = FinalResult(
            order_id=order.order_id,
            status=final.status,
            source=final.source,
            at=final.at,
            changes=tuple(order.changes),
            conflicts=tuple(order.conflicts),
            details=order.details,
            details_error=details_error,
        )
        order.finish(result, None)


async def _no_token() -> str:
    raise TransportError("no token was given for this order")
