"""Properties of the engine, with Hypothesis.

* Batching: how the server groups the same messages into frames changes nothing.
* Hostile input: any frame gives events (a typed protocol error for bad ones),
  never another exception.
* Against a model server (streams with retention, capped history, recovery
  that reports the requested offset, epoch resets, dropped connections):
  offsets only move forward, no offset is delivered twice, nothing is skipped
  without a Gap event, and when caught up everything published was delivered.
  The server also pushes retained publications again, so a channel that stops
  dropping duplicates (or moves its offset back) fails in every run.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import event as note_event
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from support_hypothesis import json_values

from transports.centrifuge import (
    CentrifugeEngine,
    CentrifugeProtocolError,
    EngineConfig,
    Event,
    Gap,
    OrderPublication,
    Reconnecting,
    State,
)
from transports.centrifuge.frames import decode_frame
from transports.centrifuge.testing import (
    PING,
    commands,
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

CHANNELS = ("orders#1", "orders#2")
STATUSES = ("new", "paid", "done", "canceled", "expired", "refunded")


def new_engine() -> CentrifugeEngine:
    return CentrifugeEngine(EngineConfig(project_id=1), random=lambda: 0.5)


# --- batching -------------------------------------------------------------------------


def pub_line(draw: st.DrawFn) -> str:
    offset = draw(st.integers(min_value=0, max_value=8))
    body = publication(draw(st.integers(1, 3)), draw(st.sampled_from(STATUSES)), offset=offset)
    return pub_push(draw(st.sampled_from(CHANNELS)), body)


@st.composite
def server_lines(draw: st.DrawFn) -> list[str]:
    """A plausible server conversation after ``connect`` (command id 1)."""
    subs = {ch: sub_result(epoch="e", offset=draw(st.integers(0, 3))) for ch in CHANNELS}
    lines = [connect_reply(1, subs=subs)]
    for _ in range(draw(st.integers(0, 14))):
        kind = draw(st.integers(0, 9))
        channel = draw(st.sampled_from(CHANNELS))
        if kind <= 3:
            lines.append(pub_line(draw))
        elif kind == 4:
            lines.append(PING)
        elif kind == 5:
            top = draw(st.integers(0, 8))
            offsets = draw(st.lists(st.integers(1, 8), max_size=4))
            pubs = [publication(1, "paid", offset=o) for o in offsets]
            lines.append(history_reply(draw(st.integers(2, 5)), pubs, epoch="e", offset=top))
        elif kind == 6:
            lines.append(error_reply(draw(st.integers(2, 5)), draw(st.sampled_from([108, 112]))))
        elif kind == 7:
            lines.append(subscribe_push(channel, sub_result(epoch="e", offset=1)))
        elif kind == 8:
            lines.append(draw(st.sampled_from([message_push(1), unsubscribe_push(channel)])))
        else:
            lines.append(draw(st.sampled_from([disconnect_push(3001), '{"id":', "[]"])))
    return lines


def run(frames: list[str]) -> tuple[list[Event], list[str] | None]:
    """The events, and the commands sent if the connection is still up at the end.

    When the connection ends, commands still queued are dropped with it, so
    what went out before depends (harmlessly) on where the frames were cut.
    """
    engine = new_engine()
    engine.connect(0.0, "jwt")
    events: list[Event] = []
    sent: list[str] = []
    for frame in frames:
        events += engine.receive(frame, 1.0)
        sent += engine.data_to_send()
    return events, sent if engine.state is State.CONNECTED else None


@settings(max_examples=150)
@given(server_lines(), st.data())
def test_any_batching_of_the_same_messages_gives_the_same_events(
    lines: list[str], data: st.DataObject
) -> None:
    cuts = data.draw(st.sets(st.integers(1, max(1, len(lines) - 1))))
    bounds = [0, *sorted(c for c in cuts if c < len(lines)), len(lines)]
    frames = ["\n".join(lines[a:b]) for a, b in itertools.pairwise(bounds)]
    one_per_frame = run(lines)
    assert run(frames) == one_per_frame
    assert run(["\n".join(lines)]) == one_per_frame


@st.composite
def live_lines(draw: st.DrawFn) -> list[str]:
    """What a caught-up connection hears: mostly the next publication of a channel,
    sometimes one again, one skipping ahead, a bad payload, two in one frame, a
    ping, another push, rarely a disconnect."""
    nominal = dict.fromkeys(CHANNELS, 0)
    lines: list[str] = []
    for _ in range(draw(st.integers(1, 30))):
        kind = draw(st.integers(0, 19))
        channel = draw(st.sampled_from(CHANNELS))
        if kind <= 13:
            nominal[channel] += draw(st.sampled_from([1, 1, 1, 1, 0, 2]))
            order_id = draw(st.sampled_from([1, 2, 0]))
            body = publication(order_id, draw(st.sampled_from(STATUSES)), offset=nominal[channel])
            line = pub_push(channel, body)
            if kind == 13:
                nominal[channel] += 1
                line += "\n" + pub_push(channel, publication(1, "done", offset=nominal[channel]))
            lines.append(line)
        elif kind <= 16:
            lines.append(PING)
        elif kind <= 18:
            lines.append(message_push(1))
        else:
            lines.append(disconnect_push(3001))
    return lines


def caught_up_engine() -> CentrifugeEngine:
    """Connected, both channels subscribed and their (empty) history read."""
    engine = new_engine()
    engine.connect(0.0, "jwt")
    engine.data_to_send()
    engine.receive(connect_reply(1, subs={c: sub_result(epoch="e") for c in CHANNELS}), 0.0)
    for command in commands(engine.data_to_send()):
        if "history" in command:
            engine.receive(history_reply(command["id"], [], epoch="e", offset=0), 0.0)
    assert engine.caught_up
    return engine


@settings(max_examples=300)
@given(live_lines(), st.lists(st.integers(0, 3), min_size=20, max_size=20))
def test_the_fast_path_gives_what_receive_gives_and_leaves_the_same_engine(
    lines: list[str], ticks: list[int]
) -> None:
    """A driver tries ``live_observation`` first and falls back to ``receive`` (as the
    WebSocket driver does); another only calls ``receive``.  Frame by frame they see
    the same observations and other events, and their engines send the same
    commands, keep the same positions and want the same next wake-up: so the fast
    path may skip asking for those."""
    fast, general = caught_up_engine(), caught_up_engine()
    now = 0.0
    for line, tick in zip(lines, itertools.cycle(ticks), strict=False):
        now += tick
        observation = fast.live_observation(line, now)
        if observation is None:
            fast_events = observations(fast.receive(line, now))
            fast_sent = fast.data_to_send()
        else:
            note_event("a frame took the fast path")
            fast_events, fast_sent = [observation], []
        assert fast_events == observations(general.receive(line, now))
        assert fast_sent == general.data_to_send()
        assert fast.positions() == general.positions()
        assert fast.next_deadline() == general.next_deadline()
        assert fast.state is general.state and fast.caught_up == general.caught_up


@settings(max_examples=200)
@given(live_lines(), st.lists(st.integers(0, 3), min_size=20, max_size=20))
def test_a_ping_answered_without_decoding_leaves_the_engine_as_decoding_it_does(
    lines: list[str], ticks: list[int]
) -> None:
    """``receive`` answers the usual ping (``{}`` alone in its frame) without decoding
    it; another engine gets the same pings spelled ``{"id":0}``, which only the
    general way reads.  Among publications that read history and hold news back,
    both say and send the same, and keep the same positions and deadlines."""
    short, decoded = caught_up_engine(), caught_up_engine()
    now = 0.0
    for line, tick in zip(lines, itertools.cycle(ticks), strict=False):
        now += tick
        spelled = '{"id":0}' if line == PING else line
        assert observations(short.receive(line, now)) == observations(decoded.receive(spelled, now))
        assert short.data_to_send() == decoded.data_to_send()
        assert short.positions() == decoded.positions()
        assert short.next_deadline() == decoded.next_deadline()
        assert short.state is decoded.state and short.caught_up == decoded.caught_up


def observations(events: list[Event]) -> list[object]:
    return [e.observation if isinstance(e, OrderPublication) else e for e in events]


# --- hostile frames -------------------------------------------------------------------


@st.composite
def hostile_frame(draw: st.DrawFn) -> str:
    good = draw(
        st.sampled_from(
            [PING, message_push({"a": 1}), pub_push(CHANNELS[0], publication(1, "new", offset=1))]
        )
    )
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return good[: draw(st.integers(0, len(good) - 1))]  # truncated
    if choice == 1:
        at = draw(st.integers(0, len(good)))
        return good[:at] + draw(st.text(max_size=3)) + good[at:]
    if choice == 2:
        return draw(st.text(max_size=30))
    keys = st.sampled_from(["id", "push", "pub", "channel", "offset", "connect", "subs"])
    value = draw(json_values(keys, text_size=3))
    return json.dumps(value)


@settings(max_examples=300)
@given(st.lists(hostile_frame(), min_size=1, max_size=6))
def test_hostile_frames_give_typed_protocol_errors_and_nothing_else(frames: list[str]) -> None:
    engine = new_engine()
    engine.connect(0.0, "jwt")
    engine.receive(connect_reply(1, subs={CHANNELS[0]: sub_result(epoch="e")}), 0.0)
    for frame in frames:
        live = engine.state is State.CONNECTED
        events = engine.receive(frame, 1.0)  # must not raise
        try:
            decode_frame(frame)
        except CentrifugeProtocolError:
            if live:
                end = events[-1]
                assert isinstance(end, Reconnecting)
                assert isinstance(end.error, CentrifugeProtocolError)
        engine.data_to_send()


# --- against a model server -----------------------------------------------------------


class Stream:
    """One channel's stream on the server: retention, capped history, recovery."""

    RETENTION, PAGE, RECOVERY = 4, 3, 3

    def __init__(self, name: str) -> None:
        self.name = name
        self.resets = 0
        self.epoch = f"{name}/0"
        self.top = 0
        self.kept: list[int] = []

    def publish(self) -> int:
        self.top += 1
        self.kept = [*self.kept, self.top][-self.RETENTION :]
        return self.top

    def reset(self) -> None:
        self.resets += 1
        self.epoch, self.top, self.kept = f"{self.name}/{self.resets}", 0, []

    def subscribe(self) -> dict[str, Any]:
        return sub_result(epoch=self.epoch, offset=self.top)

    def recover(self, offset: int, epoch: str) -> dict[str, Any]:
        missed = list(range(offset + 1, self.top + 1))
        if epoch == self.epoch and set(missed) <= set(self.kept) and len(missed) <= self.RECOVERY:
            # The server reports the offset it was asked for, not the top.
            pubs = [publication(1, "paid", offset=o) for o in missed]
            return sub_result(
                epoch=epoch, offset=offset, recovered=True, was_recovering=True, publications=pubs
            )
        return sub_result(epoch=self.epoch, offset=self.top, was_recovering=True)

    def history(self, command_id: int, since: dict[str, Any]) -> str:
        if since.get("epoch") and since["epoch"] != self.epoch:
            return error_reply(command_id, 112, "unrecoverable position")
        page = [o for o in self.kept if o > since.get("offset", 0)][: self.PAGE]
        pubs = [publication(1, "paid", offset=o) for o in page]
        return history_reply(command_id, pubs, epoch=self.epoch, offset=self.top)


