"""``orderfsm watch`` on Xsolla's whole life cycle, as a new user runs it: real processes."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from support_cli import COMMAND, start, watch_args

from transports.emulator import Emulator

SECRET = "cli-lifecycle-secret"


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(seed=31, ping_interval=2.0, secret=SECRET) as emulator:
        yield emulator


def run_watch(
    emu: Emulator,
    order_id: int,
    token: str,
    *extra: str,
    script: list[tuple[float, str]] | None = None,
) -> tuple[int, list[dict[str, Any]], str]:
    """Run ``orderfsm watch``; start ``script`` once it printed its first status."""
    process = start(watch_args(emu, order_id, "--token-env", "T", *extra), T=token)
    try:
        assert process.stdout is not None
        first = ""
        while True:  # until its first status: a report may come before it
            line = process.stdout.readline()
            first += line
            if not line or "status" in json.loads(line):
                break
        if script:
            anyio.run(emu.run_script, order_id, script)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    return process.returncode, [json.loads(x) for x in (first + out).splitlines()], err


def new_order(emu: Emulator) -> tuple[int, str]:
    async def prepare() -> tuple[int, str]:
        user = await emu.create_user()
        return await emu.create_order(user), user.token

    return anyio.run(prepare)


def statuses(lines: list[dict[str, Any]]) -> list[str]:
    return [x["status"] for x in lines if "status" in x and "final" not in x]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_expired_then_paid_then_done_exits_0(emu: Emulator, backend: str) -> None:
    """The player who paid an order that had expired gets the item (exit 0)."""
    order_id, token = new_order(emu)
    script = [(0.1, "expired"), (0.2, "paid"), (0.2, "done")]
    code, lines, stderr = run_watch(emu, order_id, token, "--backend", backend, script=script)
    assert code == 0, (lines, stderr)
    assert statuses(lines) == ["new", "expired", "paid", "done"]
    assert lines[-1]["final"] is True and lines[-1]["status"] == "done"
    assert lines[-1]["succeeded"] is True


def test_still_expired_at_the_timeout_exits_4(emu: Emulator) -> None:
    order_id, token = new_order(emu)
    script = [(0.1, "expired")]
    code, lines, stderr = run_watch(emu, order_id, token, "--timeout", "3", script=script)
    assert code == 4, (lines, stderr)
    assert statuses(lines) == ["new", "expired"]
    assert lines[-1]["status"] == "expired" and lines[-1]["succeeded"] is False


def test_until_paid_with_polling_only_exits_0_at_paid(emu: Emulator) -> None:
    order_id, token = new_order(emu)
    started = time.monotonic()
    code, lines, stderr = run_watch(
        emu,
        order_id,
        token,
        "--transports",
        "polling",
        "--until",
        "paid",
        script=[(0.1, "paid"), (60.0, "done")],
    )
    assert code == 0, (lines, stderr)
    assert time.monotonic() - started < 30  # at paid, not at done a minute later
    assert statuses(lines)[-1] == "paid" and lines[-1]["succeeded"] is True


def test_until_paid_with_webhooks_only_exits_0_at_paid(emu: Emulator) -> None:
    """No token, no Xsolla connection: the order_paid webhook alone answers."""
    order_id, _ = new_order(emu)
    args = watch_args(emu, order_id, "--transports", "webhook", "--until", "paid")
    process = start([*args, "--webhook-secret-env", "WEBHOOK_SECRET"], WEBHOOK_SECRET=SECRET)
    try:
        assert process.stdout is not None
        note = json.loads(process.stdout.readline())
        url = note["note"].removeprefix("webhooks: ")

        async def pay() -> None:
            await emu.configure_webhooks(url)
            await emu.set_status(order_id, "paid")

        anyio.run(pay)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
        anyio.run(emu.configure_webhooks, None)
    lines = [json.loads(x) for x in out.splitlines()]
    assert process.returncode == 0, (lines, err)
    assert [(x["status"], x["source"]) for x in lines if "final" not in x] == [("paid", "webhook")]
    assert lines[-1]["final"] is True and lines[-1]["status"] == "paid"


def test_an_order_that_does_not_exist_is_named_within_the_grace(emu: Emulator) -> None:
    """Default transports: the socket is healthy and says nothing; Get order says 404."""
    _, token = new_order(emu)
    started = time.monotonic()
    code, lines, stderr = run_watch(emu, 987654321, token, "--not-found-grace", "2")
    elapsed = time.monotonic() - started
    assert code == 1, (lines, stderr)
    assert lines[-1]["final"] is False and lines[-1]["error"] == "OrderNotFound"
    assert elapsed < 30  # the grace, not the socket's five minutes


def test_webhook_transport_needs_a_secret_from_env_or_file(emu: Emulator) -> None:
    result = subprocess.run(
        [*COMMAND, *watch_args(emu, 1, "--transports", "webhook")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--webhook-secret-env or --webhook-secret-file" in result.stderr


def test_watch_on_the_journal_hears_a_webhook_another_process_received(
    emu: Emulator, tmp_path: Path
) -> None:
    """No Xsolla connection at all: ``orderfsm webhook-server --store URL`` receives
    the order_paid, the journal tells ``orderfsm watch --journal URL``."""
    journal = str(tmp_path / "fleet.sqlite3")
    order_id, _ = new_order(emu)
    server = start(["webhook-server", "--secret", SECRET, "--port", "0", "--store", journal])
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        anyio.run(emu.configure_webhooks, url)
        watch = start(
            [
                *watch_args(emu, order_id),
                "--journal",
                journal,
                "--transports",
                "journal",
                "--until",
                "paid",
            ]
        )
        anyio.run(emu.set_status, order_id, "paid")
        out, err = watch.communicate(timeout=60)
    finally:
        server.kill()
        server.communicate()
        anyio.run(emu.configure_webhooks, None)
    lines = [json.loads(x) for x in out.splitlines()]
    assert watch.returncode == 0, (lines, err)
    assert [(x["status"], x["source"]) for x in lines if "final" not in x] == [("paid", "webhook")]
