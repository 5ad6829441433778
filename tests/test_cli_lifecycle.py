"""``orderfsm watch`` on Xsolla's whole life cycle, as a new user runs it: real processes."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from support_cli import COMMAND, start, watch_args
from support_journal import leased

from orderfsm import FinalResult, Status
from orderfsm.supervisor.tracker import Tracker
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


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sigterm_stops_a_watch_as_ctrl_c_does_and_its_order_is_taken_back_at_once(
    emu: Emulator, backend: str, tmp_path: Path
) -> None:
    """A deploy, ``docker stop`` or systemd sends SIGTERM: the watch died of it at once
    (-15), its tracker never closed, so what it had not yet written never reached the
    fleet's journal.  It stops as on Ctrl-C: the tracker closes, exit 130, quietly.
    The order it held a lease on is then taken back at the start of the next tracker
    on that journal (the file's same slot), not a lease (15 s) later."""
    journal = str(tmp_path / "fleet.sqlite3")
    order_id, token = new_order(emu)
    args = watch_args(emu, order_id, "--token-env", "T", "--journal", journal)
    watch = start([*args, "--backend", backend], T=token)

    def held() -> bool:
        try:
            return Path(journal).exists() and leased(journal, order_id)
        except sqlite3.OperationalError:  # the watch is making the journal's tables
            return False

    try:
        deadline = time.monotonic() + 30
        while not held():
            assert time.monotonic() < deadline and watch.poll() is None
            time.sleep(0.05)
        watch.send_signal(signal.SIGTERM)
        out, err = watch.communicate(timeout=30)
    finally:
        watch.kill()
    # 130 comes once the watch's tracker has closed (unless_interrupted waits for it).
    assert watch.returncode == 130, (out, err)
    assert "Traceback" not in err, err

    async def take_back() -> FinalResult:
        async with Tracker(
            project_id=emu.project_id, ws_url=emu.ws_url, api_url=emu.api_url,
            journal=journal, token_for=lambda order_id, user_id: token,
        ) as again:  # fmt: skip
            assert set(again._orders) == {order_id}  # at its start
            await emu.run_script(order_id, [(0.05, "paid"), (0.05, "done")])
            with anyio.fail_after(10):
                return await again.wait(order_id)

    assert anyio.run(take_back, backend=backend).status is Status.DONE


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_stopped_watch_still_ends_every_order_with_a_final_json_line(
    emu: Emulator, backend: str
) -> None:
    """``--json`` promises per order a last line with ``final``: a program reading it
    waits for one per order.  Stopped (SIGTERM from a deploy, or Ctrl-C), the watch
    printed none for the orders not settled yet; now each gets ``"final": false`` with
    the error ``Interrupted``, in the shape of every error line, after the settled
    order's own, and the exit stays 130."""

    async def prepare() -> tuple[int, int, str]:
        user = await emu.create_user()
        return await emu.create_order(user), await emu.create_order(user), user.token

    settled, unsettled, token = anyio.run(prepare)
    args = watch_args(emu, settled, "--order-id", str(unsettled), "--token-env", "T")
    watch = start([*args, "--backend", backend], T=token)
    try:
        assert watch.stdout is not None
        seen: list[dict[str, Any]] = []
        anyio.run(emu.run_script, settled, [(0.05, "paid"), (0.05, "done")])
        while not any(x.get("final") is True for x in seen):
            line = watch.stdout.readline()
            assert line, watch.communicate(timeout=30)
            seen.append(json.loads(line))
        watch.send_signal(signal.SIGTERM)
        out, err = watch.communicate(timeout=30)
    finally:
        watch.kill()
    lines = seen + [json.loads(x) for x in out.splitlines()]
    finals = [x for x in lines if "final" in x]
    assert watch.returncode == 130, (lines, err)
    assert [(x["order_id"], x["final"]) for x in finals] == [(settled, True), (unsettled, False)]
    assert finals[1] == {
        "order_id": unsettled,
        "final": False,
        "error": "Interrupted",
        "message": "stopped (Ctrl-C or SIGTERM) before the order settled",
    }
    assert "Traceback" not in err, err