class EngineAgainstModelServer(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = new_engine()
        self.streams = {name: Stream(name) for name in CHANNELS}
        self.now = 0.0
        self.pending: list[dict[str, Any]] = []
        self.last: dict[tuple[str, str], int] = {}
        """(channel, epoch) -> last offset delivered; never forgotten."""
        self.chain: dict[tuple[str, str], int] = {}
        """Like ``last`` but forgotten at a Gap: the next delivery may jump."""
        self.positions = self.engine.positions()
        self.broken: set[str] = set()

    @property
    def connected(self) -> bool:
        return self.engine.state is State.CONNECTED

    def feed(self, text: str) -> list[Event]:
        self.now += 1.0
        events = self.engine.receive(text, self.now)
        self.check(events)
        return events

    def check(self, events: list[Event]) -> None:
        for event in events:
            # every event is stamped with the moment it was made, on a channel we know
            assert event.at == self.now, f"{event} is not stamped {self.now}"
            if isinstance(event, (Gap, OrderPublication)):
                assert event.channel in CHANNELS, event
            if isinstance(event, OrderPublication):
                assert event.data == {"order_id": 1, "status": "paid"}, event
            if isinstance(event, Gap):
                self.chain = {k: v for k, v in self.chain.items() if k[0] != event.channel}
            elif isinstance(event, OrderPublication):
                key = (event.channel, event.epoch)
                assert event.offset > self.last.get(key, 0), f"{key} delivered {event.offset} again"
                if key in self.chain:
                    assert event.offset == self.chain[key] + 1, f"{key} skipped silently"
                self.last[key] = self.chain[key] = event.offset
            elif isinstance(event, Reconnecting):
                self.pending.clear()
                self.broken.clear()
        self.pending += [c for c in commands(self.engine.data_to_send()) if "history" in c]

    @precondition(lambda self: self.engine.state is State.DISCONNECTED)
    @rule(missed=st.tuples(st.integers(0, 8), st.integers(0, 8)))
    def connect(self, missed: tuple[int, int]) -> None:
        """Reconnect after the streams moved on by ``missed`` publications each."""
        for stream, count in zip(self.streams.values(), missed, strict=True):
            for _ in range(count):
                stream.publish()
        [cmd] = commands([self.engine.connect(self.now, "jwt")])
        asked = cmd["connect"].get("subs", {})
        subs = {
            name: stream.recover(asked[name]["offset"], asked[name]["epoch"])
            if name in asked
            else stream.subscribe()
            for name, stream in self.streams.items()
        }
        self.feed(connect_reply(cmd["id"], subs=subs))

    @rule(name=st.sampled_from(CHANNELS), count=st.integers(1, 6))
    def publish(self, name: str, count: int) -> None:
        for _ in range(count):
            offset = self.streams[name].publish()
            if not self.connected:
                continue
            if name in self.broken:
                # A positioned subscription whose stream broke: the server disconnects.
                self.feed(disconnect_push(3010, "insufficient state"))
            else:
                self.feed(pub_push(name, publication(1, "paid", offset=offset)))

    @precondition(lambda self: self.connected)
    @rule(name=st.sampled_from(CHANNELS), data=st.data())
    def push_again(self, name: str, data: st.DataObject) -> None:
        """The server pushes a retained publication again (a duplicate, or late).

        The client has usually delivered that offset already, so it must drop
        it: this is the rule that catches a ``deliver`` without its duplicate
        check, or one that moves the offset back.
        """
        stream = self.streams[name]
        if stream.kept and name not in self.broken:
            offset = data.draw(st.sampled_from(stream.kept))
            self.feed(pub_push(name, publication(1, "paid", offset=offset)))

    @precondition(lambda self: bool(self.pending))
    @rule(data=st.data())
    def answer_history(self, data: st.DataObject) -> None:
        cmd = self.pending.pop(data.draw(st.integers(0, len(self.pending) - 1)))
        history = cmd["history"]
        self.feed(self.streams[history["channel"]].history(cmd["id"], history["since"]))

    @precondition(lambda self: self.connected)
    @rule(name=st.sampled_from(CHANNELS))
    def resubscribe(self, name: str) -> None:
        self.feed(subscribe_push(name, self.streams[name].subscribe()))

    @rule(name=st.sampled_from(CHANNELS))
    def reset_stream(self, name: str) -> None:
        """History lost (new epoch); a connected client hears of it with the next publication."""
        self.streams[name].reset()
        if self.connected:
            self.broken.add(name)

    @precondition(lambda self: self.engine.state in (State.CONNECTING, State.CONNECTED))
    @rule()
    def drop_connection(self) -> None:
        self.now += 1.0
        self.check(self.engine.connection_lost(1006, "", self.now))

    @precondition(lambda self: self.engine.next_deadline() is not None)
    @rule()
    def time_out(self) -> None:
        deadline = self.engine.next_deadline()
        assert deadline is not None
        self.now = max(self.now, deadline)
        self.check(self.engine.handle_timer(self.now))

    @precondition(lambda self: self.connected)
    @rule()
    def ping(self) -> None:
        self.now += 1.0
        assert self.engine.receive(PING, self.now) == []
        assert self.engine.data_to_send() == ["{}"]

    @invariant()
    def positions_only_move_forward_within_an_epoch(self) -> None:
        now = self.engine.positions()
        for name, (offset, epoch) in now.items():
            before = self.positions.get(name)
            if before is not None and before[1] == epoch:
                assert offset >= before[0], f"{name} moved back from {before[0]} to {offset}"
        self.positions = now

    @invariant()
    def caught_up_means_everything_published_was_delivered(self) -> None:
        if not (self.connected and self.engine.caught_up):
            return
        for name, stream in self.streams.items():
            if stream.top:
                assert self.last.get((name, stream.epoch)) == stream.top, f"{name} is behind"


EngineAgainstModelServer.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
test_engine_against_a_model_server = EngineAgainstModelServer.TestCase
