"""Channel positions: history on subscribe, dedup, recovery on reconnect, gaps and epochs."""

from __future__ import annotations

from typing import Any

import pytest

from orderfsm.core import Status
from orderfsm.errors import TokenRejected
from transports.centrifuge import (
    CaughtUp,
    CentrifugeEngine,
    EngineConfig,
    Event,
    Failed,
    Gap,
    Ignored,
    OrderPublication,
    Reconnecting,
    State,
    Subscribed,
    Unsubscribed,
)
from transports.centrifuge.channels import order_event
from transports.centrifuge.errors import InvalidToken, ReplyError
from transports.centrifuge.testing import (
    batch,
    commands,
    connect_reply,
    disconnect_push,
    error_reply,
    history_reply,
    pub_push,
    publication,
    sub_result,
    subscribe_push,
    unsubscribe_push,
)

CH = "orders#42"


def pub(offset: int, status: str = "paid", order_id: int = 7) -> dict[str, Any]:
    return publication(order_id, status, offset=offset)


def delivered(events: list[Event]) -> list[tuple[int, str, str]]:
    """(offset, status, via) of every order publication, in order."""
    return [(e.offset, e.status.value, e.via) for e in events if isinstance(e, OrderPublication)]


def gaps(events: list[Event]) -> list[str]:
    return [e.reason for e in events if isinstance(e, Gap)]


class Session:
    """An engine plus what it sent, for readable tests."""

    def __init__(self) -> None:
        self.engine = CentrifugeEngine(EngineConfig(project_id=1), random=lambda: 0.0)
        self.now = 0.0
        self.connect_id = 0

    def connect(self, **reply: Any) -> list[Event]:
        self.connect_id = self.connect_command()["id"]
        return self.receive(connect_reply(self.connect_id, **reply))

    def connect_command(self) -> dict[str, Any]:
        [cmd] = commands([self.engine.connect(self.now, "jwt")])
        return cmd

    def receive(self, text: str) -> list[Event]:
        self.now += 1.0
        return self.engine.receive(text, self.now)

    def sent(self) -> list[dict[str, Any]]:
        return commands(self.engine.data_to_send())

    def history_request(self) -> dict[str, Any]:
        [cmd] = [c for c in self.sent() if "history" in c]
        return cmd

    def lose(self, code: int = 1006) -> None:
        self.now += 1.0
        [end] = self.engine.connection_lost(code, "", self.now)
        assert isinstance(end, Reconnecting)

    def live(self, epoch: str = "e", offset: int = 0) -> None:
        """Connected with CH live at ``offset`` (history read and empty)."""
        self.connect(subs={CH: sub_result(epoch=epoch, offset=offset)})
        req = self.history_request()
        self.receive(history_reply(req["id"], [], epoch=epoch, offset=offset))
        assert self.engine.caught_up and self.engine.positions() == {CH: (offset, epoch)}


# --- history on subscribed ------------------------------------------------------------


def test_subscribed_fetches_all_history_since_zero() -> None:
    s = Session()
    events = s.connect(subs={CH: sub_result(epoch="e", offset=2)})
    assert Subscribed(s.now, CH, "e", 2, False) in events
    assert not s.engine.caught_up
    req = s.history_request()
    assert req["history"] == {
        "channel": CH,
        "limit": -1,
        "since": {"offset": 0, "epoch": ""},
        "reverse": False,
    }
    events = s.receive(history_reply(req["id"], [pub(1, "new"), pub(2)], epoch="e", offset=2))
    assert delivered(events) == [(1, "new", "history"), (2, "paid", "history")]
    assert events[-1] == CaughtUp(s.now)
    assert s.engine.positions() == {CH: (2, "e")}


def test_live_publications_wait_for_history_and_come_once_in_order() -> None:
    s = Session()
    s.connect(subs={CH: sub_result(epoch="e", offset=2)})
    req = s.history_request()
    assert s.receive(pub_push(CH, pub(3, "done"))) == []  # held until history is read
    assert s.receive(pub_push(CH, pub(4, "done"))) == []
    history = history_reply(req["id"], [pub(1, "new"), pub(2), pub(3, "done")], epoch="e", offset=3)
    events = s.receive(history)
    assert delivered(events) == [
        (1, "new", "history"),
        (2, "paid", "history"),
        (3, "done", "history"),
        (4, "done", "push"),
    ]
    assert not gaps(events) and isinstance(events[-1], CaughtUp)


def test_history_duplicates_of_delivered_offsets_are_dropped() -> None:
    s = Session()
    s.live(offset=0)
    s.receive(pub_push(CH, pub(1, "new")))
    s.receive(pub_push(CH, pub(2, "paid")))
    s.receive(subscribe_push(CH, sub_result(epoch="e", offset=3)))  # the server re-subscribes us
    req = s.history_request()
    assert req["history"]["since"] == {"offset": 2, "epoch": "e"}
    events = s.receive(history_reply(req["id"], [pub(2), pub(3, "done")], epoch="e", offset=3))
    assert delivered(events) == [(3, "done", "history")]


