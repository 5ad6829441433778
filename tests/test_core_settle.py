"""Settled is not final: the verdicts a waiter gets, against a table written by hand."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orderfsm import Observation, OrderBook, Status
from orderfsm.core import GOALS, Verdict, verdict
from orderfsm.core.settle import check_goal

N, P, D, C, E = Status.NEW, Status.PAID, Status.DONE, Status.CANCELED, Status.EXPIRED
PEND, OK, FAIL, LAPSE = Verdict.PENDING, Verdict.SUCCEEDED, Verdict.FAILED, Verdict.LAPSED

# goal -> status -> verdict, from xsolla.md §1: paid means the item may be
# granted, done that it was; canceled is a refund; expired may still be paid.
EXPECTED = {
    D: {None: PEND, N: PEND, E: LAPSE, P: PEND, D: OK, C: FAIL},
    P: {None: PEND, N: PEND, E: LAPSE, P: OK, D: OK, C: FAIL},
}


@pytest.mark.parametrize("goal", GOALS)
@pytest.mark.parametrize("status", [None, *Status])
def test_every_status_gets_the_documented_verdict(goal: Status, status: Status | None) -> None:
    assert verdict(status, goal) is EXPECTED[goal][status]


def test_only_success_and_refund_settle() -> None:
    assert {v for v in Verdict if v.settled} == {OK, FAIL}


@pytest.mark.parametrize("goal", ["done", "paid", Status.DONE, Status.PAID])
def test_goals_are_paid_or_done(goal: object) -> None:
    assert check_goal(goal) in GOALS


@pytest.mark.parametrize("goal", ["new", "expired", "canceled", "Done", None, 1])
def test_other_goals_are_refused_by_name(goal: object) -> None:
    with pytest.raises(ValueError, match="until must be one of paid, done"):
        check_goal(goal)


@given(goal=st.sampled_from(GOALS), statuses=st.lists(st.sampled_from(Status), max_size=12))
def test_once_settled_an_order_stays_settled(goal: Status, statuses: list[Status]) -> None:
    """Whatever order the news comes in, the answer never goes back to "not yet":
    a success can only be followed by a refund (a failure), and a failure is final."""
    book = OrderBook()
    book.track(1)
    answers = []
    for status in statuses:
        book.apply(Observation(1, status, source="prop", at=0.0))
        answers.append(verdict(book.status(1), goal))
    settled = [i for i, v in enumerate(answers) if v.settled]
    if settled:
        after = answers[settled[0] :]
        assert all(v.settled for v in after)
        if FAIL in after:
            assert set(after[after.index(FAIL) :]) == {FAIL}
