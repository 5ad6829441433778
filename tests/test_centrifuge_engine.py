"""The engine's connection rules: connect, dispatch, ping/pong, deadlines, errors, close codes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orderfsm.core import Observation, Position, Status
from orderfsm.errors import ConnectionLost, ProtocolError, TokenRejected
from transports.centrifuge import (
    DEFAULT_ENDPOINT,
    CaughtUp,
    CentrifugeEngine,
    CentrifugeProtocolError,
    ConfigError,
    Connected,
    Disconnected,
    EngineConfig,
    EngineMisuse,
    Event,
    Failed,
    Ignored,
    InvalidToken,
    OrderPublication,
    Reconnecting,
    ReplyError,
    State,
)
from transports.centrifuge.codes import ClientCode
from transports.centrifuge.testing import (
    PING,
    batch,
    commands,
    connect_reply,
    disconnect_push,
    error_reply,
    message_push,
    pub_push,
    publication,
)

CONFIG = EngineConfig(project_id=12345)


def engine(config: EngineConfig = CONFIG, sample: float = 0.0) -> CentrifugeEngine:
    return CentrifugeEngine(config, random=lambda: sample)


def connected(ping: int = 25, pong: bool = True, now: float = 0.0) -> CentrifugeEngine:
    e = engine()
    e.connect(now, "jwt")
    e.receive(connect_reply(1, ping=ping, pong=pong), now)
    return e


def only(events: list[Event], kind: type) -> list[Event]:
    return [e for e in events if isinstance(e, kind)]


# --- connect --------------------------------------------------------------------------


def test_connect_sends_xsolla_auth_and_project_in_data() -> None:
    cmd = json.loads(engine().connect(0.0, "user-jwt"))
    assert cmd["id"] == 1
    assert cmd["connect"]["data"] == {"auth": "user-jwt", "project_id": 12345}
    assert "subs" not in cmd["connect"] and "token" not in cmd["connect"]


def test_connect_adds_user_external_id_when_given() -> None:
    e = engine(EngineConfig(project_id=7, user_external_id="u-1"))
    data = json.loads(e.connect(0.0, "t"))["connect"]["data"]
    assert data == {"auth": "t", "project_id": 7, "user_external_id": "u-1"}


def test_default_endpoint_is_xsollas() -> None:
    assert CONFIG.endpoint == DEFAULT_ENDPOINT == "wss://ws-store.xsolla.com/connection/websocket"


def test_connected_event_then_caught_up_when_there_is_nothing_to_sync() -> None:
    e = engine()
    e.connect(0.0, "jwt")
    events = e.receive(connect_reply(1, client="abc", ping=25, pong=True), 0.5)
    assert events == [Connected(0.5, "abc", "", 25, True, ()), CaughtUp(0.5)]
    assert e.state is State.CONNECTED and e.caught_up


def test_connect_twice_or_after_failure_is_misuse() -> None:
    e = engine()
    e.connect(0.0, "jwt")
    with pytest.raises(EngineMisuse):
        e.connect(0.0, "jwt")
    e.receive(error_reply(1, 103, "permission denied"), 0.0)
    assert e.state is State.FAILED
    with pytest.raises(EngineMisuse):
        e.connect(1.0, "jwt")


def test_a_token_must_be_a_string() -> None:
    with pytest.raises(EngineMisuse):
        engine().connect(0.0, None)  # type: ignore[arg-type]


def test_command_ids_are_positive_and_increase_across_reconnects() -> None:
    e = engine()
    ids = [json.loads(e.connect(0.0, "jwt"))["id"]]
    e.connection_lost(1006, "", 1.0)
    ids.append(json.loads(e.connect(2.0, "jwt"))["id"])
    e.receive(connect_reply(ids[-1], subs={"a": {}, "b": {}}), 2.0)
    ids += [c["id"] for c in commands(e.data_to_send())]
    assert len(ids) == 4
    assert all(i > 0 for i in ids) and ids == sorted(set(ids))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"project_id": 0},
        {"project_id": "1"},
        {"project_id": 1, "min_reconnect_delay": 0},
        {"project_id": 1, "min_reconnect_delay": 30.0},
        {"project_id": 1, "max_server_ping_delay": -1},
        {"project_id": 1, "connect_timeout": float("nan")},
        {"project_id": 1, "request_timeout": float("inf")},
        {"project_id": 1, "token_refreshes": -1},
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        EngineConfig(**kwargs)  # type: ignore[arg-type]


# --- dispatch and pongs ---------------------------------------------------------------


def test_exactly_one_pong_per_ping_when_the_server_asked() -> None:
    e = connected(pong=True)
    assert e.data_to_send() == []  # never unsolicited
    assert e.receive(PING, 1.0) == []
    assert e.data_to_send() == ["{}"]
    e.receive(batch(PING, PING), 2.0)
    assert e.data_to_send() == ["{}", "{}"]
    assert e.data_to_send() == []


def test_no_pong_when_the_server_did_not_ask() -> None:
    e = connected(pong=False)
    e.receive(PING, 1.0)
    assert e.data_to_send() == []


def test_no_pong_for_a_ping_before_the_connect_reply() -> None:
    e = engine()
    e.connect(0.0, "jwt")
    e.receive(PING, 0.1)
    e.receive(connect_reply(1, pong=True), 0.2)
    assert e.data_to_send() == []


def test_pongs_owed_to_a_lost_connection_are_never_sent_on_the_next() -> None:
    e = connected()
    e.receive(PING, 1.0)
    e.connection_lost(1006, "", 1.1)
    assert e.data_to_send() == []
    e.connect(2.0, "jwt")
    e.receive(connect_reply(2), 2.1)
    assert e.data_to_send() == []


def test_one_frame_mixing_a_reply_pushes_and_a_ping() -> None:
    e = engine()
    e.connect(0.0, "jwt")
    frame = batch(connect_reply(1, subs={"c": {"recoverable": True}}), PING, message_push({"x": 1}))
    events = e.receive(frame, 0.0)
    assert [type(x).__name__ for x in events] == ["Connected", "Subscribed", "Ignored"]
    assert [c for c in commands(e.data_to_send())][1] == {}  # history first, then the pong


def test_message_push_is_ignored_safely() -> None:
    e = connected()
    events = e.receive(message_push({"anything": [1, 2]}), 1.0)
    assert events == [Ignored(1.0, "message push")]
    assert e.data_to_send() == [] and e.state is State.CONNECTED


def test_reply_to_an_unknown_id_is_ignored() -> None:
    e = connected()
    events = e.receive('{"id":99,"history":{}}', 1.0)
    assert only(events, Ignored) and e.state is State.CONNECTED


def test_a_status_on_a_channel_we_were_not_told_of_is_still_news() -> None:
    """Xsolla's channel names are undocumented and its SDKs match on order_id alone:
    a status pushed on a channel missing from the connect reply is delivered (before,
    it was ignored and the order waited for polling), without a position to resume."""
    e = connected()
    events = e.receive(pub_push("nobody", publication(1, "done", offset=1)), 1.0)
    assert events == [OrderPublication(1.0, "nobody", 1, "", 1, Status.DONE, "push")]
    assert "nobody" not in e.positions()
    other = e.receive('{"push":{"channel":"nobody","join":{"info":{}}}}', 2.0)
    assert only(other, Ignored)


@pytest.mark.parametrize(("given", "read"), [("12", 12), ("9223372036854775807", 2**63 - 1)])
def test_an_order_id_sent_as_its_digits_is_read(given: str, read: int) -> None:
    """Get order's answer may carry the id as a string of digits; a publication that
    does is read the same (before, it was ignored)."""
    e = connected()
    events = e.receive(pub_push("c", publication(data={"order_id": given, "status": "paid"})), 1.0)
    assert [(x.order_id, x.status) for x in events if isinstance(x, OrderPublication)] == [
        (read, Status.PAID)
    ]


@pytest.mark.parametrize("given", ["²", "0", "-1", "1.5", "1" * 5000, "9223372036854775808", True])
def test_what_is_not_an_order_id_is_ignored_not_raised(given: object) -> None:
    e = connected()
    events = e.receive(pub_push("c", publication(data={"order_id": given, "status": "paid"})), 1.0)
    assert only(events, Ignored) == events != [] and e.state is State.CONNECTED


def test_order_publication_becomes_an_observation() -> None:
    e = engine()
    e.connect(0.0, "jwt")
    e.receive(connect_reply(1, subs={"c": {"epoch": "e"}}), 0.0)
    e.receive(error_reply(2, 108, "not available"), 0.0)  # no history: go live
    [pub] = e.receive(pub_push("c", publication(42, "done", offset=5)), 3.0)
    assert isinstance(pub, OrderPublication)
    assert pub.observation == Observation(
        42, Status.DONE, source="websocket", at=3.0, position=Position(offset=5, epoch="e")
    )


@pytest.mark.parametrize(
    "data",
    [
        {"order_id": 1, "status": "refunded"},
        {"order_id": "²", "status": "done"},
        {"order_id": -4, "status": "done"},
        {"order_id": True, "status": "done"},
        {"status": "done"},
        {"order_id": 1, "status": ["done"]},
        "a string",
        [1, 2],
    ],
)
def test_a_bad_order_body_is_ignored_and_still_moves_the_position(data: object) -> None:
    e = engine()
    e.connect(0.0, "jwt")
    e.receive(connect_reply(1, subs={"c": {"epoch": "e"}}), 0.0)
    e.receive(error_reply(2, 108), 0.0)
    events = e.receive(pub_push("c", publication(offset=1, data=data)), 1.0)
    assert [type(x) for x in events] == [Ignored]
    assert e.positions() == {"c": (1, "e")} and e.state is State.CONNECTED


# --- protocol errors ------------------------------------------------------------------


def test_garbage_ends_the_connection_with_a_typed_error_and_a_reconnect() -> None:
    e = connected()
    events = e.receive(batch(PING, '{"push": nope'), 1.0)
    [end] = events
    assert isinstance(end, Reconnecting) and end.code == ClientCode.BAD_PROTOCOL
    assert isinstance(end.error, CentrifugeProtocolError) and isinstance(end.error, ProtocolError)
    assert e.data_to_send() == []  # the pong for the ping before it died with the connection
    assert e.receive(PING, 1.1) == [] and e.connection_lost(1000, "", 1.2) == []


def test_bytes_are_read_as_utf8_and_invalid_utf8_is_a_protocol_error() -> None:
    e = connected()
    assert e.receive(b"{}", 1.0) == [] and e.data_to_send() == ["{}"]
    [end] = e.receive(b"\xff{}", 2.0)
    assert isinstance(end, Reconnecting) and isinstance(end.error, CentrifugeProtocolError)


# --- dead connection and timeouts -----------------------------------------------------


@pytest.mark.parametrize("sample", [0.0, 0.5, 1.0])
def test_a_restart_reconnects_within_a_stable_connections_jitter(sample: float) -> None:
    """A host awake after a sleep restarts every socket at once: each comes back within
    the jitter of a stable connection's first reconnect, not all in one tick."""
    e = engine(sample=sample)
    e.connect(0.0, "jwt")
    e.receive(connect_reply(1), 0.0)
    [end] = e.restart("the host slept", 5.0)
    assert isinstance(end, Reconnecting) and end.code == ClientCode.RESTART
    assert end.delay == sample * CONFIG.first_reconnect_delay


