"""The details of a settled order: one more Get order before its result is handed over.

Kept apart from the scheduler's loop (:mod:`orderfsm.supervisor.runner`),
which decides when an order ends, because this is what follows that decision
for orders that fetch details: a request that waits on the network, bounded by
``details_timeout``, asked again for a moment when Get order lags behind the
status that settled the order or fails in passing, and whose answer is news too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from orderfsm.core import Observation
from orderfsm.errors import (
    ConnectionLost,
    OrderFsmError,
    ServiceUnavailable,
    TrackingTimeout,
    TransportError,
)
from orderfsm.interface import POLLING
from orderfsm.supervisor.order_result import closed_error

if TYPE_CHECKING:
    from orderfsm.supervisor.order import TrackedOrder
    from transports.http import HttpClient

logger = logging.getLogger("orderfsm")

DETAILS_LAG_PAUSE = 0.25
"""First pause before asking Get order again for details that lag behind the status."""
DETAILS_LAG_PATIENCE = 2.0
"""How long details lagging behind the settled status are asked for again at most."""


class FetchesDetails:
    """The scheduler's details of settled orders (mixed into ``Scheduler``).

    A mixin rather than an object of its own: the scheduler spawns it as it ends
    an order, and it fetches with the scheduler's settings; what it uses of the
    scheduler is declared here.
    """

    project_id: int
    api_url: str
    details_timeout: float
    get_order_http: HttpClient | None

    async def _finish(self, order: TrackedOrder) -> None:
        """Get the details of a settled order, then finish it."""
        await self._then(order, lambda error: order.finish(order.make_result(error), None))

    async def _finish_late(self, order: TrackedOrder) -> None:
        """Get the details of an order that settled after its tracking ended unsettled."""
        await self._then(order, lambda error: order.settle_late(order.make_result(error)))

    async def _then(self, order: TrackedOrder, end: Callable[[OrderFsmError | None], None]) -> None:
        """The details, then ``end(why there are none)``, whatever happens: the closing
        tracker finishes the orders it still has, but not one forgotten while its
        details were coming, whose ``wait()`` would hang."""
        details_error: OrderFsmError | None = None
        try:
            details_error = await self._details(order)
        except BaseException as exc:  # cancelled (the tracker closes), or a bug of ours
            details_error = (
                closed_error(order.order_id)
                if isinstance(exc, anyio.get_cancelled_exc_class())
                else TransportError(f"fetching the details failed: {exc!r}")
            )
            raise
        finally:
            if not order.is_finished:  # else the tracker closed and finished it
                end(details_error)

    async def _details(self, order: TrackedOrder) -> OrderFsmError | None:
        """Get order for the details of a settled order; why there are none, if so.

        The answer is news too: a status that moved on meanwhile (a refund
        already, a payment after the expired grace) reaches the listeners as
        the change it is.
        """
        from transports.http.errors import ServerError
        from transports.polling import fetch_order

        details_error: OrderFsmError | None = None
        lagging: str | None = None
        pause, started = DETAILS_LAG_PAUSE, anyio.current_time()
        with anyio.move_on_after(self.details_timeout) as timeout:
            while True:
                wait = pause
                try:
                    details = order.details = await fetch_order(
                        order.order_id,
                        project_id=self.project_id,
                        token=order.user.token,
                        http=self.get_order_http,
                        api=self.api_url,
                        timeout=self.details_timeout,
                    )
                except (ServiceUnavailable, ConnectionLost) as exc:
                    # A passing failure (a 5xx, a 429, a dropped connection) is asked
                    # again for a moment too, no sooner than a Retry-After asks: one
                    # blip must not cost the result its items.
                    details_error = exc
                    if isinstance(exc, ServerError) and exc.retry_after is not None:
                        wait = max(wait, exc.retry_after)
                except OrderFsmError as exc:
                    details_error = exc
                    break
                except Exception as exc:  # a bug (ours, or an app's HttpClient): no details
                    logger.exception(
                        "order %s: fetching its details failed",
                        order.order_id,
                        extra={"event": "details.failed", "order_id": order.order_id},
                    )
                    details_error = TransportError(f"fetching the details failed: {exc!r}")
                    break
                else:
                    details_error = None
                    told = details.known_status
                    if told is not None:
                        at = anyio.current_time()
                        order.observe(Observation(order.order_id, told, POLLING, at, raw=details))
                    if told is None or order.released or order.book.status(order.order_id) is told:
                        break  # (a released order may be forgotten, its book entry with it)
                    # Get order still says an older status (it lags behind the socket):
                    # details that say "paid" beside a result that says "done" are asked
                    # again, for a moment only: the player waits for the result meanwhile.
                    lagging = details.status
                    details_error = TrackingTimeout(
                        f"order details: Get order still said {lagging!r} after "
                        f"{DETAILS_LAG_PATIENCE:g} s; they are its last answer"
                    )
                if anyio.current_time() + wait > started + DETAILS_LAG_PATIENCE:
                    break  # with the last failure, or the lagging answer, as details_error
                await anyio.sleep(wait)
                pause = min(2 * pause, 1.0)
        if timeout.cancelled_caught:
            why = f"Get order still said {lagging!r}" if lagging else "they did not arrive"
            details_error = TrackingTimeout(f"order details: {why} in time")
        return details_error
