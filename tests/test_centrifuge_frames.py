"""Decoding server lines and encoding commands (Centrifuge v2 JSON)."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from support_hypothesis import json_values

from transports.centrifuge.errors import CentrifugeProtocolError
from transports.centrifuge.frames import (
    PONG,
    UINT32_MAX,
    UINT64_MAX,
    ConnectReply,
    ConnectResult,
    DisconnectPush,
    ErrorReply,
    HistoryReply,
    HistoryResult,
    OtherPush,
    OtherReply,
    Ping,
    Publication,
    PubPush,
    ServerMessage,
    SubscribePush,
    SubscribeResult,
    UnsubscribePush,
    connect_command,
    decode_frame,
    decode_line,
    history_command,
    publication_line,
    split_frame,
)
from transports.centrifuge.testing import (
    connect_reply,
    disconnect_push,
    error_reply,
    history_reply,
    message_push,
    pub_push,
    publication,
    sub_result,
    subscribe_push,
    unsubscribe_push,
)

# --- the dispatch rule ----------------------------------------------------------------


def test_empty_object_is_a_ping() -> None:
    assert decode_line("{}") == Ping()


def test_id_zero_and_unknown_fields_without_push_are_a_ping_too() -> None:
    # Dispatch rule: id > 0 -> reply, else push, else ping (centrifuge-js _dispatchReply).
    assert decode_line('{"id":0}') == Ping()
    assert decode_line('{"future_field":{"x":1}}') == Ping()


def test_positive_id_is_a_reply_even_when_a_push_is_present() -> None:
    msg = decode_line('{"id":3,"push":{"channel":"c","pub":{}}}')
    assert msg == OtherReply(3)


def test_error_reply_wins_over_a_result() -> None:
    msg = decode_line(
        '{"id":2,"error":{"code":100,"message":"internal","temporary":true},"history":{}}'
    )
    assert msg == ErrorReply(2, 100, "internal", temporary=True)


def test_error_reply_temporary_defaults_to_false() -> None:
    assert decode_line(error_reply(2, 103, "permission denied")) == ErrorReply(
        2, 103, "permission denied", temporary=False
    )


def test_connect_reply_with_server_side_subscriptions() -> None:
    line = connect_reply(
        1, client="abc", ping=25, pong=True, subs={"orders#42": sub_result(epoch="x", offset=20)}
    )
    msg = decode_line(line)
    assert isinstance(msg, ConnectReply)
    assert (msg.id, msg.result.client, msg.result.ping, msg.result.pong) == (1, "abc", 25, True)
    assert msg.result.subs == {
        "orders#42": SubscribeResult(recoverable=True, positioned=True, epoch="x", offset=20)
    }


def test_omitted_fields_take_their_zero_values() -> None:
    msg = decode_line('{"id":1,"connect":{"subs":{"c":{}}}}')
    assert isinstance(msg, ConnectReply)
    assert (msg.result.client, msg.result.ping, msg.result.pong) == ("", 0, False)
    assert msg.result.subs["c"] == SubscribeResult()


def test_null_fields_take_their_zero_values() -> None:
    msg = decode_line('{"id":1,"connect":{"client":null,"ping":null,"subs":null}}')
    assert isinstance(msg, ConnectReply)
    assert (msg.result.client, msg.result.ping, dict(msg.result.subs)) == ("", 0, {})


def test_history_reply_keeps_the_stream_top_apart_from_the_publications() -> None:
    line = history_reply(4, [publication(1, "new", offset=1)], epoch="e", offset=9)
    msg = decode_line(line)
    assert isinstance(msg, HistoryReply)
    assert msg.result.offset == 9
    assert msg.result.publications == (Publication(1, {"order_id": 1, "status": "new"}),)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (pub_push("c", publication(5, "paid", offset=7)), PubPush("c", Publication(7))),
        (subscribe_push("c", sub_result(epoch="e", offset=3)), None),
        (unsubscribe_push("c", 2000, "bye"), UnsubscribePush("c", 2000, "bye")),
        (disconnect_push(3001, "shutdown"), DisconnectPush(3001, "shutdown")),
        (message_push({"any": "json"}), OtherPush("", "message")),
        ('{"push":{"channel":"c","join":{"info":{}}}}', OtherPush("c", "join")),
        ('{"push":{"channel":"c","brand_new_kind":{}}}', OtherPush("c", "brand_new_kind")),
    ],
)
def test_pushes(line: str, expected: object) -> None:
    msg = decode_line(line)
    if expected is None:
        assert isinstance(msg, SubscribePush)
        assert (msg.channel, msg.result.epoch, msg.result.offset) == ("c", "e", 3)
    else:
        assert msg == expected


def test_a_batched_frame_splits_on_newlines_and_skips_blank_lines() -> None:
    frame = "{}\n\n" + pub_push("c", publication(1, "new", offset=1)) + "\n  \n{}\n"
    assert split_frame(frame) == ["{}", pub_push("c", publication(1, "new", offset=1)), "{}"]
    assert [type(m) for m in decode_frame(frame)] == [Ping, PubPush, Ping]


# --- hostile input: always CentrifugeProtocolError ------------------------------------

BAD_LINES = [
    "not json",
    '{"id":1,',  # truncated
    "[]",
    '"text"',
    "42",
    "null",
    '{"id":"1","connect":{}}',  # id must be an int
    '{"id":1.0,"connect":{}}',
    '{"id":-1}',
    '{"id":true}',
    '{"id":4294967296}',  # > uint32
    '{"id":1,"connect":{"ping":"25"}}',
    '{"id":1,"connect":{"pong":1}}',
    '{"id":1,"connect":{"subs":[]}}',
    '{"id":1,"connect":{"subs":{"c":5}}}',
    '{"id":1,"connect":{"subs":{"c":{"offset":-3}}}}',
    '{"id":1,"connect":{"subs":{"c":{"offset":18446744073709551616}}}}',  # > uint64
    '{"id":1,"connect":{"subs":{"c":{"epoch":7}}}}',
    '{"id":2,"history":{"publications":{}}}',
    '{"id":2,"history":{"publications":[1]}}',
    '{"id":2,"history":{"publications":[{"offset":1e3}]}}',
    '{"id":2,"error":"boom"}',
    '{"id":2,"error":{"code":"x"}}',
    '{"push":[]}',
    '{"push":{"channel":5,"pub":{}}}',
    '{"push":{"channel":"c","pub":{"offset":NaN}}}',
    '{"push":{"channel":"c","pub":{"offset":Infinity}}}',
    '{"push":{"channel":"c","pub":"x"}}',
    '{"push":{"disconnect":{"code":-1}}}',
    '{"id":' + "9" * 5000 + "}",  # beyond Python's int-parsing limit
    "[" * 100_000 + "]" * 100_000,  # nesting beyond the recursion limit
]


@pytest.mark.parametrize("line", BAD_LINES, ids=lambda s: s[:40])
def test_bad_lines_raise_a_typed_protocol_error(line: str) -> None:
    with pytest.raises(CentrifugeProtocolError) as info:
        decode_line(line)
    assert info.value.line == line[:200]


# --- properties: what a frame decodes to ---------------------------------------------

channels = st.text(max_size=8)
uint32 = st.integers(min_value=0, max_value=UINT32_MAX)
uint64 = st.integers(min_value=0, max_value=UINT64_MAX)
payloads = json_values(st.text(max_size=3), text_size=4, max_size=2, max_leaves=5)


@st.composite
def wire_publication(draw: st.DrawFn) -> tuple[dict[str, Any], Publication]:
    offset, data = draw(uint64), draw(payloads)
    wire = publication(offset=offset, data={"d": data})
    return wire, Publication(offset, {"d": data})


@st.composite
def wire_sub(draw: st.DrawFn) -> tuple[dict[str, Any], SubscribeResult]:
    pubs = draw(st.lists(wire_publication(), max_size=2))
    flags = draw(st.tuples(*[st.booleans()] * 4))
    epoch, offset = draw(st.text(max_size=6)), draw(uint64)
    wire = sub_result(
        epoch=epoch,
        offset=offset,
        recoverable=flags[0],
        positioned=flags[1],
        publications=[w for w, _ in pubs],
        recovered=flags[2],
        was_recovering=flags[3],
    )
    record = SubscribeResult(
        recoverable=flags[0],
        positioned=flags[1],
        epoch=epoch,
        offset=offset,
        publications=tuple(r for _, r in pubs),
        recovered=flags[2],
        was_recovering=flags[3],
    )
    return wire, record


@st.composite
def server_message(draw: st.DrawFn) -> tuple[str, ServerMessage]:
    """One line as a Centrifuge server writes it, and the record it means."""
    kind = draw(st.integers(0, 8))
    command_id = draw(
        st.integers(min_value=1, max_value=3) | st.integers(min_value=1, max_value=UINT32_MAX)
    )
    channel = draw(channels)
    if kind == 0:
        return "{}", Ping()
    if kind == 1:
        wire, pub = draw(wire_publication())
        return pub_push(channel, wire), PubPush(channel, pub)
    if kind == 2:
        client, ping, pong = draw(st.text(max_size=6)), draw(uint32), draw(st.booleans())
        subs = draw(st.dictionaries(channels, wire_sub(), max_size=2))
        line = connect_reply(
            command_id,
            client=client,
            ping=ping,
            pong=pong,
            subs={c: w for c, (w, _) in subs.items()},
        )
        result = ConnectResult(
            client, ping=ping, pong=pong, subs={c: r for c, (_, r) in subs.items()}
        )
        return line, ConnectReply(command_id, result)
    if kind == 3:
        pubs = draw(st.lists(wire_publication(), max_size=3))
        epoch, top = draw(st.text(max_size=6)), draw(uint64)
        line = history_reply(command_id, [w for w, _ in pubs], epoch=epoch, offset=top)
        return line, HistoryReply(command_id, HistoryResult(tuple(r for _, r in pubs), epoch, top))
    if kind == 4:
        code, message, temporary = draw(uint32), draw(st.text(max_size=6)), draw(st.booleans())
        line = error_reply(command_id, code, message, temporary=temporary)
        return line, ErrorReply(command_id, code, message, temporary)
    if kind == 5:
        wire, record = draw(wire_sub())
        return subscribe_push(channel, wire), SubscribePush(channel, record)
    if kind == 6:
        code, reason = draw(uint32), draw(st.text(max_size=6))
        return unsubscribe_push(channel, code, reason), UnsubscribePush(channel, code, reason)
    if kind == 7:
        code, reason = draw(uint32), draw(st.text(max_size=6))
        return disconnect_push(code, reason), DisconnectPush(code, reason)
    return message_push(draw(payloads)), OtherPush("", "message")


@st.composite
def bad_line(draw: st.DrawFn) -> str:
    """A line no server may send: a known bad one, or a good one cut short."""
    if draw(st.booleans()):
        return draw(st.sampled_from([b for b in BAD_LINES if len(b) < 1000]))
    line, _ = draw(server_message())
    return line[: draw(st.integers(1, len(line) - 1))] if len(line) > 2 else "{"


def fields(message: ServerMessage) -> tuple[str, dict[str, Any]]:
    """Every field, payloads included (``Publication.data`` is left out of ``==``)."""
    return type(message).__name__, attrs.asdict(message)


@settings(max_examples=300)
@given(
    st.lists(
        st.one_of(
            server_message(),
            st.sampled_from(["", " ", "\t", "  \t "]).map(lambda b: (b, None)),
        ),
        min_size=1,
        max_size=8,
    ),
    st.lists(bad_line(), max_size=1),
    st.data(),
)
def test_a_frame_decodes_to_what_each_line_says_or_names_its_first_bad_line(
    lines: list[tuple[str, ServerMessage | None]], bad: list[str], data: st.DataObject
) -> None:
    """A frame of server lines (blank ones between) decodes to one record per
    non-blank line, in order, each carrying every value the server sent; with a
    bad line in it, the error names that line.

    Breakages this catches: a frame cut at the wrong place (last line lost,
    blank lines not skipped), messages reordered, a field read from the wrong
    key or dropped, a dispatch that mistakes one kind for another.
    """
    if bad:
        lines.insert(data.draw(st.integers(0, len(lines))), (bad[0], None))
    frame = "\n".join(text for text, _ in lines)
    expected = [fields(m) for _, m in lines if m is not None]
    if not bad:
        assert [fields(m) for m in decode_frame(frame)] == expected
        return
    with pytest.raises(CentrifugeProtocolError) as info:
        decode_frame(frame)
    assert info.value.line == bad[0][:200]


ids = st.one_of(
    st.none(), st.just(0), st.just(1), uint32, uint32, st.integers(), st.text(max_size=2)
)
offsets = st.one_of(
    st.none(),
    uint64,
    uint64,
    uint64,
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=2),
)


def maybe(**members: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """An object with any subset of ``members``; one time in four not an object."""
    junk = st.none() | st.integers() | st.text(max_size=3) | st.lists(st.integers(), max_size=2)
    shaped = st.fixed_dictionaries({}, optional=members)
    return st.one_of(shaped, shaped, shaped, junk)


pushes = maybe(
    channel=st.one_of(st.none(), channels, st.integers()),
    pub=maybe(offset=offsets, data=payloads),
    subscribe=maybe(offset=offsets, epoch=st.none() | st.text(max_size=2) | st.integers()),
    disconnect=maybe(code=ids, reason=st.none() | st.text(max_size=2) | st.integers()),
    join=payloads,
)
members = {
    "id": ids,
    "push": pushes,
    "connect": maybe(ping=ids, client=st.text(max_size=2) | st.integers()),
    "history": maybe(offset=offsets, publications=st.lists(maybe(offset=offsets), max_size=2)),
    "error": maybe(code=ids, message=st.text(max_size=2) | st.integers()),
}
replies = st.fixed_dictionaries(
    {"id": uint32}, optional={k: v for k, v in members.items() if k != "id"}
)
publication_pushes = st.fixed_dictionaries(
    {
        "push": st.fixed_dictionaries(
            {
                "channel": channels,
                "pub": st.fixed_dictionaries({}, optional={"offset": offsets, "data": payloads}),
            }
        )
    },
    optional={"id": st.none() | st.just(0) | ids},
)
messages = st.one_of(
    replies,
    publication_pushes,
    st.fixed_dictionaries({"push": pushes}, optional={"id": ids}),
    st.fixed_dictionaries({}, optional=members),
)
"""Replies, publications, other pushes and anything else, about equally often."""


@settings(max_examples=500)
@given(messages)
def test_any_message_follows_the_dispatch_rule_or_raises_the_protocol_error(
    obj: dict[str, Any],
) -> None:
    """Whatever the server nests where, a line is a reply (``id`` > 0, with that
    id), else a push (an object under ``push``), else a ping, or a
    :class:`CentrifugeProtocolError` and nothing else; the fast path for
    publications reads the same channel, offset and data as the general one.

    Breakages this catches: a dispatch on the wrong key or bound (``id`` 0 read
    as a reply, a push with an id read as a push), the fast path disagreeing
    with the general decoder on any publication.
    """
    line = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    try:
        message = decode_line(line)
    except CentrifugeProtocolError:
        event("protocol error")
        assert publication_line(line) is None
        return
    event(type(message).__name__)
    msg_id = obj.get("id") or 0
    if msg_id > 0:
        assert isinstance(message, (ConnectReply, HistoryReply, ErrorReply, OtherReply))
        assert message.id == msg_id
    elif obj.get("push") is not None:
        assert isinstance(
            message, (PubPush, SubscribePush, UnsubscribePush, DisconnectPush, OtherPush)
        )
        if isinstance(message, PubPush):
            pub = obj["push"]["pub"]
            assert message.channel == (obj["push"].get("channel") or "")
            assert message.pub.offset == (pub.get("offset") or 0)
            assert message.pub.data == pub.get("data")
    else:
        assert message == Ping()
    fast = publication_line(line)
    if fast is not None:
        assert isinstance(message, PubPush)
        assert fast == (message.channel, message.pub.offset, message.pub.data)


# --- encoding -------------------------------------------------------------------------


def test_connect_command_is_compact_and_carries_xsolla_data_and_recovery_subs() -> None:
    text = connect_command(
        1,
        {"auth": "jwt", "project_id": 12345},
        subs={"orders#42": (20, "xyz")},
        name="orderfsm",
        version="",
    )
    assert " " not in text and "\n" not in text
    assert json.loads(text) == {
        "id": 1,
        "connect": {
            "data": {"auth": "jwt", "project_id": 12345},
            "subs": {"orders#42": {"recover": True, "offset": 20, "epoch": "xyz"}},
            "name": "orderfsm",
        },
    }


def test_history_command_reads_forward_with_an_explicit_limit() -> None:
    assert json.loads(history_command(4, "orders#42", since_offset=0, since_epoch="")) == {
        "id": 4,
        "history": {
            "channel": "orders#42",
            "limit": -1,
            "since": {"offset": 0, "epoch": ""},
            "reverse": False,
        },
    }


def test_pong_is_the_empty_object() -> None:
    assert PONG == "{}"
