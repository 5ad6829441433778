"""Centrifuge protocol v2 JSON framing and vocabulary, server side.

Pure functions: text in, commands out; dicts in, text out.  Strictness follows
``centrifugal/protocol`` ``decode.go``: commands separated by exactly one
newline, at most one trailing newline, every command a JSON object.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

MAX_ID = 2**32 - 1

# close codes (centrifuge disconnect.go)
CONNECTION_CLOSED = 3000
SHUTDOWN = 3001
NO_PONG = 3012
INVALID_TOKEN = 3500
BAD_REQUEST = 3501
STALE = 3502

CLOSE_REASONS: Mapping[int, str] = {
    CONNECTION_CLOSED: "connection closed",
    SHUTDOWN: "shutdown",
    3004: "internal server error",
    3005: "connection expired",
    3011: "force reconnect",
    NO_PONG: "no pong",
    INVALID_TOKEN: "invalid token",
    BAD_REQUEST: "bad request",
    STALE: "stale",
    3503: "force disconnect",
}

# error replies (centrifuge errors.go)
ERRORS: Mapping[int, str] = {
    100: "internal server error",
    101: "unauthorized",
    102: "unknown channel",
    103: "permission denied",
    104: "method not found",
    105: "already subscribed",
    106: "limit exceeded",
    107: "bad request",
    108: "not available",
    109: "token expired",
    110: "expired",
    111: "too many requests",
    112: "unrecoverable position",
}
TEMPORARY_ERRORS = frozenset({100, 111})

METHODS = frozenset(
    {
        "connect",
        "subscribe",
        "unsubscribe",
        "publish",
        "presence",
        "presence_stats",
        "history",
        "rpc",
        "send",
        "refresh",
        "sub_refresh",
    }
)


class FrameError(ValueError):
    """The frame breaks the wire format; the server answers with 3501."""


@attrs.frozen
class Command:
    id: int
    method: str | None
    """None for a command with no recognised method (counts as a pong when id is 0)."""
    body: Mapping[str, Any]


def decode_frame(text: str) -> list[Command]:
    """Split one text frame into commands, as strictly as the real server does."""
    lines = text.split("\n")
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()
    if any(line == "" for line in lines):
        raise FrameError("empty command in frame")
    return [_decode_command(line) for line in lines]


def _decode_command(line: str) -> Command:
    try:
        raw = json.loads(line)
    except ValueError as exc:
        raise FrameError(f"invalid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise FrameError("command is not a JSON object")
    cid = raw.get("id", 0)
    if isinstance(cid, bool) or not isinstance(cid, int) or not 0 <= cid <= MAX_ID:
        raise FrameError(f"bad command id {cid!r}")
    methods = [key for key in raw if key != "id"]
    known = [m for m in methods if m in METHODS and raw[m] is not None]
    if len(known) > 1:
        raise FrameError("more than one method in a command")
    if not known:
        return Command(cid, None, {})
    body = raw[known[0]]
    if not isinstance(body, dict):
        raise FrameError(f"{known[0]} body is not an object")
    return Command(cid, known[0], body)


def prune(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Drop zero values, as the server's JSON encoder does (never applied to ``data``)."""
    return {k: v for k, v in fields.items() if v not in (None, False, 0, "", [], {})}


def encode(objects: list[dict[str, Any]]) -> str:
    return "\n".join(json.dumps(o, separators=(",", ":")) for o in objects)


def reply(cid: int, method: str, result: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": cid, method: dict(result)}


def error_reply(cid: int, code: int) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": ERRORS[code]}
    if code in TEMPORARY_ERRORS:
        error["temporary"] = True
    return {"id": cid, "error": error}


def push_pub(channel: str, pub: Mapping[str, Any]) -> dict[str, Any]:
    return {"push": {"channel": channel, "pub": dict(pub)}}


def push_subscribe(channel: str, result: Mapping[str, Any]) -> dict[str, Any]:
    return {"push": {"channel": channel, "subscribe": dict(result)}}


def push_unsubscribe(channel: str, code: int, reason: str) -> dict[str, Any]:
    return {"push": {"channel": channel, "unsubscribe": {"code": code, "reason": reason}}}


PING: dict[str, Any] = {}