def test_dead_connection_deadline_is_last_data_plus_ping_plus_slack() -> None:
    e = connected(ping=25, now=100.0)
    assert e.next_deadline() == 100.0 + 25 + 10
    e.receive(message_push(1), 110.0)  # any data re-arms it
    assert e.next_deadline() == 145.0
    assert e.handle_timer(144.9) == []
    [end] = e.handle_timer(145.0)
    assert isinstance(end, Reconnecting) and end.code == ClientCode.NO_PING
    assert isinstance(end.error, ConnectionLost)
    assert e.next_deadline() is None


def test_no_dead_connection_check_without_server_pings_or_with_zero_slack() -> None:
    assert connected(ping=0).next_deadline() is None
    e = engine(EngineConfig(project_id=1, max_server_ping_delay=0))
    e.connect(0.0, "jwt")
    e.receive(connect_reply(1, ping=25), 0.0)
    assert e.next_deadline() is None


def test_a_late_timer_gets_a_grace_period_for_queued_frames() -> None:
    e = connected(ping=25, now=0.0)
    assert e.handle_timer(300.0) == []  # 265 s late: the process was probably suspended
    assert e.next_deadline() == 301.0
    e.receive(PING, 300.2)  # the queued ping arrives: alive after all
    assert e.handle_timer(301.0) == []
    assert e.next_deadline() == 300.2 + 35


