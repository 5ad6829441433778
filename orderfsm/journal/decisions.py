"""The journal's decisions, as pure functions of a claim row and the time.

Every backend (memory, SQLite, PostgreSQL) follows these: the memory backend
calls them directly, and the SQL backends carry the same predicates in their
statements.  Only the take is checked against them row by row
(``tests/test_journal_store.py``, :func:`may_take` and :func:`take` on each
database's single-statement claim, not PostgreSQL's batched one); the SQL's
fencing, renewal and pruning are checked by behaviour, not row by row.  Nothing
here reads a clock: ``now`` is seconds since the epoch, from the caller, because
leases are shared by processes and hosts.
"""

from __future__ import annotations

import attrs

from orderfsm.journal.records import Answer, Claim, ClaimState, Outcome


def may_take(claim: Claim | None, now: float) -> bool:
    """May a new attempt take this key?  Judged from the claim row alone.

    Yes when nobody has it yet, when its last attempt failed (released), or
    when its owner's lease ran out (the owner died or hangs): no worker
    table, no heartbeat, no sweeper.  Never once it is answered.
    """
    if claim is None or claim.state is ClaimState.RELEASED:
        return True
    return claim.state is ClaimState.RUNNING and claim.lease_until <= now


def take(claim: Claim | None, key: str, owner: str, now: float, lease: float) -> Claim:
    """The row after a successful take: the attempt number grows by one."""
    attempt = 1 if claim is None else claim.attempt + 1
    return Claim(key, attempt, ClaimState.RUNNING, owner, now + lease, now)


def may_record(claim: Claim | None, attempt: int) -> bool:
    """Fencing: only the latest attempt, still running, records its answer.

    An owner whose lease ran out may still record if nobody took the key
    over meanwhile; once someone did, the old owner's answer is refused.
    """
    return claim is not None and claim.attempt == attempt and claim.state is ClaimState.RUNNING


def renewed(claim: Claim | None, attempt: int, until: float) -> Claim | None:
    """The row after ``attempt`` keeps its claim until ``until`` while its handler runs,
    or ``None`` when it may not (fenced, as :func:`may_record`): a late renewal of a
    lease that ran out still holds when nobody took the key over meanwhile."""
    if claim is None or not may_record(claim, attempt):
        return None
    return attrs.evolve(claim, lease_until=until)


def keeps(answer: Answer) -> bool:
    """Is this answer final (stored, repeated to duplicates) or a failure to retry?

    2xx and 4xx are the handler's decisions and final; 5xx means "try
    again", so the claim is released and the retry runs the handler anew.
    """
    return answer.status < 500


def settled(claim: Claim, answer: Answer, now: float) -> Claim:
    """The row after the owner of ``claim`` records ``answer``."""
    if keeps(answer):
        return attrs.evolve(claim, state=ClaimState.ANSWERED, answered_at=now, answer=answer)
    return attrs.evolve(claim, state=ClaimState.RELEASED, answered_at=now, answer=None)


def outcome_of(answer: Answer) -> Outcome:
    """What a handler's answer says about the delivery that ran it."""
    if answer.ok:
        return Outcome.HANDLED
    return Outcome.REFUSED if keeps(answer) else Outcome.FAILED


# --- a duplicate that finds the key taken --------------------------------------------


@attrs.frozen
class Reply:
    """Answer with the stored answer; the handler does not run."""

    answer: Answer


@attrs.frozen
class Wait:
    """Look at the claim again after ``delay`` seconds."""

    delay: float


@attrs.frozen
class TryAgain:
    """The key may be taken now: try to claim it."""


@attrs.frozen
class Busy:
    """Still at work elsewhere and the wait is over: answer 5xx so the sender retries."""


Verdict = Reply | Wait | TryAgain | Busy

POLL_FIRST = 0.002
POLL_MAX = 0.05


def poll_delay(polls: int) -> float:
    """2 ms, doubling to 50 ms: a quick handler's answer is seen within a few ms."""
    return min(POLL_FIRST * float(1 << min(polls, 16)), POLL_MAX)


def judge(claim: Claim | None, now: float, deadline: float, polls: int = 0) -> Verdict:
    """What a delivery that did not get the claim does next.

    ``deadline`` is when its answer is due (well under Xsolla's 3 s): a
    duplicate never hangs past it and never runs beside the owner.
    """
    if may_take(claim, now):
        return TryAgain()
    assert claim is not None
    if claim.state is ClaimState.ANSWERED:
        assert claim.answer is not None
        return Reply(claim.answer)
    if now >= deadline:
        return Busy()
    return Wait(min(poll_delay(polls), deadline - now, max(claim.lease_until - now, 0.0)))


def after_fencing(claim: Claim | None) -> Reply | Busy:
    """The handler ran but the record was refused: the key was taken over.

    If the newer attempt already answered, repeat its answer; otherwise 5xx,
    and the retry gets whatever the newer attempt records.
    """
    if claim is not None and claim.state is ClaimState.ANSWERED and claim.answer is not None:
        return Reply(claim.answer)
    return Busy()


# --- retention -----------------------------------------------------------------------


def prune_cutoff(now: float, retention: float) -> float:
    """Rows older than this go; retention is far past Xsolla's 12-hour retry window."""
    return now - retention


def prunable(claim: Claim, cutoff: float) -> bool:
    """A claim goes once it was last touched before the cutoff and nobody holds it."""
    if claim.state is ClaimState.RUNNING:
        return claim.lease_until < cutoff
    last = claim.answered_at if claim.answered_at is not None else claim.claimed_at
    return last < cutoff


def prune_due(last_pruned: float | None, now: float, every: float) -> bool:
    return last_pruned is None or now - last_pruned >= every


# --- replay ----------------------------------------------------------------------------


@attrs.frozen
class ReplayPlan:
    """Whether to run a stored delivery's handler again, and why (said to the operator)."""

    run: bool
    reason: str
    reopen: int | None = None
    """The answered attempt to reopen first (``--force``), fenced like any record."""


def plan_replay(claim: Claim | None, force: bool, now: float) -> ReplayPlan:
    """Replays re-run what failed or died; what was handled (2xx) or refused (4xx)
    runs again only when forced, and what someone is working on never."""
    if claim is None:
        return ReplayPlan(True, "no claim is recorded for it (never claimed, or pruned)")
    if claim.state is ClaimState.RELEASED:
        return ReplayPlan(True, f"its last attempt ({claim.attempt}) failed")
    if claim.state is ClaimState.RUNNING:
        if claim.lease_until > now:
            return ReplayPlan(
                False,
                f"attempt {claim.attempt} is at work on it (its lease runs "
                f"{claim.lease_until - now:.0f} s more)",
            )
        return ReplayPlan(True, f"its last attempt ({claim.attempt}) died before answering")
    assert claim.answer is not None
    verb = "handled" if claim.answer.ok else "refused"
    said = f"already {verb} (answered {claim.answer.status}, attempt {claim.attempt})"
    if not force:
        return ReplayPlan(False, f"{said}; --force runs it again")
    return ReplayPlan(True, f"{said}; forced", reopen=claim.attempt)


def reopened(claim: Claim, attempt: int) -> Claim | None:
    """The row after a forced replay reopens ``attempt``; ``None`` if it moved on meanwhile."""
    if claim.state is not ClaimState.ANSWERED or claim.attempt != attempt:
        return None
    return attrs.evolve(claim, state=ClaimState.RELEASED, answer=None)
