"""Random interleavings of N receivers on one journal, against the issue's invariants.

Hypothesis drives several receivers (each its own journal: its own
connections, as separate processes would have) through duplicate deliveries,
handler failures, crashes inside the transaction, duplicates arriving while a
transaction is open, lease expiries and restarts, with a clock of its own.
The handlers grant (a 2xx), refuse on purpose (a 4xx) or fail (a 5xx), each answer's
body naming the attempt that gave it.  After every step: no grant twice, no grant
without its recorded answer; once a handler's 2xx or 4xx is recorded for an order,
every later delivery of it gets exactly that answer (status, body, type), before it
only a 5xx; and no 4xx but the handler's own.  At the end, Xsolla's retries (the
clock past every lease) deliver every order until its answer is final: each is
granted exactly once unless refused (transactional), or handled at least once with
its answer recorded exactly once (plain).
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from support_journal import ALL_BACKENDS, BACKENDS, connect, create_grants, mark, url_for

from orderfsm.errors import JournalError
from orderfsm.journal import Answer, JournalSettings, NewDelivery, Outcome, Reply
from transports.journal import Ran, SyncJournal, Taken, store_for
from transports.journal.base import Work

FAILED = Answer(500, b"failed")
BUSY = Answer(500, b"busy")
STORE_FAILED = Answer(503, b"journal failed")
"""What the receiver answers when the journal fails it (the store's trouble, not the
journal's decision: the only answer exempt from repeating the recorded one)."""


def granted(attempt: int) -> Answer:
    return Answer(200, f'{{"granted_by": {attempt}}}'.encode(), "application/json")


def refused(attempt: int) -> Answer:
    body = f'{{"error": {{"code": "INVALID_USER", "attempt": {attempt}}}}}'.encode()
    return Answer(400, body, "application/json")


RECEIVERS = 3
ORDERS = 4
LEASE = 10.0
SETTINGS = JournalSettings(lease=LEASE, wait=0.0, pool_size=2)
RUNS = settings(
    max_examples=12,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Crash(Exception):
    """The process dies here: nothing of its transaction commits."""


class Receivers(RuleBasedStateMachine):
    url: str
    schemas = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.journals: list[SyncJournal] = [self._journal() for _ in range(RECEIVERS)]
        self.answers: list[tuple[int, Answer]] = []
        self.recorded: dict[int, tuple[int, Answer]] = {}
        """Per order, the index in ``answers`` of the delivery whose handler's 2xx or 4xx
        the journal recorded, and that answer."""

    def _journal(self) -> SyncJournal:
        journal = SyncJournal(store_for(self.url, SETTINGS), SETTINGS, clock=self.clock)
        journal.open()
        # Pruned now, in this thread: the first answer would start a background prune
        # whose write lock, met with this test's wait of 0, fails a claim at random
        # (and Hypothesis rightly calls such a test flaky).
        journal.prune()
        return journal

    def delivery(self, order_id: int) -> NewDelivery:
        return NewDelivery(
            "order_paid", f"order_paid:{order_id}", order_id, b"{}", (), None, self.clock.now
        )

    @rule(receiver=st.integers(0, RECEIVERS - 1))
    def restart(self, receiver: int) -> None:
        """SIGKILL and restart: whatever it held stays claimed until the lease runs out."""
        self.journals[receiver].close()
        self.journals[receiver] = self._journal()

    @rule(seconds=st.sampled_from([0.5, LEASE / 2, LEASE + 1]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    def handler_answered(self, order_id: int, answer: Answer) -> None:
        """This delivery's own handler gave ``answer`` and the journal recorded it (when
        final): the first final answer of the order, as a handler never runs after one."""
        if answer.status < 500:
            assert order_id not in self.recorded, (order_id, self.recorded[order_id], answer)
            self.recorded[order_id] = (len(self.answers), answer)
        self.answers.append((order_id, answer))

    @invariant()
    def no_4xx_but_the_handlers_own(self) -> None:
        for order_id, answer in self.answers:
            if 400 <= answer.status < 500:
                assert self.recorded.get(order_id, (0, None))[1] == answer, (order_id, answer)

    @invariant()
    def duplicates_repeat_the_recorded_answer(self) -> None:
        """Exactly the recorded answer once there is one (never a 5xx then, which would
        run the handler again, nor another attempt's answer); only a 5xx before."""
        for index, (order_id, answer) in enumerate(self.answers):
            if answer == STORE_FAILED:
                continue
            since, first = self.recorded.get(order_id, (len(self.answers), None))
            if index >= since:
                assert answer == first, (order_id, answer, first)
            else:
                assert answer.status >= 500, (order_id, answer)

    def teardown(self) -> None:
        for journal in self.journals:
            journal.close()


class TransactionalReceivers(Receivers):
    """The exactly-once form: the grant and the answer commit together."""

    def __init__(self) -> None:
        super().__init__()
        self.insert = f"INSERT INTO grants (order_id) VALUES ({mark(self.url)})"

    def work(self, order_id: int, how: str, receiver: int) -> Any:
        def grant(connection: Any, attempt: int) -> tuple[Answer, str | None]:
            connection.execute(self.insert, (order_id,))  # rolled back unless a 2xx
            if how == "crash":
                raise Crash
            if how == "fail":
                return FAILED, "failed on purpose"
            if how == "refuse":
                return refused(attempt), "refused on purpose"
            if how == "duplicate inside":
                # Xsolla's retry lands on another instance while this transaction is open:
                # it must not run the handler beside it (it answers 5xx, or waits).
                other = self.journals[(receiver + 1) % RECEIVERS]
                self.deliver_to(other, order_id, "ok", receiver + 1)
            return granted(attempt), None

        return Work(grant)

    def run(self, journal: SyncJournal, order_id: int, how: str, receiver: int) -> Ran | Reply:
        try:
            return journal.run(self.delivery(order_id), self.work(order_id, how, receiver), BUSY)
        except JournalError:
            return Reply(STORE_FAILED)  # what the receiver answers when the journal fails it

    def deliver_to(self, journal: SyncJournal, order_id: int, how: str, receiver: int) -> Answer:
        result = self.run(journal, order_id, how, receiver)
        if isinstance(result, Ran):
            self.handler_answered(order_id, result.answer)
        else:
            self.answers.append((order_id, result.answer))
        return result.answer

    @rule(
        receiver=st.integers(0, RECEIVERS - 1),
        order_id=st.integers(1, ORDERS),
        how=st.sampled_from(["ok", "ok", "refuse", "fail", "crash", "duplicate inside"]),
    )
    def deliver(self, receiver: int, order_id: int, how: str) -> None:
        try:
            self.deliver_to(self.journals[receiver], order_id, how, receiver)
        except Crash:
            self.restart(receiver)

    @invariant()
    def each_grant_once_and_only_with_its_answer(self) -> None:
        granted = self.grants()
        assert all(count == 1 for count in granted.values()), granted
        answered = {o for o, a in self.answers if a.ok}
        assert answered <= set(granted)
        refusals = {o for o, (_, a) in self.recorded.items() if not a.ok}
        assert not refusals & set(granted), granted  # a refusal's writes are rolled back

    def grants(self) -> Counter[int]:
        db = connect(self.url)
        try:
            return Counter(int(r[0]) for r in db.execute("SELECT order_id FROM grants").fetchall())
        finally:
            db.close()

    def teardown(self) -> None:
        try:
            self.clock.now += LEASE + 1
            for order_id in range(1, ORDERS + 1):
                # Xsolla's retries, round the receivers: a bounded number, so a journal
                # that never answers 2xx fails the test instead of hanging it.
                tries = itertools.islice(itertools.cycle(range(RECEIVERS)), 10 * RECEIVERS)
                assert any(
                    self.deliver_to(self.journals[receiver], order_id, "ok", receiver).status < 500
                    for receiver in tries
                ), f"order {order_id} never answered its final answer"
            self.duplicates_repeat_the_recorded_answer()
            self.no_4xx_but_the_handlers_own()
            kept = {o for o, (_, answer) in self.recorded.items() if answer.ok}
            assert self.grants() == Counter(kept) and len(self.recorded) == ORDERS
        finally:
            super().teardown()


class PlainReceivers(Receivers):
    """The plain handler: claimed, run with no lock held, then recorded (fenced)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight: list[tuple[int, Taken, int]] = []
        self.completed: Counter[int] = Counter()
        self.latest: dict[int, int] = {}
        """Per order, the attempt of its latest claim: the only one whose answer records."""

    @rule(receiver=st.integers(0, RECEIVERS - 1), order_id=st.integers(1, ORDERS))
    def arrive(self, receiver: int, order_id: int) -> None:
        try:
            begun = self.journals[receiver].begin(self.delivery(order_id), BUSY)
        except JournalError:
            self.answers.append((order_id, STORE_FAILED))
            return
        if isinstance(begun, Taken):
            assert order_id not in self.recorded  # no handler after a final answer
            # Never two attempts of one key both allowed to record: the older one is fenced.
            self.in_flight.append((receiver, begun, order_id))
            self.latest[order_id] = begun.attempt
        else:
            self.answers.append((order_id, begun.answer))

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data(), how=st.sampled_from(["grant", "refuse", "fail"]))
    def handler_ends(self, data: st.DataObject, how: str) -> None:
        receiver, taken, order_id = data.draw(st.sampled_from(self.in_flight))
        self.in_flight.remove((receiver, taken, order_id))
        if how == "grant":
            self.completed[order_id] += 1
        answer = {"grant": granted, "refuse": refused}.get(how, lambda _: FAILED)(taken.attempt)
        try:
            given = self.journals[receiver].settle(taken, answer, None, BUSY)
        except JournalError:
            self.answers.append((order_id, STORE_FAILED))
            self.learn_recorded(order_id, taken)
            return
        if taken.attempt == self.latest[order_id]:  # not fenced: its answer is the one
            assert given == answer
            self.handler_answered(order_id, answer)
        else:  # fenced: the newer attempt's recorded answer, or a 5xx
            self.answers.append((order_id, given))

    def learn_recorded(self, order_id: int, taken: Taken) -> None:
        """The journal failed the answer's write: whether it recorded it anyway is the
        journal's to say (its claim row), so the invariants go on from what it holds."""
        assert taken.key is not None
        claim = self.journals[0].claims([taken.key]).get(taken.key)
        if claim is not None and claim.answer is not None and order_id not in self.recorded:
            assert claim.attempt == taken.attempt == self.latest[order_id]
            self.recorded[order_id] = (len(self.answers), claim.answer)

    def restart(self, receiver: int) -> None:
        super().restart(receiver)
        self.in_flight = [f for f in self.in_flight if f[0] != receiver]

    def teardown(self) -> None:
        try:
            self.in_flight.clear()
            self.clock.now += LEASE + 1
            for order_id in range(1, ORDERS + 1):
                # Xsolla's retries, round the receivers: a bounded number, so a journal
                # that never gives the final answer fails the test instead of hanging it.
                tries = itertools.islice(itertools.cycle(range(RECEIVERS)), 10 * RECEIVERS)
                for receiver in tries:
                    try:  # the background pruner may hold the writer for a moment
                        begun = self.journals[receiver].begin(self.delivery(order_id), BUSY)
                    except JournalError:
                        continue
                    if isinstance(begun, Reply):
                        self.answers.append((order_id, begun.answer))
                        if begun.answer.status < 500:
                            break
                        continue
                    assert order_id not in self.recorded  # no handler after a final answer
                    self.completed[order_id] += 1
                    answer = granted(begun.attempt)
                    try:
                        given = self.journals[receiver].settle(begun, answer, None, BUSY)
                    except JournalError:
                        self.clock.now += LEASE + 1  # its lease must run out first
                        continue
                    assert given == answer
                    self.handler_answered(order_id, answer)
                else:
                    raise AssertionError(f"order {order_id} never got its final answer")
            self.duplicates_repeat_the_recorded_answer()
            self.no_4xx_but_the_handlers_own()
            records = self.journals[0].deliveries()
            final = (Outcome.HANDLED, Outcome.REFUSED)
            recorded = Counter(d.order_id for d in records if d.outcome in final)
            assert recorded == Counter(range(1, ORDERS + 1))  # each answer recorded once
            assert all(self.completed[o] >= 1 for o, (_, a) in self.recorded.items() if a.ok)
        finally:
            super().teardown()


@pytest.mark.parametrize("backend", BACKENDS)
def test_transactional_receivers_grant_each_order_exactly_once(
    backend: str, tmp_path: Path
) -> None:
    urls = itertools.count()

    class Run(TransactionalReceivers):
        def __init__(self) -> None:
            path = tmp_path / f"run{next(urls)}"
            path.mkdir()
            self.url = url_for(backend, path)
            create_grants(self.url)
            super().__init__()

    Run.TestCase.settings = RUNS
    Run.TestCase().runTest()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_plain_receivers_handle_each_order_and_record_it_once(backend: str, tmp_path: Path) -> None:
    urls = itertools.count()

    class Run(PlainReceivers):
        def __init__(self) -> None:
            path = tmp_path / f"run{next(urls)}"
            path.mkdir()
            self.url = url_for(backend, path)
            super().__init__()

        def _journal(self) -> SyncJournal:
            if self.url == "memory:":  # one process: every receiver shares the memory
                if not hasattr(self, "_shared"):
                    self._shared = super()._journal()
                return self._shared
            return super()._journal()

    Run.TestCase.settings = RUNS
    Run.TestCase().runTest()
