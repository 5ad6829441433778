"""The order's own sources, each a task: its poller, its custom transports.

Kept apart from the scheduler's loop (:mod:`orderfsm.supervisor.runner`),
which only decides when a poller starts or stops and which orders have
custom transports, because these run for as long as the order does, wait
on the network or on application code, and must end in a wake-up whatever
way they end: a failure here costs this order only, and the loop decides
what follows.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any

import anyio

from orderfsm.errors import OrderFsmError, TransportError
from orderfsm.interface import Health, HealthReport
from orderfsm.supervisor.custom import CustomTransport, OrderContext, transport_name
from orderfsm.supervisor.custom_sink import CustomSink
from orderfsm.supervisor.order import SourceSink
from orderfsm.supervisor.stragglers import RunningCustom, Stragglers

if TYPE_CHECKING:
    from orderfsm.metrics.counters import TrackerCounters
    from orderfsm.supervisor.admission import Place
    from orderfsm.supervisor.order import TrackedOrder
    from transports.http import HttpClient

logger = logging.getLogger("orderfsm")


class RunsSources:
    """The scheduler's pollers and custom transports (mixed into ``Scheduler``).

    A mixin rather than an object of its own: they are spawned, and wake the
    order, as the scheduler's other tasks are, with its settings; what they use
    of it is declared here.
    """

    project_id: int
    api_url: str
    not_found_grace: float
    http: HttpClient | None
    get_order_http: HttpClient | None
    _counters: TrackerCounters
    stragglers: Stragglers

    if TYPE_CHECKING:

        def wake(self, order: TrackedOrder) -> None: ...

        def _spawn(self, func: Any, order: TrackedOrder, *args: Any) -> None: ...

    def _start_poller(
        self, order: TrackedOrder, interval: float, scope: anyio.CancelScope, place: Place
    ) -> bool:
        poller = order.poller
        if order.ended or poller is None or poller[0] is not scope:
            return False  # ended, or its poller stopped or replaced, while it waited
        self._spawn(self._poll, order, interval, scope, place)
        return True

    async def _poll(
        self, order: TrackedOrder, interval: float, scope: anyio.CancelScope, place: Place | None
    ) -> None:
        """Poll until settled (or cancelled); ``place``, a first request's among those
        starting, is given back at its answer (after a 429, a 5xx or no answer, at the
        next one's: :meth:`Place.answered`)."""
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
                    answered=None if place is None else place.answered,
                )
            except OrderFsmError as exc:
                if order.settled is None:
                    order.polling_error = exc
            except Exception as exc:  # a bug (ours, or an app's HttpClient) costs this order only
                logger.exception(
                    "order %s: polling failed",
                    order.order_id,
                    extra={"event": "transport.failed", "order_id": order.order_id},
                )
                if order.settled is None:
                    order.polling_error = TransportError(f"polling failed: {exc!r}")
            finally:
                if place is not None:
                    place.give_back()
                self._counters.polling -= 1
                if order.poller is not None and order.poller[0] is scope:
                    order.poller = None
                self.wake(order)

    def _start_custom(self, order: TrackedOrder, transport: CustomTransport) -> None:
        custom = RunningCustom(order.order_id, transport)
        customs = order.customs
        if customs is None:
            customs = order.customs = []
        customs.append(custom)  # listed now, so no check runs before it starts
        self._spawn(self._run_custom, order, custom)

    def _stop_customs(self, order: TrackedOrder) -> None:
        for custom in order.customs or ():
            if not custom.scope.cancel_called:
                custom.scope.cancel()
                self.stragglers.cancelled(custom)

    async def _run_custom(self, order: TrackedOrder, custom: RunningCustom) -> None:
        context = OrderContext(
            order_id=order.order_id,
            project_id=self.project_id,
            user=order.user,
            api_url=self.api_url,
            http=self.http,
        )
        transport = custom.transport
        try:
            with custom.scope:
                await transport(context, CustomSink(order))
        except Exception as exc:
            self._custom_ended(order, transport, exc)
        except BaseException as exc:
            cancelled, failed = split_cancelled(exc)
            if failed is None:
                raise
            self._custom_ended(order, transport, failed)
            if cancelled is not None:
                raise cancelled from None
        finally:
            customs = order.customs
            if customs is not None:
                customs.remove(custom)
                if not customs:
                    order.customs = None  # one empty list per order adds up over thousands
            self.stragglers.returned(custom)
            self.wake(order)

    def _custom_ended(
        self, order: TrackedOrder, transport: CustomTransport, exc: Exception
    ) -> None:
        """It gave up (an ``OrderFsmError``) or failed: the other transports go on, and
        the application hears of it (a warning or an error, a ``FAILED`` report under
        the transport's name, and the order's error if nothing else is left)."""
        name = transport_name(transport)
        fields = {"order_id": order.order_id, "source": name}
        if isinstance(exc, OrderFsmError):
            logger.warning(
                "order %s: custom transport %s gave up: %r",
                order.order_id,
                name,
                exc,
                extra={"event": "transport.ended", **fields},
            )
        else:  # a bug in user code (or an exception group) must not end tracking
            logger.error(
                "order %s: custom transport %s failed",
                order.order_id,
                name,
                exc_info=exc,
                extra={"event": "transport.failed", **fields},
            )
        error = ended_error(name, exc)
        order.custom_error = order.custom_error or error
        order.tell(HealthReport(name, Health.FAILED, anyio.current_time(), str(error), error=error))


def ended_error(name: str, exc: Exception) -> OrderFsmError:
    """The order's error when custom transport ``name`` ended with ``exc``.

    Of ``exc``'s own class when it is an ``OrderFsmError`` (what the application
    catches: ``TokenRejected``, say), a ``TransportError`` otherwise; either way
    the transport named, and ``exc`` its ``__cause__`` (with the traceback of
    where the transport raised it).
    """
    error: OrderFsmError
    if isinstance(exc, OrderFsmError):
        try:
            error = copy.copy(exc)  # its class and attributes
        except Exception:  # a constructor that wants more than the message
            error = TransportError()
        error.args = (f"custom transport {name} gave up: {exc}",)
    else:
        error = TransportError(f"custom transport {name} failed: {exc!r}")
    error.__cause__ = exc
    return error


def split_cancelled(exc: BaseException) -> tuple[BaseException | None, Exception | None]:
    """``exc`` as the cancellation to pass on and the transport's own failure (``None``
    where it is not one, a ``KeyboardInterrupt`` say).

    A transport's task group cancelled while a child fails in its cleanup ends, on
    trio, in a group of both: the cancellation is the tracker's (the order ended, or
    the tracker closes) and goes on; the failure costs this order only.  The
    transport's own scope takes its own cancellation out of the group, but not the
    tracker's task group's, cancelled too when the tracker closes.
    """
    split = getattr(exc, "split", None)  # an exception group (3.11's, or anyio's backport)
    if split is None:
        return exc, None
    cancelled, failed = split(anyio.get_cancelled_exc_class())
    if not isinstance(failed, Exception):  # nothing but cancellation, or a BaseException
        return exc, None
    return cancelled, failed
