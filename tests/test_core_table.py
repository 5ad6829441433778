"""Every (current status, observed status) pair against the documented table.

The expected table is written out by hand from the README, independently of
the compiled one, so a change to the declaration that alters behaviour fails
here.
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orderfsm import Advanced, Conflict, Duplicate, Observation, Position, Stale, Status, apply
from orderfsm.errors import MalformedObservation, UnknownStatus

N, P, D, C, E = Status.NEW, Status.PAID, Status.DONE, Status.CANCELED, Status.EXPIRED
A, DUP, ST, CF = "advanced", "duplicate", "stale", "conflict"

# current -> observed -> (kind, skipped).  Xsolla's life cycle orders the
# statuses new < expired < paid < done < canceled (expired -> paid is a late
# payment, done -> canceled a refund after delivery), so every observation is
# an advance, a duplicate or stale: none contradicts.
EXPECTED: dict[Status | None, dict[Status, tuple[str, tuple[Status, ...]]]] = {
    None: {N: (A, ()), P: (A, (N,)), D: (A, (N, P)), C: (A, (N, P)), E: (A, (N,))},
    N: {N: (DUP, ()), P: (A, ()), D: (A, (P,)), C: (A, (P,)), E: (A, ())},
    E: {N: (ST, ()), P: (A, ()), D: (A, (P,)), C: (A, (P,)), E: (DUP, ())},
    P: {N: (ST, ()), P: (DUP, ()), D: (A, ()), C: (A, ()), E: (ST, ())},
    D: {N: (ST, ()), P: (ST, ()), D: (DUP, ()), C: (A, ()), E: (ST, ())},
    C: {N: (ST, ()), P: (ST, ()), D: (ST, ()), C: (DUP, ()), E: (ST, ())},
}

KIND = {Advanced: A, Duplicate: DUP, Stale: ST, Conflict: CF}

PAIRS = [(cur, obs) for cur, row in EXPECTED.items() for obs in row]


def test_expected_table_is_complete() -> None:
    assert set(EXPECTED) == {None, *Status}
    assert all(set(row) == set(Status) for row in EXPECTED.values())


@pytest.mark.parametrize(("current", "observed"), PAIRS, ids=[f"{c}->{o}" for c, o in PAIRS])
def test_every_pair_gives_the_documented_outcome(current: Status | None, observed: Status) -> None:
    kind, skipped = EXPECTED[current][observed]
    observation = Observation(7, observed.value, source="test", at=1.5)
    outcome = apply(current, observation)
    assert KIND[type(outcome)] == kind
    if isinstance(outcome, Advanced):
        assert outcome.previous is current
        assert outcome.status is observed
        assert outcome.skipped == skipped
        assert outcome.final == (observed is C)  # only a refund is never followed
    elif isinstance(outcome, (Stale, Conflict)):
        assert (outcome.current, outcome.observed) == (current, observed)


@pytest.mark.parametrize("status", ["", "Paid", "refunded", "done ", None, 3, b"paid"])
def test_unknown_status_is_a_typed_error(status: object) -> None:
    with pytest.raises(UnknownStatus):
        Observation(7, status, source="test", at=0.0)


@pytest.mark.parametrize(
    "fields",
    [
        {"order_id": "7"},
        {"order_id": 0},
        {"order_id": -3},
        {"order_id": True},
        {"order_id": 7.0},
        {"source": ""},
        {"source": None},
        {"at": float("nan")},
        {"at": float("inf")},
        {"at": "now"},
        {"at": True},
        {"position": (1, "e")},
    ],
)
def test_malformed_observation_is_a_typed_error(fields: dict[str, object]) -> None:
    good: dict[str, object] = {"order_id": 7, "status": "paid", "source": "test", "at": 0.0}
    with pytest.raises(MalformedObservation):
        Observation(**{**good, **fields})  # type: ignore[arg-type]


@given(
    order_id=st.integers(min_value=1),
    status=st.sampled_from(Status),
    source=st.text(min_size=1),
    at=st.floats(allow_nan=False, allow_infinity=False) | st.integers(),
    position=st.none() | st.builds(Position, st.none() | st.integers(0), st.text()),
    raw=st.none() | st.dictionaries(st.text(), st.integers()),
)
def test_a_trusted_observation_is_the_one_the_validators_build(
    order_id: int, status: Status, source: str, at: float, position: Position | None, raw: object
) -> None:
    """The engine's unchecked constructor is only a shortcut: same fields, same value."""
    checked = Observation(order_id, status, source, at, position, raw)
    trusted = Observation.trusted(order_id, status, source, at, position, raw)
    assert trusted == checked and hash(trusted) == hash(checked)
    assert attrs.asdict(trusted, recurse=False) == attrs.asdict(checked, recurse=False)


def test_errors_share_one_base_class_and_builtin_meaning() -> None:
    from orderfsm.errors import ObservationError, OrderFsmError

    assert issubclass(UnknownStatus, ObservationError)
    assert issubclass(UnknownStatus, ValueError)
    assert issubclass(MalformedObservation, TypeError)
    assert issubclass(ObservationError, OrderFsmError)
