"""The in-memory journal: one process, forgets on restart; the default without a store.

It follows the same decisions as the SQL backends (it calls them directly)
under one lock, and keeps at most ``max_claims`` claims and
``max_deliveries`` deliveries, the oldest forgotten first, so a long-running
process stays bounded.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import attrs

from orderfsm.errors import JournalConfigError
from orderfsm.journal import (
    Answer,
    Claim,
    Delivery,
    DeliveryFilter,
    NewDelivery,
    Outcome,
    decisions,
)
from transports.journal.base import Claimed, Work, Worked
from transports.journal.orders import Note
from transports.journal.sql_shared import error_text


class MemoryStore:
    display = "memory:"
    kind = "memory"
    blocking = False
    threads = 1

    def __init__(self, max_claims: int = 100_000, max_deliveries: int = 10_000) -> None:
        if max_claims < 1 or max_deliveries < 1:
            raise JournalConfigError("max_claims and max_deliveries must be positive")
        self.max_claims = max_claims
        self.max_deliveries = max_deliveries
        self._lock = threading.Lock()
        self._claims: OrderedDict[str, Claim] = OrderedDict()
        self._deliveries: OrderedDict[int, Delivery] = OrderedDict()
        self._next_id = 1

    def open(self, patience: float | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    def _log(self, delivery: NewDelivery, logged: int | None, **fields: Any) -> Delivery:
        if logged is not None and logged in self._deliveries:
            record = attrs.evolve(self._deliveries[logged], **fields)
            self._deliveries[logged] = record
            return record
        record = Delivery(
            id=self._next_id,
            kind=delivery.kind,
            key=delivery.key,
            order_id=delivery.order_id,
            body=delivery.body,
            headers=delivery.headers,
            peer=delivery.peer,
            received_at=delivery.received_at,
            replay=delivery.replay,
        )
        record = attrs.evolve(record, **fields)
        self._next_id += 1
        self._deliveries[record.id] = record
        while len(self._deliveries) > self.max_deliveries:
            self._deliveries.popitem(last=False)
        return record

    def _put(self, claim: Claim) -> None:
        self._claims[claim.key] = claim
        self._claims.move_to_end(claim.key)
        while len(self._claims) > self.max_claims:
            self._claims.popitem(last=False)

    def claim(
        self,
        delivery: NewDelivery,
        owner: str,
        now: float,
        lease: float,
        deadline: float,
        logged: int | None = None,
        notes: Sequence[Note] = (),
    ) -> Claimed:
        if notes:
            raise ValueError("the in-memory journal keeps no orders: record notes in SQL")
        with self._lock:
            return self._claim(delivery, owner, now, lease, logged)

    def _claim(
        self, delivery: NewDelivery, owner: str, now: float, lease: float, logged: int | None
    ) -> Claimed:
        if delivery.key is None:
            return Claimed(self._log(delivery, logged, attempt=0).id, 0, None)
        prior = self._claims.get(delivery.key)
        if decisions.may_take(prior, now):
            taken = decisions.take(prior, delivery.key, owner, now, lease)
            self._put(taken)
            record = self._log(delivery, logged, attempt=taken.attempt)
            return Claimed(record.id, taken.attempt, None)
        assert prior is not None
        if prior.answer is not None:
            record = self._log(
                delivery,
                logged,
                status=prior.answer.status,
                outcome=Outcome.DUPLICATE,
                finished_at=now,
            )
        else:
            record = self._log(delivery, logged)
        return Claimed(record.id, None, prior)

    def read_claim(self, key: str, deadline: float) -> Claim | None:
        with self._lock:
            return self._claims.get(key)

    def settle(
        self,
        key: str | None,
        attempt: int,
        answer: Answer,
        delivery_id: int,
        error: str | None,
        now: float,
        deadline: float,
    ) -> bool:
        with self._lock:
            current = self._claims.get(key) if key is not None else None
            recorded = key is None or decisions.may_record(current, attempt)
            if key is not None and recorded:
                assert current is not None
                self._claims[key] = decisions.settled(current, answer, now)
            outcome = decisions.outcome_of(answer) if recorded else Outcome.FENCED
            self._finish(delivery_id, answer, outcome, error, now)
            return recorded

    def renew(self, key: str, attempt: int, until: float, deadline: float) -> bool:
        with self._lock:
            claim = decisions.renewed(self._claims.get(key), attempt, until)
            if claim is not None:
                self._claims[key] = claim
            return claim is not None

    def _finish(
        self, delivery_id: int, answer: Answer, outcome: Outcome, error: str | None, now: float
    ) -> None:
        record = self._deliveries.get(delivery_id)
        if record is not None:
            self._deliveries[delivery_id] = attrs.evolve(
                record,
                status=answer.status,
                outcome=outcome,
                error=error_text(error),
                finished_at=now,
            )

    def finish(
        self,
        delivery_id: int,
        answer: Answer,
        outcome: Outcome,
        error: str | None,
        now: float,
        deadline: float,
    ) -> None:
        with self._lock:
            self._finish(delivery_id, answer, outcome, error, now)

    def run_in_claim(
        self,
        delivery: NewDelivery,
        work: Work,
        owner: str,
        now: float,
        lease: float,
        deadline: float,
        logged: int | None = None,
    ) -> Worked:
        raise JournalConfigError(
            "a transactional handler needs a database: open the journal on SQLite or PostgreSQL"
        )

    def reopen(self, key: str, attempt: int, deadline: float) -> bool:
        with self._lock:
            current = self._claims.get(key)
            after = None if current is None else decisions.reopened(current, attempt)
            if after is None:
                return False
            self._claims[key] = after
            return True

    def deliveries(self, selection: DeliveryFilter, deadline: float) -> list[Delivery]:
        with self._lock:
            found = [d for d in reversed(self._deliveries.values()) if _selected(d, selection)]
        return found[: selection.limit]

    def delivery(self, delivery_id: int, deadline: float) -> Delivery | None:
        with self._lock:
            return self._deliveries.get(delivery_id)

    def ready(self, deadline: float, record_orders: bool) -> None:
        pass

    def claims(self, keys: Sequence[str], deadline: float) -> dict[str, Claim]:
        with self._lock:
            return {k: self._claims[k] for k in keys if k in self._claims}

    def prune(self, cutoff: float, deadline: float) -> tuple[int, int]:
        with self._lock:
            old_claims = [k for k, c in self._claims.items() if decisions.prunable(c, cutoff)]
            for key in old_claims:
                del self._claims[key]
            old = [i for i, d in self._deliveries.items() if d.received_at < cutoff]
            for ident in old:
                del self._deliveries[ident]
        return len(old_claims), len(old)


def _selected(delivery: Delivery, selection: DeliveryFilter) -> bool:
    """The same filter the SQL backends write as a WHERE clause."""
    if selection.order_id is not None and delivery.order_id != selection.order_id:
        return False
    if selection.kind is not None and delivery.kind != selection.kind:
        return False
    if selection.outcome is not None and delivery.outcome is not selection.outcome:
        return False
    if selection.unfinished and delivery.outcome is not None:
        return False
    if selection.since is not None and delivery.received_at < selection.since:
        return False
    return selection.until is None or delivery.received_at < selection.until