def test_the_grace_period_is_given_once() -> None:
    e = connected(ping=25, now=0.0)
    assert e.handle_timer(300.0) == []
    assert e.handle_timer(300.5) == []
    [end] = e.handle_timer(301.0)
    assert isinstance(end, Reconnecting) and end.code == ClientCode.NO_PING


def test_a_timer_on_time_gets_no_grace() -> None:
    e = connected(ping=25, now=0.0)
    [end] = e.handle_timer(35.5)
    assert isinstance(end, Reconnecting)


def test_connect_timeout() -> None:
    e = engine(EngineConfig(project_id=1, connect_timeout=5.0))
    e.connect(10.0, "jwt")
    assert e.next_deadline() == 15.0
    [end] = e.handle_timer(15.0)
    assert isinstance(end, Reconnecting) and end.reason == "connect timeout"


# --- error replies to connect ---------------------------------------------------------


def test_temporary_connect_error_reconnects() -> None:
    e = engine()
    e.connect(0.0, "jwt")
    [end] = e.receive(error_reply(1, 100, "internal server error", temporary=True), 1.0)
    assert isinstance(end, Reconnecting) and not end.token_expired
    assert isinstance(end.error, ReplyError) and end.error.code == 100


def test_token_expired_asks_for_a_refresh_then_gives_up() -> None:
    e = engine()
    e.connect(0.0, "old")
    [first] = e.receive(error_reply(1, 109, "token expired"), 1.0)
    assert isinstance(first, Reconnecting) and first.token_expired
    e.connect(2.0, "still-old")
    [second] = e.receive(error_reply(2, 109, "token expired"), 3.0)
    assert isinstance(second, Failed) and isinstance(second.error, InvalidToken)
    assert isinstance(second.error, TokenRejected)


