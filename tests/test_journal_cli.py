"""``orderfsm webhooks list|show|replay`` and ``webhook-server``'s start-up errors, as a user
types them: real processes, a real journal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from support_journal import on_databases, url_for
from support_postgres import NO_ORDERS, database_of_a_role
from support_webhook import SECRET, order_paid, signed

from transports.journal import open_journal
from transports.webhook import WebhookReceiver

TESTS = Path(__file__).resolve().parent


def orderfsm(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "orderfsm", *args]
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)


async def fill(url: str, record_orders: bool = True) -> None:
    """Order 1 handled, order 2 failed once then handled, order 3 failed."""
    failures = {2: 1, 3: 1}

    async def handler(notification: object) -> None:
        order_id = notification.order_id  # type: ignore[attr-defined]
        if failures.get(order_id):
            failures[order_id] -= 1
            raise RuntimeError(f"the grant service is down for {order_id}")

    async with open_journal(url) as journal:
        receiver = WebhookReceiver(SECRET, handler, store=journal, record_orders=record_orders)
        for order_id in (1, 2, 2, 3, 1):
            await receiver.handle(signed(order_paid(order_id)), order_paid(order_id), "10.0.0.7")


@on_databases
def test_list_show_and_replay_say_what_the_journal_holds_and_did(
    backend: str, tmp_path: Path
) -> None:
    url = url_for(backend, tmp_path)
    anyio.run(fill, url)

    listed = orderfsm("webhooks", "list", "--store", url)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:3] == ["ID", "RECEIVED", "(UTC)"] and len(rows) == 5
    failed = orderfsm("webhooks", "list", "--store", url, "--outcome", "failed", "--json")
    lines = [json.loads(line) for line in failed.stdout.splitlines()]
    assert [(d["order_id"], d["outcome"], d["status"]) for d in lines] == [
        (3, "failed", 500),
        (2, "failed", 500),
    ]
    only_1 = orderfsm("webhooks", "list", "--store", url, "--order", "1", "--json")
    assert [json.loads(x)["outcome"] for x in only_1.stdout.splitlines()] == [
        "duplicate",
        "handled",
    ]
    future = orderfsm("webhooks", "list", "--store", url, "--since", "2999-01-01")
    assert future.stdout == "" and "no deliveries" in future.stderr

    shown = orderfsm("webhooks", "show", "--store", url, str(lines[0]["id"]))
    assert shown.returncode == 0, shown.stderr
    assert "the grant service is down for 3" in shown.stdout
    assert "claim: released, attempt 1" in shown.stdout
    assert '"id": 3' in shown.stdout and "Authorization: Signature " in shown.stdout
    assert orderfsm("webhooks", "show", "--store", url, "999").returncode == 1

    # Replay the failures: order 3 runs again (the handler given prints it);
    # order 2 was handled since, and is skipped with the reason.
    printing = ("--handler", "orderfsm.cli.webhook_cmd:print_notification")
    replayed = orderfsm(
        "webhooks", "replay", "--store", url, "--secret", SECRET, "--outcome", "failed", *printing
    )
    assert replayed.returncode == 0, replayed.stderr
    printed = [json.loads(x) for x in replayed.stdout.splitlines() if x.startswith("{")]
    said = [x for x in replayed.stdout.splitlines() if x.startswith("delivery")]
    assert [p["order_id"] for p in printed] == [3]
    assert said[0].endswith("replayed (its last attempt (1) failed): answered 204")
    assert "skipped: already handled (answered 204, attempt 2); --force" in said[1]
    assert "replayed 1 of 2" in replayed.stderr
    again = orderfsm(
        "webhooks", "replay", "--store", url, "--secret", SECRET, "--order", "3", *printing
    )
    assert "skipped: already handled" in again.stdout and "replayed 0 of" in again.stderr
    forced = orderfsm(
        "webhooks",
        "replay",
        "--store",
        url,
        "--secret",
        SECRET,
        "--order",
        "3",
        "--force",
        *printing,
    )
    assert "forced): answered 204" in forced.stdout
    wrong = orderfsm(
        "webhooks", "replay", "--store", url, "--secret", "nope", "--order", "3", *printing
    )
    assert "signature does not verify" in wrong.stdout
    bare = orderfsm("webhooks", "replay", "--store", url, "--secret", SECRET, "--order", "3")
    assert bare.returncode == 2 and bare.stderr.count("\n") == 1, bare.stderr
    assert "replay needs --handler or --transactional" in bare.stderr


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ("mysql://db/x", "unknown scheme 'mysql'"),
        ("{tmp}/missing/j.sqlite3", "does not exist"),
        ("{tmp}/corrupt.sqlite3", "not a database"),
        ("postgresql://postgres@127.0.0.1:9/x", "cannot connect"),
    ],
)
def test_start_up_problems_are_one_line_and_exit_2(
    store: str, message: str, tmp_path: Path
) -> None:
    (tmp_path / "corrupt.sqlite3").write_bytes(b"not a database at all " * 100)
    store = store.format(tmp=tmp_path)
    for command in (
        ["webhook-server", "--secret", "s", "--port", "0", "--store", store],
        ["webhooks", "list", "--store", store],
    ):
        result = orderfsm(*command)
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_a_handler_that_cannot_be_loaded_is_a_start_up_problem() -> None:
    result = orderfsm("webhook-server", "--secret", "s", "--port", "0", "--handler", "nope:x")
    assert result.returncode == 2 and "cannot load nope:x" in result.stderr


def test_a_handler_beside_the_command_loads_as_with_uvicorn(tmp_path: Path) -> None:
    """``--handler hooks:on_paid`` run where hooks.py is: "No module named 'hooks'" (exit
    2) unless the user knew to set PYTHONPATH."""
    (tmp_path / "hooks.py").write_text("async def on_paid(notification):\n    print('granted')\n")
    url = str(tmp_path / "journal.sqlite3")
    anyio.run(fill, url)
    script = Path(sys.executable).with_name("orderfsm")  # not -m: it puts "" on the path
    command = [str(script), "webhooks", "replay", "--store", url]
    command += ["--secret", SECRET, "--order", "3", "--handler", "hooks:on_paid"]
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    ran = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "granted" in ran.stdout and "replayed 1 of 1" in ran.stderr


def test_a_handler_of_the_wrong_kind_is_a_start_up_problem() -> None:
    """An ``async def`` as ``--transactional`` would never run, its 204 granting nothing.
    Refused before anything listens."""
    result = orderfsm(
        "webhook-server", "--secret", "s", "--port", "0", "--transactional", "journal_app:plain"
    )
    assert result.returncode == 2 and "must be a plain function" in result.stderr


def test_a_read_only_directory_is_a_start_up_problem(tmp_path: Path) -> None:
    folder = tmp_path / "readonly"
    folder.mkdir()
    # Root writes through permission bits; the immutable flag stops even root.
    root = os.geteuid() == 0
    if root:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
    try:
        result = orderfsm(
            "webhook-server", "--secret", "s", "--port", "0", "--store", str(folder / "j.db")
        )
    finally:
        if root:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)
    assert result.returncode == 2, result.stderr
    assert "cannot write here" in result.stderr and result.stderr.count("\n") == 1


def test_replay_says_which_delivery_stands_for_a_notification(tmp_path: Path) -> None:
    """One replay per notification, from its latest delivery, however the ids are given;
    the others' lines name it and claim nothing about how it went.  ``--id 2 --id 3``
    (order 2's failure, then its handled retry) replayed the older one, and the skip
    said a later delivery was replayed, as it did when none was (a wrong secret)."""
    url = str(tmp_path / "journal.sqlite3")
    anyio.run(fill, url)
    both = ("--id", "2", "--id", "3", "--handler", "orderfsm.cli.webhook_cmd:print_notification")
    forced = orderfsm("webhooks", "replay", "--store", url, "--secret", SECRET, *both, "--force")
    assert forced.stdout.splitlines()[1:] == [
        "delivery 3 (order_paid 2): replayed (already handled (answered 204, attempt 2);"
        " forced): answered 204",
        "delivery 2: skipped: delivery 3 stands for order_paid:2 (one replay per notification)",
    ]
    wrong = orderfsm("webhooks", "replay", "--store", url, "--secret", "nope", *both)
    assert wrong.stdout.splitlines() == [
        "delivery 3 (order_paid 2): skipped: its signature does not verify with this secret",
        "delivery 2: skipped: delivery 3 stands for order_paid:2 (one replay per notification)",
    ]


def test_replay_exits_1_when_a_replay_did_not_work(tmp_path: Path) -> None:
    """A script or an operator reads the exit code: a handler failing again, a secret
    that verifies nothing, an id that is not there are failures (they exited 0);
    what was skipped as already handled is not."""
    url = str(tmp_path / "journal.sqlite3")
    anyio.run(fill, url)
    replay = ("webhooks", "replay", "--store", url, "--order", "3")
    printing = ("--handler", "orderfsm.cli.webhook_cmd:print_notification")
    still_down = orderfsm(*replay, "--secret", SECRET, "--handler", "journal_app:failing")
    assert still_down.returncode == 1, still_down.stderr
    assert "replayed (its last attempt (1) failed): answered 500" in still_down.stdout
    assert "replayed 1 of 1 selected deliveries; 1 failed" in still_down.stderr
    assert orderfsm(*replay, "--secret", "nope", *printing).returncode == 1
    assert orderfsm(*replay[:4], "--id", "99", "--secret", SECRET, *printing).returncode == 1
    assert orderfsm(*replay, "--secret", SECRET, *printing).returncode == 0  # handled now
    assert orderfsm(*replay, "--secret", SECRET, *printing).returncode == 0  # skipped: handled


def test_replay_under_a_role_without_the_orders_privileges_records_no_orders() -> None:
    """A webhook-only backend's role has no privilege on the orders' tables, and its
    server runs with ``--no-record-orders``; its replays recorded the order's status
    anyway, so every replay of a status failed ("permission denied for table
    orderfsm_orders"): the failed notification could not be handled again.  With the
    server's option, a replay records the claim and the handler's answer alone."""
    with database_of_a_role(*NO_ORDERS) as (url, _, database):
        anyio.run(fill, url, False)
        replay = ("webhooks", "replay", "--store", url, "--secret", SECRET, "--order", "3")
        printing = ("--handler", "orderfsm.cli.webhook_cmd:print_notification")
        recording = orderfsm(*replay, *printing)
        replayed = orderfsm(*replay, *printing, "--no-record-orders")
        orders = database.execute("SELECT count(*) FROM orderfsm_orders").fetchone()[0]
    assert recording.returncode == 1, recording.stderr
    assert "not run: the journal failed" in recording.stdout
    assert "permission denied for table orderfsm_orders" in recording.stderr
    assert replayed.returncode == 0, replayed.stderr
    printed = [json.loads(x) for x in replayed.stdout.splitlines() if x.startswith("{")]
    assert [p["order_id"] for p in printed] == [3]
    assert "replayed (its last attempt (1) failed): answered 204" in replayed.stdout
    assert orders == 0


async def fail_many(url: str, count: int) -> None:
    async def handler(notification: object) -> None:
        raise RuntimeError("the grant service is down")

    async with open_journal(url) as journal:
        receiver = WebhookReceiver(SECRET, handler, store=journal)
        for order_id in range(1, count + 1):
            await receiver.handle(signed(order_paid(order_id)), order_paid(order_id), "10.0.0.7")


def test_replay_takes_every_match_and_a_limit_says_what_it_left(tmp_path: Path) -> None:
    """After an outage, ``replay --outcome failed`` (as the README shows it) runs every
    failed notification: it replayed the newest 50 of 60, exited 0 and said "50 of 50".
    A ``--limit`` that leaves some out says so, and so does ``list``'s default 50."""
    url = str(tmp_path / "journal.sqlite3")
    anyio.run(fail_many, url, 60)
    replay = ("webhooks", "replay", "--store", url, "--secret", SECRET, "--outcome", "failed")
    printing = ("--handler", "orderfsm.cli.webhook_cmd:print_notification")
    some = orderfsm(*replay, *printing, "--limit", "10")
    assert some.returncode == 0, some.stderr
    assert "replayed 10 of 10 selected" in some.stderr and "more match" in some.stderr
    listed = orderfsm("webhooks", "list", "--store", url, "--outcome", "failed")
    assert len(listed.stdout.splitlines()) == 1 + 50 and "more match" in listed.stderr
    rest = orderfsm(*replay, *printing)
    assert rest.returncode == 0, rest.stderr
    assert "replayed 50 of 60 selected" in rest.stderr and "more match" not in rest.stderr
    handled = orderfsm(
        "webhooks", "list", "--store", url, "--outcome", "handled", "--json", "--limit", "99"
    )
    assert sorted(json.loads(line)["order_id"] for line in handled.stdout.splitlines()) == list(
        range(1, 61)
    )


@pytest.mark.parametrize(
    "verb",
    [
        ["list"],
        ["show", "1"],
        ["replay", "--secret", SECRET, "--handler", "orderfsm.cli.webhook_cmd:print_notification"],
    ],
)
def test_a_journal_that_is_not_there_is_named_not_made(verb: list[str], tmp_path: Path) -> None:
    """A mistyped path, or one relative to the server's directory, is a start-up problem:
    SQLite made an empty journal there, and ``list`` said "no deliveries match"."""
    store = tmp_path / "webhooks.sqlite3"
    result = orderfsm("webhooks", verb[0], "--store", str(store), *verb[1:])
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "no journal there" in result.stderr
    assert not store.exists()