def test_a_capped_history_page_is_followed_by_the_next_one() -> None:
    s = Session()
    s.connect(subs={CH: sub_result(epoch="e", offset=5)})
    first = s.history_request()
    # The reply's offset is the stream top (5), not the last item (3): read on.
    events = s.receive(history_reply(first["id"], [pub(1), pub(2), pub(3)], epoch="e", offset=5))
    assert [o for o, *_ in delivered(events)] == [1, 2, 3] and not s.engine.caught_up
    second = s.history_request()
    assert second["history"]["since"] == {"offset": 3, "epoch": "e"}
    events = s.receive(history_reply(second["id"], [pub(4), pub(5)], epoch="e", offset=5))
    assert [o for o, *_ in delivered(events)] == [4, 5] and s.engine.caught_up


def test_expired_history_of_a_fresh_channel_is_not_a_gap() -> None:
    s = Session()
    s.connect(subs={CH: sub_result(epoch="e", offset=9)})
    req = s.history_request()
    events = s.receive(history_reply(req["id"], [pub(8), pub(9)], epoch="e", offset=9))
    assert not gaps(events) and s.engine.caught_up


def test_history_not_available_is_a_gap_then_live() -> None:
    s = Session()
    s.connect(subs={CH: sub_result(epoch="e", offset=2)})
    req = s.history_request()
    s.receive(pub_push(CH, pub(3, "done")))
    events = s.receive(error_reply(req["id"], 108, "not available"))
    assert gaps(events) == ["history not available: 108 not available"]
    assert delivered(events) == [(3, "done", "push")] and isinstance(events[-1], CaughtUp)


def test_temporary_history_error_is_retried_after_a_delay() -> None:
    s = Session()
    s.connect(subs={CH: sub_result(epoch="e")})
    req = s.history_request()
    assert s.receive(error_reply(req["id"], 111, "too many requests", temporary=True)) == []
    retry_at = s.engine.next_deadline()
    assert retry_at is not None and retry_at == s.now + 0.5
    assert s.engine.handle_timer(retry_at - 0.01) == [] and s.sent() == []
    s.engine.handle_timer(retry_at)
    assert s.history_request()["id"] > req["id"]


def test_history_timeout_reconnects() -> None:
    s = Session()
    s.connect(subs={CH: sub_result(epoch="e")})
    s.history_request()
    deadline = s.engine.next_deadline()
    assert deadline == s.now + 10.0  # before the ping deadline (25 + 10)
    [end] = s.engine.handle_timer(deadline)
    assert isinstance(end, Reconnecting) and end.reason == "history timeout"


def test_history_token_expired_reconnects_with_a_refresh() -> None:
    s = Session()
    s.connect(subs={CH: sub_result(epoch="e")})
    [end] = s.receive(error_reply(s.history_request()["id"], 109, "token expired"))
    assert isinstance(end, Reconnecting) and end.token_expired


def test_a_server_that_refuses_every_history_read_for_the_token_is_given_up_on() -> None:
    """Connect accepted, every history read answered 109: a fresh token each time, and
    the count of refusals reset by every accepted connect, had the client fetch a token
    and reconnect every second, for good.  Refusals count until the connection catches
    up: after ``token_refreshes`` (1) the WebSocket stops, and the order falls back on
    polling."""
    s = Session()
    s.connect(subs={CH: sub_result(epoch="e")})
    [first] = s.receive(error_reply(s.history_request()["id"], 109, "token expired"))
    assert isinstance(first, Reconnecting) and first.token_expired
    s.connect(subs={CH: sub_result(epoch="e")})
    [second] = s.receive(error_reply(s.history_request()["id"], 109, "token expired"))
    assert isinstance(second, Failed) and isinstance(second.error, ReplyError)
    # Connect took the token: not a token rejection, which would tell the tracker that a
    # 404 from Get order means a wrong project id and stop the order.
    assert not isinstance(second.error, TokenRejected) and second.error.code == 109


def test_a_connect_refusal_after_a_history_refusal_is_a_rejected_token() -> None:
    """Refused for history, then at connect with the fresh token: two in a row, the last
    at connect, where a refusal is the token's (``InvalidToken``)."""
    s = Session()
    s.connect(subs={CH: sub_result(epoch="e")})
    [first] = s.receive(error_reply(s.history_request()["id"], 109, "token expired"))
    assert isinstance(first, Reconnecting) and first.token_expired
    s.connect_id = s.connect_command()["id"]
    [second] = s.receive(error_reply(s.connect_id, 109, "token expired"))
    assert isinstance(second, Failed) and isinstance(second.error, InvalidToken)


