"""The I/O shell around :class:`PollDecider`: sleeps, asks, reports.

Runs on asyncio and trio alike; only the HTTP client differs (see
:mod:`transports.http`).  Requests never overlap: the next one is scheduled
from the previous answer.
"""

from __future__ import annotations

import logging
import random as _random
import time
from collections.abc import Callable

import anyio

from orderfsm.interface import POLLING, ObservationSink, TokenProvider
from transports.http import HttpClient, HttpResponse
from transports.http.shell import ask, client_for, get_token, report_cancelled, send
from transports.polling.answers import Got, Rejected, classify
from transports.polling.decider import Fail, Finish, PollConfig, PollDecider, Step, Wait
from transports.polling.order import OrderDetails

DEFAULT_API = "https://store.xsolla.com/api"

logger = logging.getLogger("orderfsm.polling")


def order_url(api: str, project_id: int, order_id: int) -> str:
    return f"{api.rstrip('/')}/v2/project/{int(project_id)}/order/{int(order_id)}"


async def poll_order(
    order_id: int,
    *,
    project_id: int,
    token: TokenProvider,
    sink: ObservationSink,
    http: HttpClient | None = None,
    api: str = DEFAULT_API,
    config: PollConfig | None = None,
    random: Callable[[], float] | None = None,
    answered: Callable[[float | None], None] | None = None,
) -> OrderDetails:
    """Poll Get order until the order is settled (``config.until``), and return its details.

    Observations (``source="polling"``, ``raw`` = :class:`OrderDetails`) and
    health reports go to ``sink`` as they happen.  A terminal failure is
    reported as ``FAILED`` and then raised (``TokenRejected``,
    ``OrderNotFound``, ``ServiceUnavailable`` or ``ProtocolError``).
    Cancelling the call stops polling and reports ``STOPPED``.
    ``answered(busy_pause)`` is called at each answer up to the first one the
    service did not refuse: ``busy_pause`` is the wait before the next request when
    the service said "not now" (:attr:`Step.busy`), else ``None``.  A caller starting
    many pollers decides from it when the next one starts
    (:meth:`orderfsm.supervisor.admission.Place.answered`).
    """
    config = config or PollConfig()
    decider = PollDecider(order_id, config, random or _random.Random().random)
    url = order_url(api, project_id, order_id)
    current_token: str | None = None
    try:
        async with client_for(http) as client:

            async def get(bearer: str) -> HttpResponse:
                response = await send(client, "GET", url, bearer, config.request_timeout)
                _answered(order_id, response)
                return response

            step = decider.start(anyio.current_time())
            while True:
                _emit(order_id, step, sink)
                action = step.next
                if isinstance(action, Finish):
                    return action.details
                if isinstance(action, Fail):
                    raise action.error
                current_token, step = await ask(decider, action, current_token, token, get)
                if answered is not None:
                    answered(_pause(step) if step.busy else None)
                    if not step.busy:
                        answered = None
    except anyio.get_cancelled_exc_class():
        report_cancelled(sink, POLLING, decider.health)
        raise


def _pause(step: Step) -> float:
    """Seconds until the request ``step`` asks for next (0 if it asks for none)."""
    action = step.next
    return max(action.until - anyio.current_time(), 0.0) if isinstance(action, Wait) else 0.0


def _answered(order_id: int, response: HttpResponse) -> None:
    logger.debug(
        "order %s: Get order answered %s",
        order_id,
        response.status,
        extra={"event": "get_order.answer", "order_id": order_id, "code": response.status},
    )


def _emit(order_id: int, step: Step, sink: ObservationSink) -> None:
    if step.warning:
        logger.warning(
            step.warning, extra={"event": "polling.unknown_status", "order_id": order_id}
        )
    health = step.health
    if health is not None:
        logger.debug(
            "order %s: polling %s: %s",
            order_id,
            health.health.value,
            health.reason,
            extra={"event": "polling.health", "order_id": order_id, "health": health.health.value},
        )
    if step.observation is not None:
        sink.observe(step.observation)
    if step.health is not None:
        sink.report(step.health)


async def fetch_order(
    order_id: int,
    *,
    project_id: int,
    token: TokenProvider,
    http: HttpClient | None = None,
    api: str = DEFAULT_API,
    timeout: float = 10.0,  # noqa: ASYNC109 (mapped to RequestTimeout)
) -> OrderDetails:
    """Get order once: the full details, typically once an order is final.

    A rejected token is refreshed and the request retried once, as the
    official SDKs do.  Every other failure raises at once: 404 ->
    ``OrderNotFound``, 429/5xx -> ``ServerError`` (a ``ServiceUnavailable``),
    no answer -> ``RequestTimeout`` / ``ConnectFailed``, a bad body ->
    ``InvalidOrderAnswer``.
    """
    url = order_url(api, project_id, order_id)
    async with client_for(http) as client:
        for attempt in range(2):
            response = await send(client, "GET", url, await get_token(token), timeout)
            _answered(order_id, response)
            verdict = classify(response, order_id, time.time())
            if isinstance(verdict, Got):
                return verdict.details
            if isinstance(verdict, Rejected) and attempt == 0:
                continue
            raise verdict.exception(order_id)
    raise AssertionError("unreachable")  # pragma: no cover


__all__ = ["DEFAULT_API", "fetch_order", "order_url", "poll_order"]
