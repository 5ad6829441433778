"""Centrifuge protocol v2 JSON: server lines in, typed records out; commands out as text.

Decoding is strict about the fields the engine relies on (types, ranges) and
lenient about everything else: unknown fields and push kinds are ignored, and
absent or ``null`` fields take their zero value, because the server omits zero
values.  Anything that is not a JSON object, or has a wrongly typed field we
use, raises :class:`CentrifugeProtocolError` and nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from transports.centrifuge.errors import CentrifugeProtocolError

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1

PONG = "{}"
"""The empty command: the answer to a server ping, and nothing else."""
PING_LINE = "{}"
"""A server ping as it nearly always comes: the empty message, alone in its frame."""


# --- records ----------------------------------------------------------------


@attrs.frozen
class Publication:
    offset: int
    """0 when the stream is not positioned (the server omits zero offsets)."""
    data: Any = attrs.field(default=None, eq=False)


@attrs.frozen
class SubscribeResult:
    """A channel's state as the server reports it (``connect.subs[ch]`` or a subscribe push)."""

    recoverable: bool = False
    positioned: bool = False
    epoch: str = ""
    offset: int = 0
    publications: tuple[Publication, ...] = ()
    recovered: bool = False
    was_recovering: bool = False


@attrs.frozen
class ConnectResult:
    client: str = ""
    version: str = ""
    ping: int = 0
    pong: bool = False
    expires: bool = False
    ttl: int = 0
    subs: Mapping[str, SubscribeResult] = attrs.field(factory=dict)


@attrs.frozen
class HistoryResult:
    publications: tuple[Publication, ...] = ()
    epoch: str = ""
    offset: int = 0
    """The stream top when the server answered, not the last publication returned."""


@attrs.frozen
class Ping:
    """``{}`` (or any object with neither an id nor a push): the server pings."""


@attrs.frozen
class ErrorReply:
    id: int
    code: int
    message: str
    temporary: bool


@attrs.frozen
class ConnectReply:
    id: int
    result: ConnectResult


@attrs.frozen
class HistoryReply:
    id: int
    result: HistoryResult


@attrs.frozen
class OtherReply:
    """A successful reply without a result this client understands."""

    id: int


@attrs.frozen
class PubPush:
    channel: str
    pub: Publication


@attrs.frozen
class SubscribePush:
    channel: str
    result: SubscribeResult


@attrs.frozen
class UnsubscribePush:
    channel: str
    code: int
    reason: str


@attrs.frozen
class DisconnectPush:
    code: int
    reason: str


@attrs.frozen
class OtherPush:
    """join, leave, message, refresh, ... or a kind newer than this client."""

    channel: str
    kind: str


Reply = ErrorReply | ConnectReply | HistoryReply | OtherReply
Push = PubPush | SubscribePush | UnsubscribePush | DisconnectPush | OtherPush
ServerMessage = Ping | Reply | Push


# --- decoding -----------------------------------------------------------------


def split_frame(text: str) -> list[str]:
    """The non-blank lines of one WebSocket text frame (newline-delimited batch)."""
    return [line for line in text.split("\n") if line.strip()]


def decode_frame(text: str) -> list[ServerMessage]:
    """Every message of a frame, or :class:`CentrifugeProtocolError` for the first bad one."""
    return [decode_line(line) for line in split_frame(text)]


def decode_line(line: str) -> ServerMessage:
    """One server message, by the dispatch rule: ``id > 0`` reply, else push, else ping."""
    try:
        obj = _DECODER.decode(line)
    except CentrifugeProtocolError as exc:
        raise CentrifugeProtocolError(str(exc), line) from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int digit limit, nesting
        raise CentrifugeProtocolError(f"not JSON: {exc}", line) from None
    pub_push = _pub_push(obj)
    if pub_push is not None:
        return pub_push
    try:
        return _message(_object(obj, "message"))
    except CentrifugeProtocolError as exc:
        raise CentrifugeProtocolError(str(exc), line) from None


def publication_line(line: str) -> tuple[str, int, Any] | None:
    """``(channel, offset, data)`` if the line is a well-formed publication push.

    The line nearly every frame is, read with the fewest steps; ``None`` for
    anything else, including what is not JSON: :func:`decode_line` then reads
    it the general way and reaches the same message or the error.
    """
    if not line.startswith('{"push"'):
        return None  # replies and pings: not worth decoding twice
    try:
        # The decoder's C scanner, without the Python wrapper around it (two
        # regex matches and two frames): this line is on every status's path.
        obj, end = _SCAN(line, 0)
    except (CentrifugeProtocolError, ValueError, RecursionError, StopIteration):
        return None
    if end != len(line):
        return None
    return _publication_fields(obj)


def _pub_push(obj: object) -> PubPush | None:
    fields = _publication_fields(obj)
    return None if fields is None else PubPush(fields[0], Publication(fields[1], fields[2]))


def _publication_fields(obj: object) -> tuple[str, int, Any] | None:
    if type(obj) is not dict or obj.get("id") is not None:
        return None
    push = obj.get("push")
    if type(push) is not dict:
        return None
    channel, pub = push.get("channel"), push.get("pub")
    if type(channel) is not str or type(pub) is not dict:
        return None
    offset = pub.get("offset", 0)
    if type(offset) is not int or not 0 <= offset <= UINT64_MAX:
        return None
    return channel, offset, pub.get("data")


def _reject_constant(name: str) -> Any:
    raise CentrifugeProtocolError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
"""One decoder for every line: ``json.loads`` with a hook builds a new one per call."""
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


