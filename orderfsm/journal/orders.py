"""Orders in the journal: what every instance of a fleet knows about an order.

One row per order holds its status and a *version*, the number of changes it
has had.  Each change is also a row of its own, keyed by (order, version), so
an instance that missed a wake-up catches up by asking, per order, for the
versions after the last one it applied: a cursor that cannot skip a change
whose transaction committed late (a global sequence can, issue 15).  A change
is written under the order's row lock, by the same pure core every instance
applies, so the journal's sequence of an order is legal, each change once.

An order is *owned* by the instance that follows it through Xsolla (socket,
polling) under a lease, with a fencing number; the others follow through
the journal.  The lease is judged from the row alone, like a claim's.  An
owner that can no longer follow the order through Xsolla (its socket's time
is over, and it does not poll) lets the lease go at once, and its own
adopter passes the order by (:func:`let_go`, :func:`adoptable`).

Pure: no I/O, no clock (``now`` is seconds since the epoch, passed in, since
leases are shared by hosts).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence

import attrs

from orderfsm.core import (
    GOALS,
    LAPSED_STATUSES,
    Advanced,
    Observation,
    Status,
    Verdict,
    apply,
    verdict,
)

SLOT_PREFIX = "sqlite-slot-"
"""The names of the SQLite file's slots (:mod:`transports.journal.instance`): never a
name given with ``instance=``, which would share a slot's leases."""


def instance_name(name: object) -> str:
    """``name`` as an ``instance=`` name, or ``ValueError`` (before anything is opened)."""
    if not (isinstance(name, str) and name.strip()):
        raise ValueError(f"instance must be a non-empty name, got {name!r}")
    if name.startswith(SLOT_PREFIX):
        raise ValueError(
            f"instance {name!r} starts with {SLOT_PREFIX!r}, which names the SQLite"
            " file's slots: choose another name"
        )
    return name


@attrs.frozen
class OrderRow:
    """One order's row."""

    order_id: int
    status: Status | None
    version: int
    until: Status = Status.DONE
    user_id: str | None = None
    """The player's external id, so a resumed order can ask the app for a token
    (a token itself is never written to the journal)."""
    tracking: bool = False
    """An instance tracks it and it has not settled yet: resumed after a restart."""
    owner: str | None = None
    lease_until: float = 0.0
    fence: int = 0
    """Grows by one with every new owner: an old owner's writes can be told apart."""
    tracked_at: float | None = None
    """When an instance last said it tracks the order (wall-clock seconds)."""


@attrs.frozen
class ChangeRow:
    """One change of one order, as the journal keeps it."""

    order_id: int
    version: int
    status: Status
    previous: Status | None
    source: str
    at: float
    """Wall-clock seconds (the instances' loop clocks are not comparable)."""


def advance(current: Status | None, status: Status) -> Advanced | None:
    """What writing ``status`` over ``current`` does: an advance, or nothing (stale or repeated).

    The same core every instance applies, so the journal never holds a
    sequence an instance would refuse.
    """
    outcome = apply(current, Observation.trusted(1, status, "journal", 0.0))
    return outcome if type(outcome) is Advanced else None


WEBHOOK_STATUSES = {"order_paid": Status.PAID, "order_canceled": Status.CANCELED}
"""The status each webhook's ``notification_type`` tells of its order.  The journal keeps
the type as a delivery's ``kind``: receivers write an order's news as a change only
once someone tracks it (a webhook-only fleet must not pay for trackers it does not
run), so a first track reads what came before in the deliveries, through this table."""


def settles(row: OrderRow) -> bool:
    """Whether the order's status answers its goal (it needs no more following)."""
    return row.status is not None and verdict(row.status, row.until).settled


LET_GO = -1.0
"""``lease_until`` of a lease its owner let go (:func:`let_go`): in the past, as any
lease ended, so another instance takes the order at once; negative, unlike a lease
that ran out or one a restart ended (0), so the owner's own adopter tells it apart."""