def test_a_successful_connect_resets_the_token_refresh_count() -> None:
    e = engine()
    for i in range(3):
        e.connect(float(i), "jwt")
        e.receive(error_reply(2 * i + 1, 109), float(i))
        e.connect(float(i), "fresh")
        e.receive(connect_reply(2 * i + 2), float(i))
        assert e.connection_lost(3001, "shutdown", float(i))


@pytest.mark.parametrize(("code", "error_type"), [(101, InvalidToken), (103, ReplyError)])
def test_permanent_connect_errors_fail(code: int, error_type: type) -> None:
    e = engine()
    e.connect(0.0, "jwt")
    [end] = e.receive(error_reply(1, code), 1.0)
    assert isinstance(end, Failed) and isinstance(end.error, error_type)
    assert e.next_deadline() is None and e.receive(PING, 2.0) == []


# --- close codes ----------------------------------------------------------------------


@pytest.mark.parametrize("code", [None, 1000, 1006, 3000, 3001, 3012, 4000, 4499, 5000])
def test_reconnectable_close_codes(code: int | None) -> None:
    e = connected()
    [end] = e.connection_lost(code, "bye", 1.0)
    assert isinstance(end, Reconnecting) and end.code == code
    assert isinstance(end.error, Disconnected) and end.error.reconnect
    assert e.state is State.DISCONNECTED


@pytest.mark.parametrize("code", [1009, 3501, 3502, 3999, 4500, 4999])
def test_terminal_close_codes(code: int) -> None:
    e = connected()
    [end] = e.connection_lost(code, "bye", 1.0)
    assert isinstance(end, Failed) and isinstance(end.error, Disconnected)
    assert not end.error.reconnect and e.state is State.FAILED


def test_invalid_token_close_fails_with_token_rejected() -> None:
    e = connected()
    [end] = e.connection_lost(3500, "invalid token", 1.0)
    assert isinstance(end, Failed) and isinstance(end.error, InvalidToken)


def test_connection_expired_reconnects_with_a_fresh_token() -> None:
    [end] = connected().connection_lost(3005, "connection expired", 1.0)
    assert isinstance(end, Reconnecting) and end.token_expired


@pytest.mark.parametrize(("code", "kind"), [(3001, Reconnecting), (3500, Failed), (3501, Failed)])
def test_disconnect_push_is_handled_like_a_close(code: int, kind: type) -> None:
    e = connected()
    events = e.receive(batch(disconnect_push(code, "x"), PING), 1.0)
    assert [type(x) for x in events] == [kind]
    assert e.data_to_send() == []  # nothing after the disconnect is processed


def test_socket_that_never_opened_counts_as_a_lost_connection() -> None:
    e = engine()
    e.connect(0.0, "jwt")
    [end] = e.connection_lost(None, "connection refused", 0.2)
    assert isinstance(end, Reconnecting)


# --- backoff --------------------------------------------------------------------------


