"""Decoding server lines and encoding commands (Centrifuge v2 JSON)."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transports.centrifuge.errors import CentrifugeProtocolError
from transports.centrifuge.frames import (
    PONG,
    ConnectReply,
    DisconnectPush,
    ErrorReply,
    HistoryReply,
    OtherPush,
    OtherReply,
    Ping,
    Publication,
    PubPush,
    SubscribePush,
    SubscribeResult,
    UnsubscribePush,
    connect_command,
    decode_frame,
    decode_line,
    history_command,
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


@given(st.text())
def test_any_text_decodes_or_raises_the_protocol_error(text: str) -> None:
    try:
        messages = decode_frame(text)
    except CentrifugeProtocolError:
        return
    assert len(messages) == len(split_frame(text))


KEYS = ["id", "push", "connect", "history", "error", "subs", "pub", "channel", "offset", "epoch"]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from([*KEYS, "publications", "code", "ping", "data"]), inner)
    ),
    max_leaves=12,
)


@given(JSON)
def test_any_json_value_decodes_or_raises_the_protocol_error(value: object) -> None:
    try:
        line = json.dumps(value)
    except ValueError:
        return
    with contextlib.suppress(CentrifugeProtocolError):
        decode_line(line)


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
