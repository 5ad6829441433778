"""``orderfsm webhooks list|show|replay --store URL``: the deliveries the journal kept.

``list`` filters by order, type, outcome and time; ``show`` prints one
delivery whole (headers, body, answer, error text, its key's claim);
``replay`` runs the handler again on stored deliveries, as new attempts,
skipping those already handled unless ``--force``, and prints one line per
delivery saying what it did; it exits 1 when one failed again, did not verify
with the secret, or was not found.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from orderfsm.cli import options
from orderfsm.cli.failures import EXIT_ERROR, EXIT_OK
from orderfsm.cli.webhook_cmd import (
    StartupFailed,
    add_handler_options,
    add_record_orders_option,
    add_secret_options,
    add_store_argument,
    add_store_options,
    add_wait_option,
    open_receiver,
)

if TYPE_CHECKING:
    from orderfsm.journal import Claim, Delivery, DeliveryFilter
    from transports.journal import Journal

HELP = "list, show and replay the webhook deliveries kept in a journal"

OUTCOMES = ("handled", "refused", "failed", "duplicate", "busy", "fenced", "error", "unfinished")
_AGO = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def when(text: str) -> float:
    """An ISO 8601 time (UTC unless it says otherwise) or an age such as ``30m``, ``2h``, ``3d``."""
    ago = _AGO.fullmatch(text.strip())
    if ago:
        return time.time() - float(ago[1]) * _UNIT[ago[2]]
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give an ISO time (2026-11-25T10:00) or an age (30m, 2h, 3d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def iso(moment: float | None) -> str:
    if moment is None:
        return "-"
    return datetime.fromtimestamp(moment, timezone.utc).isoformat(timespec="milliseconds")


def add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--order", type=options.positive_int, metavar="ID", help="only this order's deliveries"
    )
    parser.add_argument("--type", metavar="TYPE", help="only this notification type")
    parser.add_argument("--outcome", choices=OUTCOMES, help="only deliveries that ended so")
    parser.add_argument("--since", type=when, metavar="TIME", help="received at or after")
    parser.add_argument("--until", type=when, metavar="TIME", help="received before")
    parser.add_argument(
        "--limit",
        type=options.positive_int,
        metavar="N",
        help="at most this many, newest first (list: 50 by default; replay: every match)",
    )


REPLAY_EXIT_CODES = (
    "exit codes: 0 every selected delivery replayed or skipped (its line says why), "
    "1 one failed again, did not verify with the secret or was not found (or another error), "
    "2 usage error or a start-up problem (nothing started), 130 interrupted (Ctrl-C or SIGTERM)"
)


def add_read_options(parser: argparse.ArgumentParser) -> None:
    """``list`` and ``show`` only read: a claim's lease and the retention mean nothing
    to them, so they are not offered (``replay`` writes, and takes both)."""
    add_store_argument(parser, required=True)
    add_wait_option(
        parser, "how long a read may wait for the database (a connection, a lock) before failing"
    )


def configure(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help: str, epilog: str | None = None) -> argparse.ArgumentParser:
        return verbs.add_parser(
            name, help=help, formatter_class=parser.formatter_class, epilog=epilog or parser.epilog
        )

    listing = verb("list", "the latest deliveries, newest first")
    add_read_options(listing)
    add_filters(listing)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    show = verb("show", "one delivery, whole")
    add_read_options(show)
    show.add_argument("id", type=int, help="the delivery's id (from list)")
    show.add_argument("--json", action="store_true", help="as one JSON object")
    replay = verb(
        "replay", "run the handler again on stored deliveries (new attempts)", REPLAY_EXIT_CODES
    )
    add_store_options(replay, required=True)
    add_secret_options(replay)  # each stored body is verified again
    replay.add_argument("--id", type=int, action="append", help="this delivery (repeatable)")
    add_filters(replay)
    replay.add_argument(
        "--force", action="store_true", help="run again even what was handled or refused"
    )
    add_handler_options(replay)  # one of the two is required: see NO_HANDLER
    add_record_orders_option(replay)


LIST_LIMIT = 50
EVERY_MATCH = 2**31 - 1  # a LIMIT both databases take


def selection(args: argparse.Namespace, limit: int) -> DeliveryFilter:
    """The filter the options name, asking one row past ``limit``: whether more
    matched than were taken is then known, and said."""
    from orderfsm.journal import DeliveryFilter, Outcome

    outcome = None if args.outcome in (None, "unfinished") else Outcome(args.outcome)
    return DeliveryFilter(
        order_id=args.order,
        kind=args.type,
        outcome=outcome,
        unfinished=args.outcome == "unfinished",
        since=args.since,
        until=args.until,
        limit=min(limit + 1, EVERY_MATCH),
    )


def as_json(delivery: Delivery, *, whole: bool = False) -> dict[str, Any]:
    line: dict[str, Any] = {
        "id": delivery.id,
        "received_at": iso(delivery.received_at),
        "type": delivery.kind,
        "order_id": delivery.order_id,
        "key": delivery.key,
        "attempt": delivery.attempt,
        "status": delivery.status,
        "outcome": None if delivery.outcome is None else delivery.outcome.value,
        "peer": delivery.peer,
        "replay": delivery.replay,
    }
    if whole:
        line["finished_at"] = iso(delivery.finished_at)
        line["headers"] = dict(delivery.headers)
        line["body"] = delivery.body.decode("utf-8", "replace")
        line["error"] = delivery.error
    return line


def table(deliveries: list[Delivery]) -> str:
    rows = [("ID", "RECEIVED (UTC)", "TYPE", "ORDER", "ATTEMPT", "STATUS", "OUTCOME", "PEER")]
    for d in deliveries:
        outcome = "unfinished" if d.outcome is None else d.outcome.value
        if d.replay:
            outcome += " (replay)"
        rows.append(
            (
                str(d.id),
                iso(d.received_at)[:23],
                d.kind,
                "-" if d.order_id is None else str(d.order_id),
                "-" if d.attempt is None else str(d.attempt),
                "-" if d.status is None else str(d.status),
                outcome,
                d.peer or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


def describe_claim(claim: Claim | None) -> str:
    if claim is None:
        return "no claim (never claimed, or pruned)"
    text = f"{claim.state.value}, attempt {claim.attempt} by {claim.owner}"
    if claim.answer is not None:
        text += f", answered {claim.answer.status} at {iso(claim.answered_at)}"
    elif claim.state.value == "running":
        text += f", lease until {iso(claim.lease_until)}"
    return text


def existing(store: str) -> None:
    """:class:`StartupFailed` for an SQLite journal that is not there: opened, SQLite
    would make an empty one, read as a journal without deliveries ("no deliveries
    match") where the path was mistyped or is relative to another directory."""
    from orderfsm.errors import JournalError
    from orderfsm.journal import SqliteConfig, parse_store_url

    try:
        config = parse_store_url(store)
    except JournalError:
        return  # named when it is opened
    if isinstance(config, SqliteConfig) and not os.path.exists(config.path):
        where = os.path.abspath(config.path)
        raise StartupFailed(f"{config.display()}: no journal there ({where} does not exist)")


async def run_verb(args: argparse.Namespace) -> int:
    from orderfsm.errors import JournalError
    from orderfsm.journal import JournalSettings
    from transports.journal import open_journal

    existing(args.store)
    if args.verb == "replay":
        return await replay(args)
    try:
        journal = open_journal(args.store, JournalSettings(wait=args.wait))
        await journal.open()
    except JournalError as exc:
        raise StartupFailed(str(exc)) from None
    try:
        if args.verb == "list":
            return await list_deliveries(journal, args)
        return await show(journal, args)
    finally:
        await journal.aclose()


async def list_deliveries(journal: Journal, args: argparse.Namespace) -> int:
    limit = LIST_LIMIT if args.limit is None else args.limit
    found = await journal.deliveries(selection(args, limit))
    if len(found) > limit:
        del found[limit:]
        print(f"the newest {limit} shown; more match (--limit N)", file=sys.stderr)
    if args.json:
        for delivery in found:
            print(json.dumps(as_json(delivery)))
    elif found:
        print(table(found))
    else:
        print("no deliveries match", file=sys.stderr)
    return 0


async def show(journal: Journal, args: argparse.Namespace) -> int:
    delivery = await journal.delivery(args.id)
    if delivery is None:
        print(f"orderfsm webhooks: no delivery {args.id} in {journal.display}", file=sys.stderr)
        return 1
    claims = await journal.claims([delivery.key]) if delivery.key else {}
    claim = claims.get(delivery.key) if delivery.key else None
    if args.json:
        whole = as_json(delivery, whole=True)
        whole["claim"] = describe_claim(claim) if delivery.key else None
        print(json.dumps(whole, indent=2))
        return 0
    for name, value in as_json(delivery, whole=True).items():
        if name in ("headers", "body", "error"):
            continue
        print(f"{name}: {'-' if value is None else value}")
    if delivery.key:
        print(f"claim: {describe_claim(claim)}")
    print("headers:")
    for name, value in delivery.headers:
        print(f"  {name}: {value}")
    print("body:")
    try:
        print(json.dumps(json.loads(delivery.body), indent=2, ensure_ascii=False))
    except ValueError:
        print(delivery.body.decode("utf-8", "replace"))
    if delivery.error:
        print("error:")
        print(delivery.error.rstrip())
    return 0


NO_HANDLER = (
    "replay needs --handler or --transactional: the handler to run again (without one,"
    " each notification would be recorded as handled with nothing granted)"
)


async def replay(args: argparse.Namespace) -> int:
    from transports.webhook.replay import replay as replay_one

    if not args.handler and not args.transactional:
        # The server's default handler only prints: a failed order_paid replayed with
        # it would be answered 204 from then on, Xsolla's retries included, the grant
        # never made and nobody refunded.
        raise StartupFailed(NO_HANDLER)
    receiver = await open_receiver(args)
    journal = receiver.journal
    failures = 0
    try:
        if args.id:
            chosen = []
            for ident in args.id:
                delivery = await journal.delivery(ident)
                if delivery is None:
                    print(f"delivery {ident}: skipped: no such delivery in {journal.display}")
                    failures += 1
                else:
                    chosen.append(delivery)
        else:
            limit = EVERY_MATCH if args.limit is None else args.limit
            chosen = await journal.deliveries(selection(args, limit))
            if len(chosen) > limit:
                del chosen[limit:]
                print(
                    f"only the newest {limit} selected (--limit); more match and are not"
                    " replayed: run it again, or raise --limit",
                    file=sys.stderr,
                )
        # One replay per notification: its latest delivery, whatever order the ids came in.
        chosen.sort(key=lambda delivery: delivery.id, reverse=True)
        stands: dict[str, int] = {}
        ran = 0
        for delivery in chosen:
            if delivery.key is not None and delivery.key in stands:
                latest = f"delivery {stands[delivery.key]} stands for {delivery.key}"
                print(f"delivery {delivery.id}: skipped: {latest} (one replay per notification)")
                continue
            if delivery.key is not None:
                stands[delivery.key] = delivery.id
            report = await replay_one(receiver, delivery, force=args.force)
            ran += report.ran
            failures += report.failed
            print(report.describe(), flush=True)
        failed = f"; {failures} failed" if failures else ""
        print(f"replayed {ran} of {len(chosen)} selected deliveries{failed}", file=sys.stderr)
    finally:
        await journal.aclose()
    return EXIT_ERROR if failures else EXIT_OK


def run(args: argparse.Namespace) -> int:
    import anyio

    code: int = anyio.run(run_verb, args)
    return code