def test_a_history_refusal_once_caught_up_is_refreshed_again() -> None:
    """The refusals are in a row: a connection that caught up in between proved the
    token, so a token that expires later is refreshed, not taken for a bad one."""
    s = Session()
    for _ in range(3):
        s.live()
        s.receive(subscribe_push(CH, sub_result(epoch="e", offset=2)))
        [end] = s.receive(error_reply(s.history_request()["id"], 109, "token expired"))
        assert isinstance(end, Reconnecting) and end.token_expired


def test_error_112_resets_and_rereads_from_the_start() -> None:
    s = Session()
    s.live(offset=4)
    s.receive(subscribe_push(CH, sub_result(epoch="e", offset=6)))
    req = s.history_request()
    assert req["history"]["since"] == {"offset": 4, "epoch": "e"}
    events = s.receive(error_reply(req["id"], 112, "unrecoverable position"))
    assert gaps(events) == ["unrecoverable position (112)"]
    again = s.history_request()
    assert again["history"]["since"] == {"offset": 0, "epoch": ""}
    events = s.receive(history_reply(again["id"], [pub(1, "done")], epoch="f", offset=1))
    assert delivered(events) == [(1, "done", "history")]
    assert s.engine.positions() == {CH: (1, "f")}


# --- recovery on reconnect ------------------------------------------------------------


def test_reconnect_asks_to_recover_each_recoverable_channel_from_its_position() -> None:
    s = Session()
    s.connect(subs={CH: sub_result(epoch="e", offset=0), "plain": sub_result(recoverable=False)})
    for req in s.sent():
        s.receive(
            history_reply(
                req["id"], [], epoch="e" if req["history"]["channel"] == CH else "", offset=0
            )
        )
    s.receive(pub_push(CH, pub(1, "new")))
    s.lose()
    cmd = s.connect_command()
    assert cmd["connect"]["subs"] == {CH: {"recover": True, "offset": 1, "epoch": "e"}}


def test_recovered_publications_come_in_order_before_later_pushes() -> None:
    s = Session()
    s.live(offset=20)
    s.lose()
    s.connect_id = s.connect_command()["id"]
    recovered = sub_result(epoch="e", offset=20, recovered=True, was_recovering=True,
                           publications=[pub(21, "paid"), pub(22, "done")])  # fmt: skip
    frame = batch(
        connect_reply(s.connect_id, subs={CH: recovered}), pub_push(CH, pub(23, "canceled"))
    )
    events = s.receive(frame)
    assert delivered(events) == [
        (21, "paid", "recovery"),
        (22, "done", "recovery"),
        (23, "canceled", "push"),
    ]
    assert s.sent() == []  # recovered: no history read needed
    assert s.engine.caught_up and not gaps(events)


def test_recovery_reply_offset_is_the_requested_one_and_must_not_move_us_back() -> None:
    s = Session()
    s.live(offset=20)
    s.lose()
    s.connect_id = s.connect_command()["id"]
    # The server reports offset 20 (what we asked for), not the stream top 22.
    recovered = sub_result(epoch="e", offset=20, recovered=True, was_recovering=True,
                           publications=[pub(21), pub(22)])  # fmt: skip
    s.receive(connect_reply(s.connect_id, subs={CH: recovered}))
    assert s.engine.positions() == {CH: (22, "e")}
    s.lose()
    assert s.connect_command()["connect"]["subs"][CH]["offset"] == 22


def test_failed_recovery_reads_history_from_the_position() -> None:
    s = Session()
    s.live(offset=20)
    s.lose()
    s.connect_id = s.connect_command()["id"]
    failed = sub_result(epoch="e", offset=25, recovered=False, was_recovering=True)
    s.receive(connect_reply(s.connect_id, subs={CH: failed}))
    req = s.history_request()
    assert req["history"]["since"] == {"offset": 20, "epoch": "e"}
    events = s.receive(
        history_reply(req["id"], [pub(o) for o in range(21, 26)], epoch="e", offset=25)
    )
    assert [o for o, *_ in delivered(events)] == [21, 22, 23, 24, 25]
    assert not gaps(events) and s.engine.caught_up


def test_failed_recovery_with_history_no_longer_reaching_back_is_a_gap() -> None:
    s = Session()
    s.live(offset=20)
    s.lose()
    s.connect_id = s.connect_command()["id"]
    failed = sub_result(epoch="e", offset=90, recovered=False, was_recovering=True)
    s.receive(connect_reply(s.connect_id, subs={CH: failed}))
    req = s.history_request()
    events = s.receive(history_reply(req["id"], [pub(89), pub(90)], epoch="e", offset=90))
    assert gaps(events) == ["offset 89 follows 20"]
    assert [o for o, *_ in delivered(events)] == [89, 90]


def test_failed_recovery_with_empty_history_is_a_gap() -> None:
    s = Session()
    s.live(offset=20)
    s.lose()
    s.connect_id = s.connect_command()["id"]
    failed = sub_result(epoch="e", offset=90, recovered=False, was_recovering=True)
    s.receive(connect_reply(s.connect_id, subs={CH: failed}))
    events = s.receive(history_reply(s.history_request()["id"], [], epoch="e", offset=90))
    assert gaps(events) == ["history ends at 20, stream top is 90"]
    assert s.engine.positions() == {CH: (90, "e")}


