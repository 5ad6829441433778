"""The OrderBook against a deliberately simple reference model.

The model knows only the legal paths an order can take, written out by hand;
the book uses the compiled table.  Hypothesis feeds both the same random
observations (duplicates, reorderings, contradictions, many orders) and
checks that they agree, plus the invariants a user relies on.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from orderfsm import Advanced, Conflict, Duplicate, Observation, OrderBook, Stale, Status
from orderfsm.errors import OrderNotTracked

N, P, D, C, E = Status.NEW, Status.PAID, Status.DONE, Status.CANCELED, Status.EXPIRED
# Written from Xsolla's "Order life cycle" page: expired can still be paid,
# and a refund (canceled) can follow payment or delivery.
LEGAL_PATHS = [
    (N, P, D),
    (N, P, D, C),
    (N, P, C),
    (N, E),
    (N, E, P, D),
    (N, E, P, D, C),
    (N, E, P, C),
]
FINAL = {C}


def reference(current: Status | None, observed: Status) -> str:
    """What should happen, from the list of legal paths alone."""
    if current is None:
        return "advanced"
    if observed is current:
        return "duplicate"
    for path in LEGAL_PATHS:
        if current in path and observed in path:
            return "advanced" if path.index(observed) > path.index(current) else "stale"
    return "conflict"


KIND = {Advanced: "advanced", Duplicate: "duplicate", Stale: "stale", Conflict: "conflict"}


class BookMachine(RuleBasedStateMachine):
    orders = Bundle("orders")

    @initialize()
    def setup(self) -> None:
        self.book = OrderBook()
        self.model: dict[int, Status | None] = {}
        self.history: dict[int, list[Status]] = {}  # every status reported as advanced
        self.next_id = 1
        self.clock = 0.0

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def _observe(self, order_id: int, status: Status) -> None:
        self.clock += 0.25
        before = self.model[order_id]
        outcome = self.book.apply(Observation(order_id, status.value, source="prop", at=self.clock))
        expected = reference(before, status)
        assert KIND[type(outcome)] == expected, (before, status, outcome)
        if isinstance(outcome, Advanced):
            assert outcome.previous is before
            self.model[order_id] = status
            self.history[order_id].append(status)
        else:
            assert self.book.status(order_id) is before

    @rule(target=orders)
    def track(self) -> int:
        order_id = self._new_id()
        self.book.track(order_id)
        self.model[order_id] = None
        self.history[order_id] = []
        return order_id

    @rule(order_id=orders, status=st.sampled_from(Status))
    def observe(self, order_id: int, status: Status) -> None:
        if order_id in self.model:
            self._observe(order_id, status)

    @rule(order_id=orders, statuses=st.lists(st.sampled_from(Status), min_size=2, max_size=6))
    def burst(self, order_id: int, statuses: list[Status]) -> None:
        """Several transports reporting at once, in any order, with repeats."""
        if order_id in self.model:
            for status in statuses:
                self._observe(order_id, status)

    @rule(path=st.sampled_from(LEGAL_PATHS), skip=st.booleans())
    def legal_path_is_accepted(self, path: tuple[Status, ...], skip: bool) -> None:
        order_id = self._new_id()
        self.book.track(order_id)
        self.model[order_id] = None
        self.history[order_id] = []
        steps = path[::2] + path[-1:] if skip else path
        for status in dict.fromkeys(steps):
            outcome = self.book.apply(Observation(order_id, status.value, source="prop", at=0.0))
            assert isinstance(outcome, Advanced)
            self.model[order_id] = status
            self.history[order_id].append(status)
        assert self.book.status(order_id) is path[-1]

    @precondition(lambda self: len(self.model) > 0)
    @rule(order_id=consumes(orders))
    def forget(self, order_id: int) -> None:
        if order_id in self.model:
            self.book.forget(order_id)
            del self.model[order_id]
            try:
                self.book.status(order_id)
            except OrderNotTracked:
                pass
            else:
                raise AssertionError("forgotten order still tracked")

    @invariant()
    def book_matches_model(self) -> None:
        assert len(self.book) == len(self.model)
        for order_id, status in self.model.items():
            assert self.book.status(order_id) is status

    @invariant()
    def finals_absorb_and_status_never_goes_back(self) -> None:
        for statuses in self.history.values():
            # once final, nothing else is ever reported as an advance
            finals = [i for i, s in enumerate(statuses) if s in FINAL]
            assert not finals or finals[0] == len(statuses) - 1
            # the reported sequence is a prefix-respecting walk along one legal path
            assert any(
                all(s in path for s in statuses)
                and [path.index(s) for s in statuses] == sorted(path.index(s) for s in statuses)
                for path in LEGAL_PATHS
            ), statuses

    @invariant()
    def each_status_advanced_at_most_once(self) -> None:
        for statuses in self.history.values():
            assert len(statuses) == len(set(statuses))


BookMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestBook = BookMachine.TestCase
