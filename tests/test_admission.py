"""The admission of orders' first Get order requests, without a loop: its bound, its
order of turns, and that no place is lost whatever its entries do."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orderfsm.supervisor.admission import Admission, Place


class Starts:
    """Entries that record their places; ``refuse`` ones start nothing (ended orders)."""

    def __init__(self) -> None:
        self.started: dict[int, Place] = {}

    def entry(self, n: int, refuse: bool = False) -> Callable[[Place], bool]:
        def start(place: Place) -> bool:
            if refuse:
                return False
            self.started[n] = place
            return True

        return start


def test_the_places_bound_what_runs_and_a_place_given_back_admits_the_next() -> None:
    admission, starts = Admission(2), Starts()
    for n in range(5):
        admission.queue(starts.entry(n))
    assert list(starts.started) == [0, 1] and len(admission) == 3
    starts.started[0].give_back()
    starts.started[0].give_back()  # again: a no-op, not a second place
    assert list(starts.started) == [0, 1, 2] and len(admission) == 2


def test_entries_queued_later_wait_behind_every_other() -> None:
    """A resume's thousands of orders must not keep a player who buys now waiting."""
    admission, starts = Admission(1), Starts()
    admission.queue(starts.entry(0))
    for n in (1, 2):
        admission.queue(starts.entry(n), later=True)
    admission.queue(starts.entry(3))
    for n in (0, 3, 1):
        starts.started[n].give_back()
    assert list(starts.started) == [0, 3, 1, 2]


def test_an_entry_that_starts_nothing_or_raises_takes_no_place() -> None:
    admission, starts = Admission(1), Starts()

    def broken(place: Place) -> bool:
        raise RuntimeError("the task group is closing")

    admission.queue(starts.entry(0, refuse=True))
    with pytest.raises(RuntimeError):
        admission.queue(broken)
    admission.queue(starts.entry(1))
    assert list(starts.started) == [1]


@given(st.integers(1, 4), st.lists(st.tuples(st.sampled_from("qlrg"), st.integers(0, 50))))
def test_no_entry_waits_while_a_place_is_free_and_none_is_lost(
    places: int, steps: list[tuple[str, int]]
) -> None:
    """Whatever is queued (now, later, refusing) and given back, in any order: the
    places taken are the starts not given back, never more than ``places``, and an
    entry waits only while every place is taken."""
    admission, starts = Admission(places), Starts()
    given_back: set[int] = set()
    for n, (op, pick) in enumerate(steps):
        if op == "g":
            running = sorted(set(starts.started) - given_back)
            if running:
                chosen = running[pick % len(running)]
                given_back.add(chosen)
                starts.started[chosen].give_back()
        else:
            admission.queue(starts.entry(n, refuse=op == "r"), later=op == "l")
        running_now = len(set(starts.started) - given_back)
        assert running_now <= places
        assert len(admission) == 0 or running_now == places
