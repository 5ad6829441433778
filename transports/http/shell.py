"""The I/O pieces every thin driver over a :class:`~transports.http.pacing.Pacing` engine needs.

The polling and Event API drivers differ in which request they send and what
they report, not in how they get a client, a token and a turn.  Keeping those
here means a token provider that misbehaves, or a cancellation mid-wait, is
handled the same way whichever service is being read.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Protocol, TypeVar

import anyio

from orderfsm.interface import Health, HealthReport, ObservationSink, TokenProvider, not_a_token
from transports.http import HttpClient, HttpError, HttpResponse, open_http_client
from transports.http.errors import TokenProviderFailed
from transports.http.pacing import RefreshToken, Wait

StepT = TypeVar("StepT", covariant=True)


@asynccontextmanager
async def client_for(http: HttpClient | None) -> AsyncIterator[HttpClient]:
    """The caller's client as is, or a private one closed on the way out."""
    if http is not None:
        yield http
        return
    async with open_http_client() as own:
        yield own


TOKEN_TIMEOUT = 10.0
"""Seconds the application's token callable may take: one that hangs must not hold
an order's requests (and the slots shared with other players' orders) for good."""


async def get_token(token: TokenProvider, timeout: float = TOKEN_TIMEOUT) -> str:  # noqa: ASYNC109
    """Call the token provider; whatever goes wrong becomes :class:`TokenProviderFailed`."""
    value: object = None
    try:
        with anyio.move_on_after(timeout) as waited:
            value = await token()
    except TokenProviderFailed:
        raise
    except Exception as exc:
        raise TokenProviderFailed(f"token provider failed: {exc!r}") from exc
    if waited.cancelled_caught:
        raise TokenProviderFailed(f"token provider did not answer within {timeout:g} s")
    if not isinstance(value, str) or not value:
        raise TokenProviderFailed(not_a_token(value))
    return value


def first_then(first: str, provider: TokenProvider) -> TokenProvider:
    """A provider that gives ``first`` (a token fetched already) once, then asks
    ``provider``: a refresh after a 401 still gets a fresh token."""
    given = False

    async def token() -> str:
        nonlocal given
        if given:
            return await provider()
        given = True
        return first

    return token


class Engine(Protocol[StepT]):
    """The inputs every sans-io reader over :class:`~transports.http.pacing.Pacing` takes."""

    def on_response(self, response: HttpResponse, now: float, wall_now: float | None) -> StepT: ...

    def on_error(self, error: HttpError, now: float) -> StepT: ...

    def on_token_error(self, error: TokenProviderFailed, now: float) -> StepT: ...


async def ask(
    engine: Engine[StepT],
    action: Wait | RefreshToken,
    current: str | None,
    token: TokenProvider,
    request: Callable[[str], Awaitable[HttpResponse]],
) -> tuple[str | None, StepT]:
    """Carry out ``action`` and one request; return the token now held and the engine's step.

    A :class:`Wait` is slept out first.  The current token is reused unless
    there is none yet or the engine asked for a fresh one; whatever goes
    wrong (the token provider, the request) is told to the engine, which
    decides what it means.
    """
    if isinstance(action, Wait):
        await anyio.sleep_until(action.until)
    if current is None or isinstance(action, RefreshToken):
        try:
            current = await get_token(token)
        except TokenProviderFailed as exc:
            # Not the token just refused: the next request asks the provider again,
            # so a blip of the app's token service is not taken for a bad token.
            return None, engine.on_token_error(exc, anyio.current_time())
    try:
        response = await request(current)
    except HttpError as exc:
        return current, engine.on_error(exc, anyio.current_time())
    return current, engine.on_response(response, anyio.current_time(), time.time())


def bearer_headers(token: str) -> Mapping[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/json"}


async def send(
    http: HttpClient,
    method: str,
    url: str,
    token: str,
    timeout: float,  # noqa: ASYNC109 (passed on)
) -> HttpResponse:
    """One authorised JSON request; only the failure to get an answer raises."""
    return await http.request(method, url, headers=bearer_headers(token), timeout=timeout)


def report_cancelled(sink: ObservationSink, source: str, health: Health | None) -> None:
    """Say ``STOPPED`` on cancellation, unless the last report already said it was over."""
    if health not in (Health.FAILED, Health.STOPPED):
        sink.report(HealthReport(source, Health.STOPPED, anyio.current_time(), "cancelled"))


__all__ = [
    "Engine",
    "ask",
    "bearer_headers",
    "client_for",
    "first_then",
    "get_token",
    "report_cancelled",
    "send",
]