def test_epoch_change_on_reconnect_resets_and_rereads_everything() -> None:
    s = Session()
    s.live(epoch="old", offset=20)
    s.lose()
    s.connect_id = s.connect_command()["id"]
    events = s.receive(connect_reply(s.connect_id, subs={CH: sub_result(epoch="new", offset=2)}))
    assert gaps(events) == ["epoch changed to 'new'"]
    req = s.history_request()
    assert req["history"]["since"] == {"offset": 0, "epoch": ""}
    events = s.receive(history_reply(req["id"], [pub(1, "new"), pub(2)], epoch="new", offset=2))
    assert [o for o, *_ in delivered(events)] == [1, 2]
    assert s.engine.positions() == {CH: (2, "new")}


def test_publications_held_by_a_lost_connection_are_read_again_not_lost() -> None:
    s = Session()
    s.live(offset=2)
    s.receive(subscribe_push(CH, sub_result(epoch="e", offset=2)))
    s.history_request()
    s.receive(pub_push(CH, pub(3, "done")))  # held while syncing
    s.lose()
    assert s.engine.positions() == {CH: (2, "e")}  # not advanced past what was delivered
    s.connect_id = s.connect_command()["id"]
    recovered = sub_result(epoch="e", offset=2, recovered=True, was_recovering=True,
                           publications=[pub(3, "done")])  # fmt: skip
    events = s.receive(connect_reply(s.connect_id, subs={CH: recovered}))
    assert delivered(events) == [(3, "done", "recovery")]


# --- live stream ----------------------------------------------------------------------


def test_duplicate_live_publications_are_dropped() -> None:
    s = Session()
    s.live(offset=0)
    events = [*s.receive(pub_push(CH, pub(1))), *s.receive(pub_push(CH, pub(1)))]
    assert [o for o, *_ in delivered(events)] == [1]


def test_a_live_publication_skipping_ahead_reads_the_hole_from_history() -> None:
    s = Session()
    s.live(offset=5)
    assert s.receive(pub_push(CH, pub(8, "done"))) == []
    req = s.history_request()
    assert req["history"]["since"] == {"offset": 5, "epoch": "e"}
    events = s.receive(
        history_reply(req["id"], [pub(6, "new"), pub(7), pub(8, "done")], epoch="e", offset=8)
    )
    assert [o for o, *_ in delivered(events)] == [6, 7, 8] and not gaps(events)


def test_unpositioned_publications_are_delivered_without_dedup() -> None:
    s = Session()
    s.live(epoch="", offset=0)
    events = [
        *s.receive(pub_push(CH, publication(7, "paid"))),
        *s.receive(pub_push(CH, publication(7, "paid"))),
    ]
    assert [(o, st) for o, st, _ in delivered(events)] == [(0, "paid"), (0, "paid")]


# --- subscriptions coming and going ---------------------------------------------------


def test_unsubscribe_push_drops_the_channel() -> None:
    s = Session()
    s.live(offset=3)
    events = s.receive(unsubscribe_push(CH, 2000, "server unsubscribe"))
    assert events == [Unsubscribed(s.now, CH, 2000, "server unsubscribe")]
    assert s.engine.positions() == {}
    # A status pushed on it after all is still news, and no position is kept for it.
    assert [e.offset for e in s.receive(pub_push(CH, pub(4))) if isinstance(e, OrderPublication)]
    assert s.engine.positions() == {}
    s.lose()
    assert "subs" not in s.connect_command()["connect"]


def test_a_channel_dropped_with_a_resubscribe_code_is_subscribed_again_by_reconnecting() -> None:
    """Code 2500 and up: only a new connection subscribes a server-side channel again.
    The engine ends the connection itself, through the reconnect delays (never at
    once: a server asking on every connection would make a fast loop)."""
    s = Session()
    s.live(offset=3)
    events = s.receive(unsubscribe_push(CH, 2500, "insufficient state"))
    assert events[0] == Unsubscribed(s.now, CH, 2500, "insufficient state")
    [end] = events[1:]
    assert isinstance(end, Reconnecting) and end.code == 2500
    s.live(offset=3)  # the new connection's reply names the channel again
    # Asked again as soon as it caught up: a connection lost soon, so not at once.
    events = s.engine.receive(unsubscribe_push(CH, 2500, "insufficient state"), s.now)
    assert isinstance(events[-1], Reconnecting)
    assert events[-1].delay >= s.engine.config.first_reconnect_delay > 0


