"""The sans-io session engine: bad input always ends in a clear close, never a crash."""

from __future__ import annotations

import itertools
import json
import random

from hypothesis import given
from hypothesis import strategies as st
from support_hypothesis import json_values

from transports.emulator.session import Close, Phase, Send, Session, Timing
from transports.emulator.state import World

commands = st.dictionaries(
    st.sampled_from(["id", "connect", "history", "send", "ping", "subscribe", "x"]),
    json_values(),
    max_size=3,
)
frames = st.one_of(
    st.text(max_size=40),
    st.lists(commands.map(lambda c: json.dumps(c)), min_size=1, max_size=3).map("\n".join),
)


def fresh(connected: bool, seed: int = 0) -> tuple[Session, World]:
    world = World(project_id=1, secret="s", rng=random.Random(0))
    _, token = world.create_user("u", 0.0)
    session = Session(
        world,
        Timing(ping_interval=INTERVAL, pong_timeout=PONG_TIMEOUT),
        random.Random(seed),
        now=0.0,
    )
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


INTERVAL, PONG_TIMEOUT = 1.0, 0.5


@given(
    answers=st.lists(st.none() | st.floats(min_value=0.0, max_value=0.95), min_size=1, max_size=12),
    early=st.lists(st.floats(min_value=0.01, max_value=1.0, exclude_max=True), max_size=12),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_pings_keep_their_schedule_and_only_a_missing_or_late_pong_closes_3012(
    answers: list[float | None], early: list[float], seed: int
) -> None:
    """Driven like the server's timer task (woken at ``next_deadline()``, and
    sometimes early), the session pings first at a moment in [interval/2,
    interval] after connecting, then every interval, as long as each ping gets
    its pong within the pong timeout; the first ping whose pong is missing or
    later than that closes with 3012 exactly at ping + timeout.

    ``answers[i]`` is how long after ping ``i`` the client pongs (``None``:
    never).  Breakages this catches: a session that never pings, pings early,
    late or twice per interval, does not clear the wait on a pong, closes
    without cause, or closes with another code or at another time.
    """
    session, _ = fresh(connected=True, seed=seed)
    pings: list[float] = []
    closed_at: float | None = None
    for answer in answers:
        deadline = session.next_deadline()
        assert deadline is not None
        if early:
            # a wake-up before the deadline does nothing
            assert (
                session.handle_timer(deadline - early.pop() * (deadline - (pings or [0.0])[-1]))
                == []
            )
        [action] = session.handle_timer(deadline)
        assert action == Send("{}"), f"expected a ping at {deadline}, got {action}"
        pings.append(deadline)
        if answer is not None and answer < PONG_TIMEOUT:
            assert session.receive_text("{}", deadline + answer) == []
            continue
        close_at = session.next_deadline()
        assert close_at == deadline + PONG_TIMEOUT
        [close] = session.handle_timer(close_at)
        assert close == Close(3012, "no pong")
        closed_at = close_at
        assert session.receive_text("{}", deadline + (answer or 1.0)) == []  # too late
        break
    assert INTERVAL / 2 <= pings[0] <= INTERVAL
    assert all(abs(b - a - INTERVAL) < 1e-9 for a, b in itertools.pairwise(pings))
    on_time = list(itertools.takewhile(lambda a: a is not None and a < PONG_TIMEOUT, answers))
    assert len(pings) == min(len(answers), len(on_time) + 1)
    assert (closed_at is None) == (len(on_time) == len(answers))
    assert session.pings_sent == len(pings) and session.pongs_received == len(on_time[: len(pings)])
    if closed_at is not None:
        assert session.phase is Phase.CLOSED and session.next_deadline() is None
    else:
        assert session.phase is Phase.CONNECTED