def may_lease(row: OrderRow, owner: str, now: float) -> bool:
    """May ``owner`` follow the order through Xsolla?  From the row alone.

    Yes when nobody holds it, when ``owner`` does already (a renewal), or when
    the holder's lease ran out (it died or hangs): no worker table and no
    sweeper.  Never for a settled order.  An instance asks only for orders it
    follows, so another's giving one up (its waiter cancelled: the row says
    nobody tracks it) does not strand it: the lease marks it tracked again.
    """
    if settles(row):
        return False
    return row.owner is None or row.owner == owner or row.lease_until <= now


def leased(row: OrderRow, owner: str, now: float, lease: float) -> OrderRow:
    """The row after ``owner`` takes or renews its lease; a new owner gets a new fence."""
    fence = row.fence if row.owner == owner and row.lease_until > now else row.fence + 1
    return attrs.evolve(row, owner=owner, lease_until=now + lease, fence=fence, tracking=True)


def adoptable(
    row: OrderRow, now: float, lease: float, adopter: str, passed: Collection[int] = ()
) -> bool:
    """May ``adopter``, an instance that does not follow the order, take it over by itself?

    Yes when it is tracked, not settled, and nobody's lease on it is live: its
    owner died (SIGKILL, a host scaled away) or its tracker has no Xsolla
    connection.  An order nobody ever leased waits one ``lease`` after it was
    tracked, for its tracker's own first lease; the adopter then takes the
    lease as :func:`leased` says, so until that lease runs out nobody else may.
    Never one ``adopter`` let go itself (:func:`let_go`), nor one it ``passed`` (it
    tracks them and cannot follow them): taking it would keep it from an instance
    that can, and two instances that cannot would pass it back and forth.
    """
    if not row.tracking or settles(row) or row.lease_until > now or row.order_id in passed:
        return False
    if row.owner == adopter and row.lease_until < 0:
        return False
    return row.owner is not None or (row.tracked_at is not None and row.tracked_at <= now - lease)


def let_go(row: OrderRow, owner: str, now: float) -> OrderRow:
    """The row after ``owner``, which still waits on the order but can no longer follow it
    through Xsolla, hands it over: the lease it holds ends now (:data:`LET_GO`), and
    the order is marked tracked again if another instance's give-up unmarked it (as an
    instance following only the journal marks its orders), so that one that can
    follow it takes it (its renewal, or its adopter) rather than nobody.  The fence
    stays: the next owner's lease raises it."""
    if row.owner == owner:
        row = attrs.evolve(row, lease_until=LET_GO)
    if not row.tracking and row.tracked_at is not None and not settles(row):
        row = attrs.evolve(row, tracking=True, tracked_at=now)
    return row


class Lapse(enum.Enum):
    """Where the fleet's verdict on an expired order's grace stands, for an instance that
    is not the order's owner (:func:`lapse_verdict`)."""

    JUDGED = "judged"
    """In: an instance settled the order ``expired`` (its expired call's claim), the row
    moved on (a look found the payment: the change is in the journal), or there is no
    row (nothing to wait for)."""
    MINE = "mine"
    """The asker holds a live lease itself (it took the order over): the verdict is its
    own look's."""
    LOOKING = "looking"
    """Another instance holds a live lease: it follows the order through Xsolla, and
    looks at its grace's end."""
    UNOWNED = "unowned"
    """Nobody holds a live lease: its owner let the order go (and still looks once),
    died (another may take the order over, and look), or never was."""


def lapse_verdict(row: OrderRow | None, claimed: bool, me: str, now: float) -> Lapse:
    """Where the fleet's verdict on an expired order's grace stands, for ``me``: the owner's
    last Get order decides, and every instance must tell its application what that
    look said.  A verdict in is never looked at again (a look after it, by an
    instance that took the order over since, could say otherwise)."""
    if row is None or claimed or row.status not in LAPSED_STATUSES:
        return Lapse.JUDGED
    if row.owner is None or row.lease_until <= now:
        return Lapse.UNOWNED
    return Lapse.MINE if row.owner == me else Lapse.LOOKING