def test_subscribe_push_at_runtime_adds_a_channel_and_reads_its_history() -> None:
    s = Session()
    s.connect()
    assert s.engine.caught_up
    events = s.receive(subscribe_push("orders#7", sub_result(epoch="z", offset=1)))
    assert events == [Subscribed(s.now, "orders#7", "z", 1, False)]
    assert not s.engine.caught_up
    req = s.history_request()
    events = s.receive(history_reply(req["id"], [pub(1, "done")], epoch="z", offset=1))
    assert delivered(events) == [(1, "done", "history")] and isinstance(events[-1], CaughtUp)


def test_a_channel_missing_from_the_new_connect_reply_is_gone() -> None:
    s = Session()
    s.live(offset=3)
    s.lose()
    s.connect_id = s.connect_command()["id"]
    events = s.receive(connect_reply(s.connect_id, subs={}))
    assert Unsubscribed(s.now, CH, 0, "not in the connect reply", restated=True) in events
    assert s.engine.positions() == {}


def test_state_invalidated_drops_positions_and_reports_gaps() -> None:
    s = Session()
    s.live(offset=3)
    events = s.receive(disconnect_push(3014, "state invalidated"))
    assert gaps(events) == ["state invalidated (3014)"]
    [end] = [e for e in events if isinstance(e, Reconnecting)]
    assert end.token_expired and s.engine.positions() == {}
    assert s.engine.state is State.DISCONNECTED


@pytest.mark.parametrize("status", ["new", "paid", "done", "canceled", "expired"])
def test_every_known_status_is_parsed(status: str) -> None:
    s = Session()
    s.live(offset=0)
    [event] = s.receive(pub_push(CH, pub(1, status)))
    assert isinstance(event, OrderPublication) and event.status is Status(status)


# --- when an epoch change is a gap, and what a gap says (found by the mutation run) ---


def published(events: list[Event]) -> list[tuple[int, float]]:
    return [(e.offset, e.at) for e in events if isinstance(e, OrderPublication)]


def test_a_new_epoch_before_any_position_is_not_a_gap_nor_is_its_first_offset() -> None:
    """Nothing was delivered or held: nothing can have been lost, and history of
    the new epoch that starts at 3 is a start, not a hole (no spurious Get order)."""
    s = Session()
    s.connect(subs={CH: sub_result(epoch="a")})
    req = s.history_request()
    events = s.receive(history_reply(req["id"], [pub(3), pub(4, "done")], epoch="b", offset=4))
    assert gaps(events) == [] and delivered(events) == [
        (3, "paid", "history"),
        (4, "done", "history"),
    ]
    assert s.engine.positions() == {CH: (4, "b")}


def test_a_new_epoch_drops_what_was_held_and_says_so() -> None:
    s = Session()
    s.connect(subs={CH: sub_result(epoch="a")})
    req = s.history_request()
    s.receive(pub_push(CH, pub(1)))  # held while history is read
    events = s.receive(history_reply(req["id"], [], epoch="b", offset=0))
    assert [e for e in events if isinstance(e, Gap)] == [Gap(s.now, CH, "epoch changed to 'b'")]
    assert delivered(events) == []


def test_a_new_epoch_after_live_offsets_without_history_is_a_gap() -> None:
    """History was unavailable, so the channel went live unpositioned; offset 1
    delivered since is still a position that a new epoch loses."""
    s = Session()
    s.connect(subs={CH: sub_result(epoch="a")})
    req = s.history_request()
    unavailable = s.receive(error_reply(req["id"], 108, "not available"))
    assert [e for e in unavailable if isinstance(e, Gap)] == [
        Gap(s.now, CH, "history not available: 108 not available")
    ]
    ping_deadline = s.engine.next_deadline()
    assert ping_deadline == s.now + 25 + 10  # no history request left pending
    assert delivered(s.receive(pub_push(CH, pub(1)))) == [(1, "paid", "push")]
    events = s.receive(subscribe_push(CH, sub_result(epoch="b", offset=1)))
    assert [e for e in events if isinstance(e, Gap)] == [Gap(s.now, CH, "epoch changed to 'b'")]


def test_history_unavailable_releases_what_was_held_at_that_moment() -> None:
    s = Session()
    s.connect(subs={CH: sub_result(epoch="a", offset=2)})
    req = s.history_request()
    s.receive(pub_push(CH, pub(3, "done")))
    events = s.receive(error_reply(req["id"], 108, "not available"))
    assert published(events) == [(3, s.now)]


def test_after_112_the_new_epoch_starts_unpositioned() -> None:
    """The 112 is the one gap: the re-read history of the new epoch, starting at
    3, is neither an epoch-change gap nor a hole."""
    s = Session()
    s.live(offset=4)
    s.receive(subscribe_push(CH, sub_result(epoch="e", offset=6)))
    events = s.receive(error_reply(s.history_request()["id"], 112, "unrecoverable position"))
    assert [e for e in events if isinstance(e, Gap)] == [
        Gap(s.now, CH, "unrecoverable position (112)")
    ]
    again = s.history_request()
    events = s.receive(history_reply(again["id"], [pub(3), pub(4)], epoch="f", offset=4))
    assert gaps(events) == [] and delivered(events) == [
        (3, "paid", "history"),
        (4, "paid", "history"),
    ]


