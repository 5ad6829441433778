"""The sans-io session engine: bad input always ends in a clear close, never a crash."""

from __future__ import annotations

import json
import random

from hypothesis import given
from hypothesis import strategies as st

from transports.emulator.session import Close, Phase, Send, Session, Timing
from transports.emulator.state import World

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
commands = st.dictionaries(
    st.sampled_from(["id", "connect", "history", "send", "ping", "subscribe", "x"]),
    json_values,
    max_size=3,
)
frames = st.one_of(
    st.text(max_size=40),
    st.lists(commands.map(lambda c: json.dumps(c)), min_size=1, max_size=3).map("\n".join),
)


def fresh(connected: bool) -> tuple[Session, World]:
    world = World(project_id=1, secret="s", rng=random.Random(0))
    _, token = world.create_user("u", 0.0)
    session = Session(world, Timing(ping_interval=1.0, pong_timeout=0.5), random.Random(0), now=0.0)
    if connected:
        connect = {"id": 1, "connect": {"data": {"auth": token, "project_id": 1}}}
        [reply] = session.receive_text(json.dumps(connect), 0.0)
        assert isinstance(reply, Send) and session.phase is Phase.CONNECTED
    return session, world


@given(frame=frames, connected=st.booleans())
def test_any_frame_gives_replies_or_one_clear_close(frame: str, connected: bool) -> None:
    session, _ = fresh(connected)
    actions = session.receive_text(frame, 0.5)
    closes = [a for a in actions if isinstance(a, Close)]
    assert len(closes) <= 1
    if closes:
        assert actions[-1] is closes[0]
        assert closes[0].code in (3500, 3501) and closes[0].reason
        assert session.phase is Phase.CLOSED
        assert session.receive_text(frame, 0.6) == [] and session.next_deadline() is None
    for action in actions:
        if isinstance(action, Send):
            for line in action.text.split("\n"):
                assert isinstance(json.loads(line), dict)


@given(gaps=st.lists(st.floats(min_value=0.01, max_value=3.0), min_size=1, max_size=20))
def test_pings_never_outrun_the_interval_and_a_late_pong_closes_3012(gaps: list[float]) -> None:
    session, _ = fresh(connected=True)
    now, pings, closed = 0.0, [], False
    for gap in gaps:
        now += gap
        for action in session.handle_timer(now):
            if isinstance(action, Close):
                assert action.code == 3012
                closed = True
            else:
                pings.append(now)
    if closed:
        assert session.phase is Phase.CLOSED
    # without any pong, at most one ping goes out before the 3012 close
    assert len(pings) <= 1