def settled_call(
    previous: Status | None, status: Status, until: Status
) -> tuple[bool, bool] | None:
    """The ``on_settled`` call the change ``previous -> status`` makes: (succeeded, later),
    or ``None``; what an instance that saw the order's whole history calls.

    Judged from the change and the status before it alone, so the sweep finds
    every call owed, not only the one for the order's current status: a
    settled status never leads back to an unsettled one (the graph), so the
    status before is what was last told.  A lapse (expired through a grace) is
    not a change in the journal: the instance following the order calls it.
    """
    answer = verdict(status, until)
    before = verdict(previous, until)
    if not answer.settled or before is answer:
        return None
    return answer is Verdict.SUCCEEDED, before.settled


@attrs.frozen
class RowMark:
    """What an order's row says of its ``on_settled`` calls: the record that outlives the
    retention (the calls' claims go after it, and with them their only other trace)."""

    told: int
    """``settled_told``: every call of the order's changes up to this version is recorded."""
    goal: Status
    """The goal ``told`` was judged for (the strictest asked)."""
    status: Status | None
    """The order's status now."""
    version: int
    """The order's version now (its newest change's)."""
    above: tuple[tuple[int, Status, Status | None], ...] = ()
    """The order's changes past ``told`` (version, status, the one before), oldest
    first: the calls that may be owed (the retention never prunes them from an order
    someone tracks)."""

    def call_past(self, status: Status, goal: Status) -> tuple[bool, bool] | None:
        """The call (succeeded, later) that the change past the mark making the call
        ``status`` makes for ``goal`` makes, or ``None``: no such change (the call was
        made at or below the mark, or its change never reached the journal)."""
        name = settled_name(status, goal)
        for _, after, before in self.above:
            call = settled_call(before, after, goal)
            if call is not None and settled_name(after, goal) is name:
                return call
        return None

    def knows_told(self) -> bool:
        """Whether the journal still holds every change past ``told`` (not when the
        retention pruned those of an order nobody tracked)."""
        if self.above:
            return self.above[0][0] == self.told + 1
        return self.version == self.told


def told_for_good(mark: RowMark, status: Status, goal: Status, version: int | None) -> bool:
    """Was the ``on_settled`` call that ``status`` makes for ``goal`` recorded, by the
    order's row?  ``version``: the change's, read from the journal; ``None`` for news
    heard from Xsolla (a Get order, the socket).  (Judged by its claim alone, pruned
    by the retention, the grant of an order tracked again months later and heard
    from Xsolla first was made a second time.)

    Read from the journal: yes when the mark is at or past the change, for the
    same goal: every call up to it was made (or the change called nothing; a hole
    left by the retention settles, for an instance that tracks the order again, on
    a change that was told).  Never for another goal: a mark judged for ``done``
    says nothing of the calls a ``paid`` goal makes (their claims decide).

    Heard from Xsolla (judged once the news is written): yes when the row holds the
    news (its status is it, or past it) and no change past the mark makes the same
    call.  The call was then made at or below the mark, or the news never reached
    the journal, the row having moved past it: ``done`` heard just before a refund
    already written, whose grant would come after the refund, never revoked, made or
    owed (another instance's sweep may be making it: a review found the grant after
    it).  Not when the row does not hold the news (its write refused): the claim
    decides; nor when the journal no longer says where the mark stands (the retention
    pruned the past of an order nobody tracked); nor for a lapse: it is not a change,
    the mark passes it whether called or not.
    """
    if mark.goal is not goal:
        return False
    if version is not None:
        return version <= mark.told
    if status in LAPSED_STATUSES or mark.status is None:
        return False
    if advance(mark.status, status) is not None:  # the row does not hold the news
        return False
    return mark.call_past(status, goal) is None and mark.knows_told()  # owed: the claim


def later_in_journal(mark: RowMark, status: Status, goal: Status) -> bool:
    """Whether the journal holds a settlement before the change, past the mark, that
    makes the call ``status`` makes for ``goal``: its ``later`` as the sweep judges
    it (less a lapse before it, which only the lapse's claim records)."""
    call = mark.call_past(status, goal)
    return call is not None and call[1]