def test_temporary_history_errors_back_off_by_the_channels_failure_count() -> None:
    """Full jitter with the sample at its top: 0.5 + 0.5 * 2**failures, reset by a
    good page (random=0.0, as elsewhere in this file, would hide the count)."""
    s = Session()
    s.engine = CentrifugeEngine(EngineConfig(project_id=1), random=lambda: 1.0)
    s.connect(subs={CH: sub_result(epoch="e", offset=1)})
    waits = []
    for _ in range(4):
        req = s.history_request()
        s.receive(error_reply(req["id"], 111, "too many requests", temporary=True))
        retry_at = s.engine.next_deadline()
        assert retry_at is not None
        waits.append(retry_at - s.now)
        s.now = retry_at
        s.engine.handle_timer(retry_at)
    assert waits == [1.0, 1.5, 2.5, 4.5]
    req = s.history_request()
    s.receive(history_reply(req["id"], [pub(1)], epoch="e", offset=1))
    s.receive(subscribe_push(CH, sub_result(epoch="e", offset=3)))  # read again from 1
    s.receive(error_reply(s.history_request()["id"], 111, "too many", temporary=True))
    assert s.engine.next_deadline() == s.now + 1.0


# --- the next deadline, and what ends and drops carry (found by the mutation run) ------

CH2 = "orders#43"


def history_request_of(sent: list[dict[str, Any]], channel: str) -> dict[str, Any]:
    [cmd] = [c for c in sent if c.get("history", {}).get("channel") == channel]
    return cmd


def test_the_next_deadline_is_the_earliest_pending_one() -> None:
    # a ping deadline earlier than the history timeout wins
    s = Session()
    s.engine = CentrifugeEngine(EngineConfig(project_id=1, request_timeout=30.0), random=float)
    s.connect(ping=1, subs={CH: sub_result(epoch="e")})
    assert s.engine.next_deadline() == s.now + 1 + 10
    # without pings, the history timeout is the only one
    s = Session()
    s.connect(ping=0, subs={CH: sub_result(epoch="e")})
    assert s.engine.next_deadline() == s.now + 10.0
    # a retry later than the ping deadline waits for it
    s = Session()
    config = EngineConfig(project_id=1, min_reconnect_delay=20.0, max_reconnect_delay=20.0)
    s.engine = CentrifugeEngine(config, random=lambda: 0.0)
    s.connect(ping=1, subs={CH: sub_result(epoch="e")})
    s.receive(error_reply(s.history_request()["id"], 111, "busy", temporary=True))
    assert s.engine.next_deadline() == s.now + 1 + 10


def test_one_channel_retrying_beside_one_that_is_not() -> None:
    s = Session()
    s.connect(subs={CH: sub_result(epoch="e"), CH2: sub_result(epoch="f")})
    sent = s.sent()
    first, second = history_request_of(sent, CH), history_request_of(sent, CH2)
    s.receive(error_reply(first["id"], 111, "busy", temporary=True))
    retry_at = s.now + 0.5
    s.receive(history_reply(second["id"], [], epoch="f", offset=0))
    assert s.engine.next_deadline() == retry_at


def test_dropping_a_syncing_channel_keeps_the_others_requests_and_its_held_news() -> None:
    s = Session()
    s.connect(subs={CH: sub_result(epoch="e", offset=2), CH2: sub_result(epoch="f", offset=1)})
    other = history_request_of(s.sent(), CH2)
    s.receive(pub_push(CH, pub(3, "done")))  # held: CH is reading its history
    events = s.receive(unsubscribe_push(CH, 2000, "server unsubscribe"))
    assert published(events) == [(3, s.now)]
    events = s.receive(history_reply(other["id"], [pub(1, order_id=8)], epoch="f", offset=1))
    assert delivered(events) == [(1, "paid", "history")]


def test_an_end_keeps_the_reason_it_was_given() -> None:
    s = Session()
    s.live(offset=3)
    s.now += 1.0
    [end] = s.engine.connection_lost(1006, "going away", s.now)
    assert isinstance(end, Reconnecting) and (end.code, end.reason) == (1006, "going away")
    s.connect_id = s.connect_command()["id"]
    s.receive(connect_reply(s.connect_id, subs={CH: sub_result(epoch="e", offset=3)}))
    events = s.receive(disconnect_push(3014, "state invalidated"))
    assert [e for e in events if isinstance(e, Gap)] == [Gap(s.now, CH, "state invalidated (3014)")]
    [end] = [e for e in events if isinstance(e, Reconnecting)]
    assert (end.code, end.reason) == (3014, "state invalidated")