def test_backoff_grows_while_attempts_fail_and_resets_after_a_connect() -> None:
    e = engine(sample=1.0)
    delays = []
    for i in range(4):
        e.connect(float(i), "jwt")
        [end] = e.connection_lost(1006, "", float(i))
        assert isinstance(end, Reconnecting)
        assert end.reconnect_at == end.at + end.delay
        delays.append(end.delay)
    assert delays == [1.0, 1.5, 2.5, 4.5]
    e.connect(10.0, "jwt")
    e.receive(connect_reply(5), 10.0)
    [end] = e.connection_lost(3001, "shutdown", 10.5)  # up for less than stable_after
    assert isinstance(end, Reconnecting) and end.delay == 2 * CONFIG.first_reconnect_delay


def test_a_connection_that_was_up_a_while_reconnects_at_once_then_backs_off() -> None:
    """A working socket that drops is most likely a passing fault, and news waits
    for it: the first try is within ``first_reconnect_delay``; a failing one backs off."""
    e = engine(sample=1.0)
    e.connect(0.0, "jwt")
    e.receive(connect_reply(1), 0.0)
    [end] = e.connection_lost(1006, "", CONFIG.stable_after)
    assert isinstance(end, Reconnecting) and end.delay == CONFIG.first_reconnect_delay == 0.1
    e.connect(end.reconnect_at, "jwt")
    [again] = e.connection_lost(1006, "", end.reconnect_at + 0.01)  # the retry failed
    assert isinstance(again, Reconnecting) and again.delay >= CONFIG.min_reconnect_delay


def test_server_advised_reconnect_still_waits() -> None:
    """centrifuge-js #408: a disconnect push during connect made a zero-delay loop."""
    e = engine()
    e.connect(0.0, "jwt")
    [end] = e.receive(disconnect_push(3011, "force reconnect"), 0.5)
    assert isinstance(end, Reconnecting) and end.delay >= CONFIG.min_reconnect_delay
    e = connected()  # caught up, but for less than stable_after
    [end] = e.receive(disconnect_push(3011, "force reconnect"), CONFIG.stable_after / 2)
    assert isinstance(end, Reconnecting) and end.delay >= CONFIG.first_reconnect_delay > 0


def test_connections_lost_soon_after_catching_up_back_off_until_one_stays() -> None:
    """An accept-then-drop server meets doubling waits, never below the first
    reconnect delay; a connection that then stays up earns the quick retry again."""
    e = engine(sample=1.0)
    delays, now = [], 0.0
    for k in range(5):
        e.connect(now, "jwt")
        e.receive(connect_reply(k + 1), now)
        [end] = e.connection_lost(3001, "shutdown", now + 0.2)
        assert isinstance(end, Reconnecting)
        delays.append(round(end.delay, 9))
        now = end.reconnect_at
    base = CONFIG.first_reconnect_delay
    assert delays == [round(base * (1 + 2**k), 9) for k in range(5)]  # 0.2, 0.3, 0.5, 0.9, 1.7
    e.connect(now, "jwt")
    e.receive(connect_reply(6), now)
    [end] = e.connection_lost(1006, "", now + CONFIG.stable_after)
    assert isinstance(end, Reconnecting) and end.delay == base
    e.connect(end.reconnect_at, "jwt")
    e.receive(connect_reply(7), end.reconnect_at)
    [end] = e.connection_lost(1006, "", end.reconnect_at + 0.1)  # the count started over
    assert isinstance(end, Reconnecting) and end.delay == 2 * base


def test_close_stops_everything() -> None:
    e = connected()
    e.receive(PING, 1.0)
    e.close()
    assert e.state is State.CLOSED
    assert e.data_to_send() == [] and e.next_deadline() is None
    assert e.receive(PING, 2.0) == [] and e.connection_lost(1006, "", 2.0) == []
    with pytest.raises(EngineMisuse):
        e.connect(3.0, "jwt")


@given(
    up_for=st.floats(min_value=0.0, max_value=5.0),
    caught_up=st.booleans(),
    sample=st.floats(min_value=0.0, max_value=1.0),
)
def test_only_a_connection_that_stayed_up_is_retried_at_once(
    up_for: float, caught_up: bool, sample: float
) -> None:
    """Whatever the server does, a socket that never caught up waits the full
    backoff, and one that did but not for ``stable_after`` waits at least the first
    reconnect delay: no fast loop."""
    e = engine(sample=sample)
    e.connect(0.0, "jwt")
    if caught_up:
        e.receive(connect_reply(1), 0.0)
    [end] = e.connection_lost(1006, "", up_for)
    assert isinstance(end, Reconnecting)
    if caught_up and up_for >= CONFIG.stable_after:
        assert end.delay <= CONFIG.first_reconnect_delay
    elif caught_up:
        assert CONFIG.first_reconnect_delay <= end.delay <= 2 * CONFIG.first_reconnect_delay
    else:
        assert end.delay >= CONFIG.min_reconnect_delay


