"""An app process of the ``on_settled`` crash tests: a journal-only tracker whose plain
``on_settled`` prints ``CALLED ORDER STATUS LATER`` and returns, or with ``--hang``
prints it and never returns (the test SIGKILLs it mid-call).

``python tests/settled_app.py JOURNAL [--hang] [--track ORDER] [--observe STATUS] [--grace S]
[--no-handler] [--watch] [--backend B]``: ``--track`` follows the order live (its calls then
come from what this process applies, not only the sweep); ``--observe``, the order settles
at once here: STATUS is observed just before the track (an in-process webhook that
beat the app's call); ``--grace``, an expired order's grace in seconds;
``--no-handler``, an instance of a mixed fleet that has no ``on_settled``; ``--watch``,
the tracked order's changes are printed as its ``watch()`` gives them (``CHANGE ORDER
STATUS``), then ``SETTLED ORDER`` when it ends.  Prints
``READY`` once running, and ``SWEPT COUNT TIME`` as its sweep reads pages (so a test
can tell that it judged the journal again after some moment).
"""

from __future__ import annotations

import argparse
import time

import anyio

from orderfsm import Status
from orderfsm.core import Observation
from orderfsm.journal import JournalSettings
from orderfsm.supervisor.fleet import Settled
from orderfsm.supervisor.policy import DefaultPolicy
from orderfsm.supervisor.tracker import Tracker
from transports.journal import open_journal

CLAIM_LEASE = 2.0
"""The journal's claim lease: how long a call the killed process held waits."""


async def report_sweeps(tracker: Tracker) -> None:
    """Each new count of sweep pages read, with the time it was seen (polled: the app's
    side only; the tests wait for these lines, not for time)."""
    seen = -1
    while True:
        sweeps = 0 if tracker.fleet is None else tracker.fleet.sweeps
        if sweeps != seen:
            print("SWEPT", sweeps, time.time(), flush=True)
            seen = sweeps
        await anyio.sleep(0.05)


async def report_changes(tracker: Tracker, order_id: int) -> None:
    async for change in tracker.watch(order_id):
        print("CHANGE", order_id, getattr(change, "status", change), flush=True)
    print("SETTLED", order_id, flush=True)


async def main(
    journal: str,
    hang: bool,
    track: int | None,
    observe: Status | None,
    grace: float,
    handler: bool,
    watch: bool,
) -> None:
    async def on_settled(event: Settled) -> None:
        print("CALLED", event.order_id, event.status.value, event.later, flush=True)
        if hang:
            await anyio.sleep_forever()

    async with (
        open_journal(journal, JournalSettings(lease=CLAIM_LEASE)) as opened,
        Tracker(
            project_id=1,
            journal=opened,
            transports=("journal",),
            fetch_details=False,
            until="paid",
            on_settled=on_settled if handler else None,
            lease=0.5,
            policy=DefaultPolicy(expired_grace=grace),
        ) as tracker,
        anyio.create_task_group() as tasks,
    ):
        if track is not None:
            if observe is not None:
                tracker.observe(Observation(track, observe, "webhook", anyio.current_time()))
            tracker.track(track)
            if watch:
                tasks.start_soon(report_changes, tracker, track)
        tasks.start_soon(report_sweeps, tracker)
        print("READY", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("journal")
    parser.add_argument("--hang", action="store_true")
    parser.add_argument("--track", type=int)
    parser.add_argument("--observe", type=Status)
    parser.add_argument("--grace", type=float, default=600.0)
    parser.add_argument("--no-handler", action="store_true")
    parser.add_argument("--watch", action="store_true")
    parser.add_argument("--backend", default="asyncio")
    args = parser.parse_args()
    anyio.run(
        main,
        args.journal,
        args.hang,
        args.track,
        args.observe,
        args.grace,
        not args.no_handler,
        args.watch,
        backend=args.backend,
    )