# --- holes, positions and what a publication carries (found by the mutation run) ------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("not an object", "publication is not an object"),
        ({"order_id": 0, "status": "paid"}, "publication has no positive integer order_id"),
        ({"order_id": "7.0", "status": "paid"}, "publication has no positive integer order_id"),
        ({"order_id": 7, "status": "refunded"}, "unknown status 'refunded'"),
        ({"order_id": 7}, "unknown status None"),
    ],
)
def test_a_publication_that_is_not_an_order_status_is_ignored_with_everything_known(
    data: Any, reason: str
) -> None:
    ignored = order_event(CH, 5, data, "e", "push", 9.0)
    assert ignored == Ignored(9.0, reason, CH, 5)
    assert isinstance(ignored, Ignored) and ignored.data == data


def test_an_order_publication_keeps_the_raw_data() -> None:
    data = {"order_id": 7, "status": "paid", "extra": [1]}
    event = order_event(CH, 5, data, "e", "history", 9.0)
    assert isinstance(event, OrderPublication) and event.data == data
    assert (event.at, event.channel, event.offset, event.epoch, event.via) == (
        9.0,
        CH,
        5,
        "e",
        "history",
    )


def test_a_hole_after_offset_1_delivered_without_a_position_is_read_from_history() -> None:
    s = Session()
    s.connect(subs={CH: sub_result(epoch="e")})
    s.receive(error_reply(s.history_request()["id"], 108, "not available"))
    assert delivered(s.receive(pub_push(CH, pub(1)))) == [(1, "paid", "push")]
    assert delivered(s.receive(pub_push(CH, pub(3)))) == []  # held: 2 is missing
    assert s.history_request()["history"]["since"] == {"offset": 1, "epoch": "e"}


def test_a_hole_of_one_offset_is_read_from_history() -> None:
    s = Session()
    s.live(offset=2)
    assert delivered(s.receive(pub_push(CH, pub(4)))) == []
    assert s.history_request()["history"]["since"] == {"offset": 2, "epoch": "e"}


def test_an_empty_stream_is_a_position_after_history_and_after_recovery() -> None:
    """Offset 0 read to the top (or recovered) is a position: 2 before 1 is a hole."""
    s = Session()
    s.live(offset=0)
    assert delivered(s.receive(pub_push(CH, pub(2)))) == []
    assert s.history_request()["history"]["since"] == {"offset": 0, "epoch": ""}

    s = Session()
    s.live(offset=0)
    s.lose()
    s.connect_id = s.connect_command()["id"]
    recovered = sub_result(epoch="e", offset=0, recovered=True, was_recovering=True)
    events = s.receive(connect_reply(s.connect_id, subs={CH: recovered}))
    assert Subscribed(s.now, CH, "e", 0, True) in events
    assert delivered(s.receive(pub_push(CH, pub(2)))) == []
    assert s.history_request()["history"]["since"] == {"offset": 0, "epoch": ""}


def test_publications_in_a_subscribe_result_are_read_in_offset_order() -> None:
    s = Session()
    s.connect()
    result = sub_result(epoch="z", offset=2, publications=[pub(2, "done"), pub(1, "new")])
    s.receive(subscribe_push("orders#7", result))
    req = s.history_request()
    events = s.receive(history_reply(req["id"], [], epoch="z", offset=0))
    assert delivered(events) == [(1, "new", "push"), (2, "done", "push")]
    assert gaps(events) == []


def test_an_epoch_change_on_subscribe_reports_the_subscription_too() -> None:
    s = Session()
    s.live(offset=3)
    events = s.receive(subscribe_push(CH, sub_result(epoch="f", offset=1)))
    assert Subscribed(s.now, CH, "f", 1, False) in events
    assert gaps(events) == ["epoch changed to 'f'"]


def test_history_that_stops_at_our_position_short_of_the_top_is_a_gap() -> None:
    s = Session()
    s.live(offset=3)
    s.receive(subscribe_push(CH, sub_result(epoch="e", offset=6)))
    req = s.history_request()
    events = s.receive(history_reply(req["id"], [pub(3)], epoch="e", offset=6))
    assert [e for e in events if isinstance(e, Gap)] == [
        Gap(s.now, CH, "history ends at 3, stream top is 6")
    ]
    assert s.engine.caught_up and s.engine.positions() == {CH: (6, "e")}


def test_what_waited_for_history_is_released_at_the_moment_history_ends() -> None:
    s = Session()
    s.connect(subs={CH: sub_result(epoch="e", offset=2)})
    req = s.history_request()
    s.receive(pub_push(CH, pub(3, "done")))
    events = s.receive(history_reply(req["id"], [pub(1, "new"), pub(2)], epoch="e", offset=2))
    assert published(events) == [(1, s.now), (2, s.now), (3, s.now)]


# --- history without recovery: the subscription reports no epoch ----------------------
# A server with history but neither recovery nor positioning on a channel (the way
# Xsolla's docs use it: read history on subscribe) leaves epoch and offset out of
# the subscribe result; only history replies carry the stream's epoch.


