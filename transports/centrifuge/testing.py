"""Server-side frames, built the way a Centrifuge server writes them, for tests.

Each builder returns one compact JSON line.  Zero values are omitted, as the
server omits them, so tests exercise the "absent means zero" parsing too.
``batch`` joins lines into one frame.  Shipped (not under ``tests/``) so the
emulator and the driver's tests can speak the same wire format.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def _line(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _drop_zero(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if v not in (0, "", False, None, [], {})}


def batch(*lines: str) -> str:
    """Several server messages in one WebSocket frame."""
    return "\n".join(lines)


def publication(
    order_id: object = None, status: object = None, *, offset: int = 0, data: object = None
) -> dict[str, Any]:
    """A ``Publication`` object; ``data`` overrides the ``{order_id, status}`` body."""
    body = data if data is not None else {"order_id": order_id, "status": status}
    return _drop_zero({"data": body, "offset": offset})


def sub_result(
    *,
    epoch: str = "",
    offset: int = 0,
    recoverable: bool = True,
    positioned: bool = True,
    publications: list[dict[str, Any]] | None = None,
    recovered: bool = False,
    was_recovering: bool = False,
) -> dict[str, Any]:
    return _drop_zero(
        {
            "recoverable": recoverable,
            "positioned": positioned,
            "epoch": epoch,
            "offset": offset,
            "publications": publications or [],
            "recovered": recovered,
            "was_recovering": was_recovering,
        }
    )


def connect_reply(
    command_id: int,
    *,
    client: str = "client-1",
    ping: int = 25,
    pong: bool = True,
    subs: Mapping[str, dict[str, Any]] | None = None,
) -> str:
    result = _drop_zero({"client": client, "ping": ping, "pong": pong, "subs": dict(subs or {})})
    return _line({"id": command_id, "connect": result})


def history_reply(
    command_id: int, publications: list[dict[str, Any]], *, epoch: str, offset: int
) -> str:
    """``offset`` is the stream top, as the server reports it."""
    result = _drop_zero({"publications": publications, "epoch": epoch, "offset": offset})
    return _line({"id": command_id, "history": result})


def error_reply(command_id: int, code: int, message: str = "", *, temporary: bool = False) -> str:
    error = _drop_zero({"code": code, "message": message, "temporary": temporary})
    return _line({"id": command_id, "error": error})


def pub_push(channel: str, pub: dict[str, Any]) -> str:
    return _line({"push": {"channel": channel, "pub": pub}})


def subscribe_push(channel: str, result: dict[str, Any]) -> str:
    return _line({"push": {"channel": channel, "subscribe": result}})


def unsubscribe_push(channel: str, code: int = 2000, reason: str = "server unsubscribe") -> str:
    return _line({"push": {"channel": channel, "unsubscribe": {"code": code, "reason": reason}}})


def disconnect_push(code: int, reason: str = "") -> str:
    return _line({"push": {"disconnect": _drop_zero({"code": code, "reason": reason})}})


def message_push(data: object) -> str:
    return _line({"push": {"message": {"data": data}}})


PING = "{}"


def commands(frames: list[str]) -> list[dict[str, Any]]:
    """The client's outgoing frames (from ``data_to_send``), decoded for assertions."""
    out: list[dict[str, Any]] = []
    for frame in frames:
        out += [json.loads(line) for line in frame.split("\n")]
    return out