def _message(obj: Mapping[str, Any]) -> ServerMessage:
    msg_id = _uint(obj, "id", UINT32_MAX)
    if msg_id > 0:
        return _reply(msg_id, obj)
    push = _optional_object(obj, "push")
    if push is not None:
        return _push(push)
    return Ping()


def _reply(msg_id: int, obj: Mapping[str, Any]) -> Reply:
    error = _optional_object(obj, "error")
    if error is not None:
        return ErrorReply(
            msg_id,
            code=_uint(error, "code", UINT32_MAX),
            message=_str(error, "message"),
            temporary=_bool(error, "temporary"),
        )
    connect = _optional_object(obj, "connect")
    if connect is not None:
        return ConnectReply(msg_id, _connect_result(connect))
    history = _optional_object(obj, "history")
    if history is not None:
        return HistoryReply(msg_id, _history_result(history))
    return OtherReply(msg_id)


def _push(push: Mapping[str, Any]) -> Push:
    channel = _str(push, "channel")
    if (pub := _optional_object(push, "pub")) is not None:
        return PubPush(channel, _publication(pub))
    if (sub := _optional_object(push, "subscribe")) is not None:
        return SubscribePush(channel, _subscribe_result(sub))
    if (unsub := _optional_object(push, "unsubscribe")) is not None:
        return UnsubscribePush(channel, _uint(unsub, "code", UINT32_MAX), _str(unsub, "reason"))
    if (disc := _optional_object(push, "disconnect")) is not None:
        return DisconnectPush(_uint(disc, "code", UINT32_MAX), _str(disc, "reason"))
    kind = next((k for k, v in push.items() if k not in ("channel", "id") and v is not None), "")
    return OtherPush(channel, kind)


def _connect_result(obj: Mapping[str, Any]) -> ConnectResult:
    subs = _optional_object(obj, "subs") or {}
    return ConnectResult(
        client=_str(obj, "client"),
        version=_str(obj, "version"),
        ping=_uint(obj, "ping", UINT32_MAX),
        pong=_bool(obj, "pong"),
        expires=_bool(obj, "expires"),
        ttl=_uint(obj, "ttl", UINT32_MAX),
        subs={
            channel: _subscribe_result(_object(sub, f"subs[{channel!r}]"))
            for channel, sub in subs.items()
        },
    )


def _subscribe_result(obj: Mapping[str, Any]) -> SubscribeResult:
    return SubscribeResult(
        recoverable=_bool(obj, "recoverable"),
        positioned=_bool(obj, "positioned"),
        epoch=_str(obj, "epoch"),
        offset=_uint(obj, "offset", UINT64_MAX),
        publications=_publications(obj),
        recovered=_bool(obj, "recovered"),
        was_recovering=_bool(obj, "was_recovering"),
    )


def _history_result(obj: Mapping[str, Any]) -> HistoryResult:
    return HistoryResult(
        publications=_publications(obj),
        epoch=_str(obj, "epoch"),
        offset=_uint(obj, "offset", UINT64_MAX),
    )


def _publications(obj: Mapping[str, Any]) -> tuple[Publication, ...]:
    pubs = obj.get("publications")
    if pubs is None:
        return ()
    if not isinstance(pubs, list):
        raise CentrifugeProtocolError(f"publications must be a list, got {type(pubs).__name__}")
    return tuple(_publication(_object(p, "publication")) for p in pubs)


def _publication(obj: Mapping[str, Any]) -> Publication:
    return Publication(offset=_uint(obj, "offset", UINT64_MAX), data=obj.get("data"))


# --- field readers: absent or null means the zero value ------------------------


def _object(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise CentrifugeProtocolError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _optional_object(obj: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = obj.get(key)
    return None if value is None else _object(value, key)


def _uint(obj: Mapping[str, Any], key: str, maximum: int) -> int:
    value = obj.get(key)
    if value is None:
        return 0
    if type(value) is not int or not 0 <= value <= maximum:
        raise CentrifugeProtocolError(f"{key} must be an integer in [0, {maximum}], got {value!r}")
    return value


def _str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CentrifugeProtocolError(f"{key} must be a string, got {type(value).__name__}")
    return value


def _bool(obj: Mapping[str, Any], key: str) -> bool:
    value = obj.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise CentrifugeProtocolError(f"{key} must be a boolean, got {type(value).__name__}")
    return value


# --- encoding -------------------------------------------------------------------


def encode(command: Mapping[str, Any]) -> str:
    """Compact JSON, one command per frame; the server rejects pretty-printed batches."""
    return json.dumps(command, separators=(",", ":"), allow_nan=False)


def connect_command(
    command_id: int,
    data: Mapping[str, Any],
    *,
    subs: Mapping[str, tuple[int, str]],
    name: str,
    version: str,
) -> str:
    """``connect`` with recovery: ``subs`` maps channel -> (offset, epoch) to recover from."""
    body: dict[str, Any] = {"data": dict(data)}
    if subs:
        body["subs"] = {
            channel: {"recover": True, "offset": offset, "epoch": epoch}
            for channel, (offset, epoch) in subs.items()
        }
    if name:
        body["name"] = name
    if version:
        body["version"] = version
    return encode({"id": command_id, "connect": body})


def history_command(
    command_id: int, channel: str, *, since_offset: int, since_epoch: str, limit: int = -1
) -> str:
    """Forward ``history`` after (exclusive) ``since``; ``limit=-1``: all, up to the server cap."""
    since = {"offset": since_offset, "epoch": since_epoch}
    return encode(
        {
            "id": command_id,
            "history": {"channel": channel, "limit": limit, "since": since, "reverse": False},
        }
    )