def unpositioned() -> dict[str, Any]:
    return sub_result(recoverable=False, positioned=False)


def test_a_subscription_without_an_epoch_keeps_the_position_across_a_reconnect() -> None:
    """An absent epoch is not a new one: after a reconnect the channel reads history
    from its position, with no gap and nothing delivered twice."""
    s = Session()
    s.connect(subs={CH: unpositioned()})
    req = s.history_request()
    s.receive(history_reply(req["id"], [pub(1, "new"), pub(2)], epoch="e", offset=2))
    s.lose()
    s.connect_id = s.connect_command()["id"]
    events = s.receive(connect_reply(s.connect_id, subs={CH: unpositioned()}))
    assert gaps(events) == []
    req = s.history_request()
    assert req["history"]["since"] == {"offset": 2, "epoch": "e"}
    events = s.receive(history_reply(req["id"], [pub(3, "done")], epoch="e", offset=3))
    assert delivered(events) == [(3, "done", "history")] and gaps(events) == []
    assert s.engine.positions() == {CH: (3, "e")}


def test_news_held_while_history_first_tells_the_epoch_is_delivered() -> None:
    """The first history reply of a channel whose epoch was never reported tells it,
    it does not change it: what was pushed meanwhile is delivered, not dropped."""
    s = Session()
    s.connect(subs={CH: unpositioned()})
    req = s.history_request()
    s.receive(pub_push(CH, pub(3, "done")))  # held while history is read
    events = s.receive(history_reply(req["id"], [pub(1, "new"), pub(2)], epoch="e", offset=2))
    assert gaps(events) == []
    assert delivered(events) == [(1, "new", "history"), (2, "paid", "history"), (3, "done", "push")]


def test_a_stream_nobody_watches_that_restarts_live_is_delivered_not_dropped() -> None:
    """History without recovery or positioning: when it expires (the channel quiet
    past its TTL) the stream starts again at offset 1 and nobody ends the
    subscription.  Its ``paid`` at offset 1 was dropped as a copy of the old
    stream's ``new`` at 1.  A push at or below the position is now checked against
    history since it: a copy is dropped with no gap; a new stream answers 112 and
    is read from its start, one gap for the check."""
    s = Session()
    s.connect(subs={CH: unpositioned()})
    req = s.history_request()
    s.receive(history_reply(req["id"], [pub(1, "new")], epoch="e", offset=1))
    assert delivered(s.receive(pub_push(CH, pub(1, "new")))) == []  # held: which is it?
    req = s.history_request()
    assert req["history"]["since"] == {"offset": 1, "epoch": "e"}
    events = s.receive(history_reply(req["id"], [], epoch="e", offset=1))
    assert delivered(events) == [] and gaps(events) == []  # the same stream: a copy
    assert delivered(s.receive(pub_push(CH, pub(1, "paid")))) == []
    req = s.history_request()
    events = s.receive(error_reply(req["id"], 112, "unrecoverable position"))
    assert gaps(events) == ["unrecoverable position (112)"]
    req = s.history_request()
    assert req["history"]["since"] == {"offset": 0, "epoch": ""}  # from the new stream's start
    events = s.receive(history_reply(req["id"], [pub(1, "paid")], epoch="f", offset=1))
    assert delivered(events) == [(1, "paid", "history")] and gaps(events) == []
    events = s.receive(pub_push(CH, pub(2, "done")))
    assert delivered(events) == [(2, "done", "push")] and gaps(events) == []
    assert s.engine.positions() == {CH: (2, "f")}


def test_late_copies_on_a_stream_nobody_watches_cost_a_history_read_not_a_gap() -> None:
    """A push that history already gave (it reached this connection after the read),
    or a push repeated: each is checked with history since the position, in the same
    epoch, and dropped; no gap (no Get order), the position where it was."""
    s = Session()
    s.connect(subs={CH: unpositioned()})
    req = s.history_request()
    three = [pub(1, "new"), pub(2), pub(3, "done")]
    s.receive(history_reply(req["id"], three, epoch="e", offset=3))
    for late in (pub(2), pub(3, "done")):
        assert delivered(s.receive(pub_push(CH, late))) == []
        req = s.history_request()
        events = s.receive(history_reply(req["id"], [], epoch="e", offset=3))
        assert delivered(events) == [] and gaps(events) == []
    assert s.engine.positions() == {CH: (3, "e")}
    events = s.receive(pub_push(CH, pub(4, "canceled")))
    assert delivered(events) == [(4, "canceled", "push")] and gaps(events) == []


def test_a_watched_stream_drops_a_lower_offset_as_a_duplicate() -> None:
    """Recoverable or positioned, the server ends the subscription when its stream
    restarts: a lower offset pushed meanwhile is a late copy, not news."""
    s = Session()
    s.live(offset=4)
    events = s.receive(pub_push(CH, pub(2, "done")))
    assert delivered(events) == [] and gaps(events) == []