# --- what the events say (found by the mutation run) ----------------------------------


@pytest.mark.parametrize(
    ("line", "reason", "channel"),
    [
        ('{"push":{"channel":"c"}}', "empty push", "c"),
        ('{"push":{"subscribe":{}}}', "subscribe push for unknown channel", ""),
        (
            '{"push":{"channel":"nobody","unsubscribe":{}}}',
            "unsubscribe push for unknown channel",
            "nobody",
        ),
    ],
)
def test_ignored_pushes_say_what_they_were(line: str, reason: str, channel: str) -> None:
    assert connected().receive(line, 1.0) == [Ignored(1.0, reason, channel)]


def test_a_terminal_close_fails_at_the_moment_it_came() -> None:
    e = connected()
    [end] = e.connection_lost(3500, "invalid token", 7.0)
    assert isinstance(end, Failed)
    assert (end.at, end.code, end.reason) == (7.0, 3500, "invalid token")


def test_a_random_source_out_of_range_is_clamped_not_fatal() -> None:
    for sample, delay in ((7.0, 1.0), (-3.0, 0.5)):  # full jitter at the top / at the bottom
        e = engine(sample=sample)
        e.connect(0.0, "jwt")  # never connected, so the ordinary backoff applies
        [end] = e.connection_lost(1006, "", 0.5)
        assert isinstance(end, Reconnecting) and end.delay == delay


def test_a_fresh_engine_is_not_caught_up_and_misuse_says_why() -> None:
    e = engine()
    assert not e.caught_up and e.next_deadline() is None
    with pytest.raises(EngineMisuse, match="token must be a str, got int"):
        e.connect(0.0, 5)  # type: ignore[arg-type]
    e.connect(0.0, "jwt")
    with pytest.raises(EngineMisuse, match="connect\\(\\) while connecting"):
        e.connect(0.0, "jwt")


def test_the_connect_command_names_the_client() -> None:
    e = engine(EngineConfig(project_id=1, client_name="shop", client_version="2.1"))
    [cmd] = commands([e.connect(0.0, "jwt")])
    assert (cmd["connect"]["name"], cmd["connect"]["version"]) == ("shop", "2.1")


def test_a_blank_frame_is_nothing() -> None:
    e = connected()
    assert e.receive("  \t ", 1.0) == [] and e.state is State.CONNECTED


def test_a_small_ping_slack_still_arms_the_dead_connection_timer() -> None:
    e = engine(EngineConfig(project_id=1, max_server_ping_delay=0.5))
    e.connect(0.0, "jwt")
    e.receive(connect_reply(1, ping=25), 2.0)
    assert e.next_deadline() == 2.0 + 25 + 0.5


def test_a_reply_to_an_unknown_command_is_ignored_and_says_so() -> None:
    e = connected()
    assert e.receive(error_reply(99, 100, "internal"), 3.0) == [
        Ignored(3.0, "reply to unknown or abandoned command 99")
    ]


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ('{{"id":{connect}}}', "connect reply without a result"),
        ('{{"id":{history}}}', "history reply without a result"),
    ],
)
def test_a_reply_without_its_result_is_a_protocol_error(reply: str, message: str) -> None:
    e = engine()
    [cmd] = commands([e.connect(0.0, "jwt")])
    if "history" in message:
        e.receive(connect_reply(cmd["id"], subs={"c": {}}), 1.0)
        [history] = [c for c in commands(e.data_to_send()) if "history" in c]
        line = reply.format(history=history["id"])
    else:
        line = reply.format(connect=cmd["id"])
    [end] = e.receive(line, 2.0)
    assert isinstance(end, Reconnecting) and end.at == 2.0
    assert isinstance(end.error, CentrifugeProtocolError) and message in str(end.error)


def test_a_reconnect_that_drops_a_channel_still_says_it_connected() -> None:
    e = engine()
    e.connect(0.0, "jwt")
    e.receive(connect_reply(1, subs={"a": {}, "b": {}}), 0.0)
    e.connection_lost(1006, "", 1.0)
    [cmd] = commands([e.connect(2.0, "jwt")])
    events = e.receive(connect_reply(cmd["id"], subs={"b": {"epoch": "e"}}), 3.0)
    kinds = [type(x).__name__ for x in events]
    assert kinds[0] == "Connected" and "Unsubscribed" in kinds and "Subscribed" in kinds
