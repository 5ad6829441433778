"""Close-code and error-reply classification, and the full-jitter backoff."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transports.centrifuge.backoff import full_jitter
from transports.centrifuge.codes import CloseAction, ErrorAction, close_action, error_action
from transports.centrifuge.errors import ConfigError

RECONNECT, STOP = CloseAction.RECONNECT, CloseAction.STOP


@pytest.mark.parametrize(
    ("code", "action"),
    [
        (None, RECONNECT),  # no close frame at all
        (1000, RECONNECT),
        (1001, RECONNECT),
        (1006, RECONNECT),
        (1011, RECONNECT),
        (1009, STOP),  # message too big
        (2999, RECONNECT),
        (3000, RECONNECT),
        (3001, RECONNECT),  # shutdown
        (3005, RECONNECT),  # connection expired
        (3012, RECONNECT),  # no pong
        (3014, RECONNECT),  # state invalidated
        (3499, RECONNECT),
        (3500, STOP),  # invalid token
        (3501, STOP),  # bad request
        (3502, STOP),  # stale
        (3999, STOP),
        (4000, RECONNECT),
        (4499, RECONNECT),
        (4500, STOP),
        (4999, STOP),
        (5000, RECONNECT),
        (65535, RECONNECT),
    ],
)
def test_close_code_table(code: int | None, action: CloseAction) -> None:
    assert close_action(code) is action


@given(st.integers(min_value=0, max_value=70_000))
def test_close_codes_stop_exactly_in_the_terminal_ranges(code: int) -> None:
    terminal = code == 1009 or 3500 <= code <= 3999 or 4500 <= code <= 4999
    assert (close_action(code) is STOP) == terminal


@pytest.mark.parametrize(
    ("code", "temporary", "action"),
    [
        (100, True, ErrorAction.RETRY),  # internal server error
        (111, True, ErrorAction.RETRY),  # too many requests
        (113, True, ErrorAction.RETRY),
        (42, False, ErrorAction.RETRY),  # client-side codes < 100
        (109, False, ErrorAction.REFRESH_TOKEN),
        (101, False, ErrorAction.STOP),
        (103, False, ErrorAction.STOP),
        (108, False, ErrorAction.STOP),
        (112, False, ErrorAction.STOP),
        (1500, False, ErrorAction.STOP),
        (1500, True, ErrorAction.RETRY),
    ],
)
def test_error_reply_table(code: int, temporary: bool, action: ErrorAction) -> None:
    assert error_action(code, temporary) is action


# --- backoff ----------------------------------------------------------------------------


@given(
    attempt=st.integers(min_value=-5, max_value=1000),
    sample=st.floats(min_value=0.0, max_value=1.0),
    min_delay=st.floats(min_value=0.01, max_value=5.0),
    spread=st.floats(min_value=0.0, max_value=100.0),
)
def test_backoff_stays_within_min_and_max(
    attempt: int, sample: float, min_delay: float, spread: float
) -> None:
    max_delay = min_delay + spread
    delay = full_jitter(attempt, sample, min_delay=min_delay, max_delay=max_delay)
    assert min_delay <= delay <= max_delay


@given(
    attempt=st.integers(min_value=0, max_value=40),
    low=st.floats(min_value=0.0, max_value=1.0),
    high=st.floats(min_value=0.0, max_value=1.0),
)
def test_backoff_grows_with_the_sample_and_the_attempt(
    attempt: int, low: float, high: float
) -> None:
    low, high = sorted((low, high))
    kwargs = {"min_delay": 0.5, "max_delay": 20.0}
    assert full_jitter(attempt, low, **kwargs) <= full_jitter(attempt, high, **kwargs)
    assert full_jitter(attempt, high, **kwargs) <= full_jitter(attempt + 1, high, **kwargs)


def test_backoff_ceiling_doubles_then_caps() -> None:
    ceilings = [full_jitter(n, 1.0, min_delay=0.5, max_delay=20.0) for n in range(8)]
    assert ceilings == [1.0, 1.5, 2.5, 4.5, 8.5, 16.5, 20.0, 20.0]
    assert full_jitter(0, 0.0, min_delay=0.5, max_delay=20.0) == 0.5


@pytest.mark.parametrize(("sample", "lo", "hi"), [(-0.1, 0.5, 20), (1.5, 0.5, 20), (0.5, 3, 1)])
def test_backoff_rejects_bad_arguments(sample: float, lo: float, hi: float) -> None:
    with pytest.raises(ConfigError):
        full_jitter(0, sample, min_delay=lo, max_delay=hi)
