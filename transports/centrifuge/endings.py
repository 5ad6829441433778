"""What errors, close codes and timeouts mean for a Centrifuge connection.

Kept out of the engine so it reads as entry points and dispatch.  Most of
them end the connection: the decisions here return an :class:`Ending`, and
the engine tears the connection down and reports it as a ``Reconnecting`` or
``Failed`` event.  A failed history read usually costs only its channel.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from orderfsm.errors import TransportError
from transports.centrifuge import codes
from transports.centrifuge.channels import Channel
from transports.centrifuge.codes import ClientCode, CloseAction, ErrorAction
from transports.centrifuge.errors import (
    CentrifugeProtocolError,
    Disconnected,
    InvalidToken,
    ReplyError,
)
from transports.centrifuge.events import Event, Failed, Reconnecting
from transports.centrifuge.frames import ErrorReply


@attrs.frozen
class Ending:
    """What to report for a connection that is over: ``reconnect`` says whether
    to try again, ``token_expired`` whether to refresh the token first."""

    code: int | None
    reason: str
    error: TransportError = attrs.field(eq=False)
    reconnect: bool = False
    token_expired: bool = False

    def failed(self, now: float) -> Failed:
        return Failed(now, self.code, self.reason, self.error)

    def reconnecting(self, now: float, delay: float) -> Reconnecting:
        return Reconnecting(
            now, self.code, self.reason, delay, now + delay, self.token_expired, self.error
        )


def token_expired(reply: ErrorReply) -> Ending:
    """The server wants a fresh token: reconnect with one."""
    error = ReplyError(reply.code, reply.message, temporary=reply.temporary)
    return Ending(reply.code, reply.message, error, reconnect=True, token_expired=True)


def connect_error(
    reply: ErrorReply, token_failures: int, token_refreshes: int
) -> tuple[Ending, int]:
    """After an error reply to connect the connection is unusable: retry or stop.

    ``token_failures`` counts the 109s (connect's and history's, see
    :func:`refused_token`) since the connection last caught up; it comes back
    updated.
    """
    code, message = reply.code, reply.message
    error: TransportError = ReplyError(code, message, temporary=reply.temporary)
    action = codes.error_action(code, reply.temporary)
    if action is ErrorAction.REFRESH_TOKEN:
        return refused_token(reply, token_failures, token_refreshes)
    if action is ErrorAction.RETRY:
        return Ending(code, message, error, reconnect=True), token_failures
    if code == codes.UNAUTHORIZED:
        error = InvalidToken(code, message)
    return Ending(code, message, error), token_failures


def refused_token(
    reply: ErrorReply, token_failures: int, token_refreshes: int
) -> tuple[Ending, int]:
    """A 109 "token expired", to connect or to a history read: reconnect with a fresh
    token, until ``token_refreshes`` of them in a row; past that a new token is not
    going to help, and the client stops.  In a row means since the connection last
    caught up, not since it last connected: a server that takes the token at
    connect and refuses it for history would otherwise have the client fetch a
    token and reconnect every second, for good."""
    token_failures += 1
    if token_failures <= token_refreshes:
        return token_expired(reply), token_failures
    refused = InvalidToken(reply.code, reply.message)
    return Ending(reply.code, reply.message, refused), token_failures


def history_error(
    ch: Channel,
    reply: ErrorReply,
    now: float,
    delay: Callable[[int], float],
    token_failures: int,
    token_refreshes: int,
) -> tuple[Ending | list[Event], int]:
    """An error reply to ``ch``'s history read: the connection ends only when the
    token has to be refreshed (:func:`refused_token`); otherwise the read is retried
    after ``delay`` (by the channel's failure count) or the channel gives up on
    recovering.  ``token_failures`` comes back updated, as from :func:`connect_error`."""
    action = codes.error_action(reply.code, reply.temporary)
    if action is ErrorAction.REFRESH_TOKEN:
        ending, token_failures = refused_token(reply, token_failures, token_refreshes)
        if not ending.reconnect:
            # Connect took this token: the project and the token are right, the server
            # will not serve history with it.  Not an InvalidToken, which tells the
            # tracker that a 404 from Get order means a wrong project id.
            refused = ReplyError(reply.code, reply.message, temporary=False)
            ending = attrs.evolve(ending, error=refused)
        return ending, token_failures
    if action is ErrorAction.RETRY:
        ch.retry_history(now + delay(ch.failures))
        return [], token_failures
    if reply.code == codes.UNRECOVERABLE_POSITION:
        return ch.on_unrecoverable(now), token_failures
    unavailable = f"history not available: {reply.code} {reply.message}"
    return ch.on_history_unavailable(unavailable, now), token_failures


def bad_protocol(exc: CentrifugeProtocolError) -> Ending:
    return Ending(ClientCode.BAD_PROTOCOL, str(exc), exc, reconnect=True)


def timed_out(
    deadline: float, connect_deadline: float | None, ping_deadline: float | None
) -> Ending:
    """``deadline`` passed; which one it was names the reason."""
    if deadline == connect_deadline:
        code, reason = ClientCode.TIMEOUT, "connect timeout"
    elif deadline == ping_deadline:
        code, reason = ClientCode.NO_PING, "no ping"
    else:
        code, reason = ClientCode.TIMEOUT, "history timeout"
    return Ending(code, reason, Disconnected(code, reason, reconnect=True), reconnect=True)


def restart(reason: str) -> Ending:
    """Reconnect on our own initiative; not a failure, so no backoff step."""
    code = ClientCode.RESTART
    return Ending(code, reason, Disconnected(code, reason, reconnect=True), reconnect=True)


def resubscribe(code: int, reason: str) -> Ending:
    """The server dropped a channel and asked for it again (code 2500 and up)."""
    said = f"the server asked to subscribe again: {reason}"
    return Ending(code, said, Disconnected(code, said, reconnect=True), reconnect=True)


def closed(code: int | None, reason: str) -> Ending:
    """A close code or a disconnect push: reconnect or stop, by the code table."""
    if codes.close_action(code) is CloseAction.STOP:
        error: TransportError = (
            InvalidToken(code, reason)
            if code == codes.INVALID_TOKEN
            else Disconnected(code, reason, reconnect=False)
        )
        return Ending(code, reason, error)
    expired = code in (codes.CONNECTION_EXPIRED, codes.STATE_INVALIDATED)
    error = Disconnected(code, reason, reconnect=True)
    return Ending(code, reason, error, reconnect=True, token_expired=expired)