def mark_for_goal(
    told: int,
    changes: Sequence[ChangeRow],
    goal: Status,
    made: Collection[Status],
    was: Status,
) -> int:
    """The order's ``settled_told`` once its row's goal becomes ``goal`` (a track asking
    a stricter one than ``was``, the goal the mark was judged for); ``changes``: the
    order's, in the journal; ``made``: the names (:func:`settled_name`) of its calls
    whose claims are answered or being made (not released).

    The mark was judged for the old goal, and says nothing of the new goal's calls: a
    mark moved past a delivery by a ``paid`` instance (whose goal calls nothing there)
    hid the ``done`` goal's call of it for ever (a grant never made).  It goes back to
    just before the new goal's first call not made, but never to one before a call
    made already (in a fleet mixing goals a refund's call, ``canceled``, is one for
    both goals): a grant told after its order's refund would never be revoked.  A call
    is made when its claim says so, or when the old mark passed it and the old goal
    made the same call (the same name): the retention prunes claims, never the mark,
    and a refund called months ago would otherwise be owed again (a review found it).
    A refund not made yet is owed, and no grant before it is: the old goal's instance
    is still making it (its claim released between tries), and a grant made meanwhile
    might come after it.  Only ever back: what it passes again is judged by its
    claims."""
    owed: list[int] = []
    for change in changes:
        if settled_call(change.previous, change.status, goal) is None:
            continue
        name = settled_name(change.status, goal)
        shared = (  # the old goal's call too: a refund, one call for both goals
            settled_call(change.previous, change.status, was) is not None
            and settled_name(change.status, was) is name
        )
        told_before = shared and change.version <= told
        if name in made or told_before:
            owed = []
        elif shared:
            owed = [change.version]  # a refund owed: no grant is owed before it
        else:
            owed.append(change.version)
    return min(told, owed[0] - 1) if owed else told


def settled_name(status: Status, until: Status) -> Status:
    """The status that names the ``on_settled`` call a change to ``status`` makes for the
    goal ``until``: the goal itself for a success, else ``status`` (a refund, an expiry).

    A call is one per order and *event*, not per status heard: for ``until="paid"``,
    ``paid`` and ``done`` are the same settlement, and which comes first depends on
    who hears what (a webhook records ``paid`` while the owner hears ``done`` from
    Xsolla and applies it first, the payment then stale to it).  Named by the status,
    the one call was two: the owner's for ``done`` and, for the payment before it in
    the journal, another instance's, a sweep's or a restart's.  Named by the goal,
    each goal's settlement is also a call of its own in a fleet mixing goals, as
    ``done`` heard first no longer takes the name of the other goal's call."""
    return until if verdict(status, until) is Verdict.SUCCEEDED else status


def settled_key(order_id: int, status: Status) -> str:
    """The claim key of the durable settled handler's call for one order and status (the
    call's name: :func:`settled_name`)."""
    return f"settled:{order_id}:{status.value}"


def calls_on_settled(previous: Status | None, status: Status) -> bool:
    """Whether the change ``previous -> status`` makes an ``on_settled`` call for either goal:
    an order's goal may still move (``paid`` to ``done``, the strictest a track asks), so
    a change that calls nothing for the goal its row has now may call for the next."""
    return any(settled_call(previous, status, goal) is not None for goal in GOALS)


def change_prunable(
    change: ChangeRow, cutoff: float, latest: int, tracked: bool, told: int
) -> bool:
    """May the retention delete this change?  ``latest``: its order's version now;
    ``tracked``: an instance ever tracked the order; ``told``: the order's
    ``settled_told``, the version up to which its ``on_settled`` calls are recorded.

    Only a change older than ``cutoff`` goes, and never

    * its order's latest: a follower that missed the changes before it (away longer
      than the retention) still finds one past its cursor, and applies it as the end
      of a hole, so it reaches the order's current status and announces it once;
      and SQLite's last ``seq`` stays, which it would give again otherwise (a new
      rowid is the largest + 1), to a change a follower's mark is already past;
    * one whose ``on_settled`` call may still be owed, however old: the sweep stops
      the order's mark before it and reads it there; deleted, the call would be told
      without being made.  Nobody is owed a call for an order nobody tracked.
    """
    if change.at >= cutoff or change.version >= latest:
        return False
    owed = tracked and change.version > told and calls_on_settled(change.previous, change.status)
    return not owed
